"""Rate limits shared by every gateway replica when the store is Redis (a real redis-server with AOF), and counted
by each replica on its own while Redis is down."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway.main import start_gateway
from gateway.ratelimit import parse_rate_limits
from tests.conftest import RedisServer
from tests.integration.gateway.gateway_support import client_context, gateway_settings, open_gateway_stack

SOURCE = "127.0.0.40"  # the client, apart from the 127.0.0.1 other tests and the services use


def _unknown_account() -> dict[str, str]:
    return {
        "branch_code": "001",
        "account_type": "ordinary",
        "account_number": f"{uuid.uuid4().int % 10**7:07d}",
        "temporary_login_password": "Wrong0ne",
        "temporary_confirmation_password": "Wrong0ne",
    }


async def _step1(context: ssl.SSLContext, port: int) -> tuple[int, str | None]:
    """One step-1 attempt (an unknown account) from SOURCE on a new connection: status and Retry-After."""
    connector = aiohttp.TCPConnector(ssl=context, local_addr=(SOURCE, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"https://localhost:{port}/v1/enrollments",
            data=json.dumps(_unknown_account()),
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        await response.read()
        return response.status, response.headers.get("Retry-After")


async def test_two_replicas_share_the_per_address_limit_and_count_apart_while_redis_is_down(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    """Two gateways on one Redis (appendonly yes) with 4 step-1 attempts a day per address: 4 attempts spread
    over both pass, then each refuses with 429 and Retry-After, as one gateway would. With Redis killed, each
    replica counts in its own process: each lets 4 more through, then refuses (8 in all: the limit is per replica
    while Redis is down, by design: the gateway keeps serving). With Redis restarted (its AOF reloaded), the
    shared count is back: the next attempt on either replica is refused."""
    redis = redis_factory()
    limits = parse_rate_limits("enrollment_address=4/24h,enrollment_account=off")
    stack = await open_gateway_stack(tmp_path, rate_limits=limits, store_url=redis.url)
    try:
        second = await start_gateway(gateway_settings(stack, rate_limits=limits, store_url=redis.url))
        try:
            context = client_context(stack.root_file)
            ports = (stack.gateway.https_port, second.https_port)

            shared = [await _step1(context, ports[i % 2]) for i in range(6)]
            assert [status for status, _ in shared] == [401, 401, 401, 401, 429, 429]
            assert all(1 <= int(retry) <= 86400 for status, retry in shared if status == 429 and retry)
            assert all(retry is not None for status, retry in shared if status == 429)

            redis.kill()
            for port in ports:  # the first replica's count is not seen by the second
                alone = [(await _step1(context, port))[0] for _ in range(5)]
                assert alone == [401, 401, 401, 401, 429], port

            redis.start()
            assert [(await _step1(context, port))[0] for port in ports] == [429, 429]
        finally:
            await second.stop(0)
    finally:
        await stack.close()
