"""The gateway under abuse, on loopback only and bounded in count and time: slow headers, connection floods and
request floods, each while a normal customer's request still answers within a second; the rate limits per client
address, per account and per token, OCSP requests with a nonce, and client addresses behind trusted proxies.

Attackers connect from other loopback addresses (127.0.0.2 and up) than the customer (127.0.0.1), as they would
from other hosts: every limit per address counts them apart.

This is the abuse part of the reliability suite, `tests/reliability/` (`pytest tests/reliability` runs it alone):
- faults under load: test_faults_under_load.py;
- abuse: this module (rate limits shared by gateway replicas on Redis: tests/integration/gateway/
  test_gateway_shared_rate_limits.py);
- the authorization matrix, every RPC x every role x a customer certificate x none: kept with the integration
  tests at tests/integration/test_roles_matrix.py (it shares their service harnesses);
- secrets: test_no_secret_in_debug_logs.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from gateway.edge import EdgeLimits, parse_networks
from gateway.ratelimit import parse_rate_limits
from tests.integration.gateway.gateway_support import GatewayStack, client_context, open_gateway_stack

CUSTOMER_BUDGET = 1.0  # seconds a normal customer's request may take while the gateway is under abuse


@asynccontextmanager
async def _stack(tmp_path: Path, **changes: Any) -> AsyncIterator[GatewayStack]:
    running = await open_gateway_stack(tmp_path, **changes)
    try:
        yield running
    finally:
        await running.close()


def _context(stack: GatewayStack) -> ssl.SSLContext:
    return client_context(stack.root_file)


async def _customer_healthz(stack: GatewayStack) -> float:
    """A customer's request on a new connection (TCP, TLS, GET /healthz) from 127.0.0.1: its duration."""
    started = time.perf_counter()
    async with stack.client(force_close=True) as client:
        answer = await client.request("GET", "/healthz")
    assert answer.status == 200
    return time.perf_counter() - started


@asynccontextmanager
async def _session(stack: GatewayStack, source: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose connections come from the loopback address `source`."""
    connector = aiohttp.TCPConnector(ssl=_context(stack), local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _post(session: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> tuple[int, dict[str, str]]:
    async with session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json", **headers}) as r:
        await r.read()
        return r.status, dict(r.headers)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the peer closed the connection (EOF or reset) within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(1024):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return True


def _unknown_account() -> dict[str, str]:
    return {
        "branch_code": "001",
        "account_type": "ordinary",
        "account_number": f"{uuid.uuid4().int % 10**7:07d}",
        "temporary_login_password": "Wrong0ne",
        "temporary_confirmation_password": "Wrong0ne",
    }


async def test_slow_headers_are_closed_at_the_deadline_while_a_customer_is_served(tmp_path: Path) -> None:
    """150 TLS connections that send half a request header are all closed by the server within the header
    deadline (1 s here) plus a margin, while a customer's request on a new connection answers within 1 s."""
    async with _stack(tmp_path, edge=EdgeLimits(header_timeout=1.0, keepalive_timeout=30.0)) as stack:
        port = stack.gateway.https_port

        async def slow() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=_context(stack), server_hostname="localhost", local_addr=("127.0.0.2", 0)
            )
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            await writer.drain()
            return reader, writer  # the writer is kept: a collected one would close its side

        connections = await asyncio.gather(*(slow() for _ in range(150)))
        opened = time.monotonic()
        assert await _customer_healthz(stack) < CUSTOMER_BUDGET
        assert not any(reader.at_eof() for reader, _ in connections)
        closed = await asyncio.gather(*(_closed_within(reader, 3.0) for reader, _ in connections))
        assert all(closed), f"{closed.count(False)} of 150 slow connections still open"
        assert time.monotonic() - opened < 3.5
        assert stack.gateway.metrics.header_timeouts._value.get() >= 150
        assert await _customer_healthz(stack) < CUSTOMER_BUDGET
        for _, writer in connections:
            writer.close()


async def test_a_slow_body_is_closed_at_the_deadline_and_a_kept_alive_client_is_not(tmp_path: Path) -> None:
    """A request whose body never completes is closed at the deadline; a kept-alive connection that is idle
    longer than the header deadline (but under the keep-alive limit) still serves its next request."""
    async with _stack(tmp_path, edge=EdgeLimits(header_timeout=1.0, keepalive_timeout=30.0)) as stack:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", stack.gateway.https_port, ssl=_context(stack), server_hostname="localhost"
        )
        writer.write(b"POST /v1/enrollments HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        assert await _closed_within(reader, 3.0)
        async with stack.client() as client:
            assert (await client.request("GET", "/healthz")).status == 200
            await asyncio.sleep(1.5)
            assert (await client.request("GET", "/healthz")).status == 200


async def test_an_idle_kept_alive_connection_is_closed_at_the_keepalive_limit(tmp_path: Path) -> None:
    """A kept-alive connection that sends nothing after its answer is closed after the keep-alive limit."""
    async with _stack(tmp_path, edge=EdgeLimits(header_timeout=5.0, keepalive_timeout=1.0)) as stack:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", stack.gateway.https_port, ssl=_context(stack), server_hostname="localhost"
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await _closed_within(reader, 3.0)


async def test_a_connection_flood_beyond_the_per_address_cap_is_refused_at_once(tmp_path: Path) -> None:
    """With 20 connections allowed per address, 60 TCP connections from one address: 20 stay open, the other 40
    are closed within half a second (before any TLS work), and a customer from another address is served
    within 1 s meanwhile."""
    limits = EdgeLimits(header_timeout=5.0, max_connections=1000, max_connections_per_address=20)
    async with _stack(tmp_path, edge=limits) as stack:
        port = stack.gateway.https_port
        connections = []
        for _ in range(60):
            connections.append(await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0)))
        try:
            started = time.monotonic()
            closed = await asyncio.gather(*(_closed_within(reader, 0.5) for reader, _ in connections))
            assert closed.count(True) == 40
            assert closed[:20] == [False] * 20
            assert time.monotonic() - started < 1.0
            assert await _customer_healthz(stack) < CUSTOMER_BUDGET
            refused = stack.gateway.metrics.connections_refused.labels("per_address")._value.get()
            assert refused == 40
        finally:
            for _, writer in connections:
                writer.close()


async def test_connections_beyond_the_total_cap_are_refused_and_admitted_again_once_closed(tmp_path: Path) -> None:
    """With 30 connections allowed in total, 30 from three addresses fill the gateway: the next one (from a
    fourth address) is closed at once; once the first ones close, a customer is served within 1 s again."""
    limits = EdgeLimits(header_timeout=5.0, max_connections=30, max_connections_per_address=10)
    async with _stack(tmp_path, edge=limits) as stack:
        port = stack.gateway.https_port
        held = []
        for source in ("127.0.0.4", "127.0.0.5", "127.0.0.6"):
            for _ in range(10):
                held.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.7", 0))
        assert await _closed_within(reader, 0.5)
        writer.close()
        assert stack.gateway.metrics.connections_refused.labels("total")._value.get() >= 1
        for _, held_writer in held:
            held_writer.close()
        await asyncio.sleep(0.2)
        assert await _customer_healthz(stack) < CUSTOMER_BUDGET


async def test_a_request_flood_gets_429_with_retry_after_while_a_customer_completes_step_1(tmp_path: Path) -> None:
    """A step-1 flood from one address (each request a different unknown account) against the default limit,
    10 a minute with a burst of 20: the burst reaches the service, then 200 more requests all get 429 with
    Retry-After (seconds to the window's end, at most 2 minutes) and none reaches the service; a customer from
    another address completes step 1 within 1 s while those 200 are refused."""
    async with _stack(tmp_path, rate_limits=parse_rate_limits("")) as stack:
        entries, _ = await stack.register_application()
        url = stack.https_url + "/v1/enrollments"
        async with _session(stack, "127.0.0.8") as session:
            burst = await asyncio.gather(*(_post(session, url, _unknown_account()) for _ in range(20)))
            assert [status for status, _ in burst] == [401] * 20
            flood = asyncio.gather(*(_post(session, url, _unknown_account()) for _ in range(200)))
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            async with stack.client(force_close=True) as client:
                answer = await client.request("POST", "/v1/enrollments", entries)
            assert answer.status == 201, answer.body
            assert time.perf_counter() - started < CUSTOMER_BUDGET
            answers = await flood
        assert [status for status, _ in answers] == [429] * 200
        assert all(1 <= int(headers["Retry-After"]) <= 120 for _, headers in answers)
        assert stack.gateway.metrics.rate_limited.labels("enrollment_address")._value.get() == 200
        failures = stack.gateway.metrics.backend_errors.labels("enrollment", "UNAUTHENTICATED")._value.get()
        assert failures == 20


async def test_step_1_is_limited_per_account_across_addresses(tmp_path: Path) -> None:
    """With 3 step-1 attempts per account per minute, a fourth attempt on the same account is refused with 429
    even from a fresh address, while another account is still answered; an attempt refused by the address
    limit is not counted against the account."""
    limits = parse_rate_limits("enrollment_account=3/m,enrollment_address=2/m")
    async with _stack(tmp_path, rate_limits=limits) as stack:
        url = stack.https_url + "/v1/enrollments"
        target = _unknown_account()
        async with _session(stack, "127.0.0.9") as session:
            assert [(await _post(session, url, target))[0] for _ in range(3)] == [401, 401, 429]  # address: 2
        statuses = []
        for source in ("127.0.0.10", "127.0.0.11"):
            async with _session(stack, source) as session:
                statuses.append((await _post(session, url, target))[0])
        assert statuses == [401, 429]  # two counted from .9, one from .10: the account's third was the last
        async with _session(stack, "127.0.0.12") as session:
            status, headers = await _post(session, url, target)
            assert status == 429
            assert int(headers["Retry-After"]) >= 1
            assert (await _post(session, url, _unknown_account()))[0] == 401


async def test_step_8_is_limited_per_token_and_per_address(tmp_path: Path) -> None:
    """Step 8 with the same service and user IDs: the fourth attempt within the minute is refused (3 per token),
    whatever the address; from one address, the third attempt on different tokens is refused (2 per address)."""
    limits = parse_rate_limits("activation_token=3/m,activation_address=2/m")
    async with _stack(tmp_path, rate_limits=limits) as stack:
        url = stack.https_url + "/v1/app/activation"
        body = {"service_id": "S" + uuid.uuid4().hex[:9], "user_id": "U" + uuid.uuid4().hex[:9]}
        body |= {"usage_start_password": "0000", "agreed": True}
        statuses = []
        for source in ("127.0.0.13", "127.0.0.14", "127.0.0.15", "127.0.0.16"):
            async with _session(stack, source) as session:
                statuses.append((await _post(session, url, body))[0])
        assert 429 not in statuses[:3]
        assert statuses[3] == 429
        async with _session(stack, "127.0.0.17") as session:
            others = [
                (await _post(session, url, {**body, "service_id": "S" + uuid.uuid4().hex[:9]}))[0] for _ in range(3)
            ]
        assert 429 not in others[:2]
        assert others[2] == 429


def _ocsp_request(stack: GatewayStack, *, nonce: bool) -> bytes:
    leaf, issuer = x509.load_pem_x509_certificates(stack.pki.tls("gateway").cert_file.read_bytes())[:2]
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303 - RFC 5019
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


async def test_ocsp_requests_with_a_nonce_are_limited_per_address(tmp_path: Path) -> None:
    """OCSP requests carrying a nonce (each forces a signature): the third within the window from one address
    gets 429 with Retry-After and an OCSP tryLater body; requests without a nonce are not limited."""
    async with _stack(tmp_path, rate_limits=parse_rate_limits("ocsp_nonce_address=2/m")) as stack:
        url = stack.http_url + "/pki/ocsp"
        headers = {"Content-Type": "application/ocsp-request"}
        async with aiohttp.ClientSession() as session:
            answers = []
            for _ in range(3):
                async with session.post(url, data=_ocsp_request(stack, nonce=True), headers=headers) as response:
                    answers.append((response.status, response.headers.get("Retry-After"), await response.read()))
            assert [status for status, _, _ in answers[:2]] != [429, 429]
            status, retry_after, body = answers[2]
            assert status == 429
            assert retry_after is not None
            assert int(retry_after) >= 1
            assert ocsp.load_der_ocsp_response(body).response_status is ocsp.OCSPResponseStatus.TRY_LATER
            for _ in range(3):
                async with session.post(url, data=_ocsp_request(stack, nonce=False), headers=headers) as response:
                    assert response.status != 429


async def test_behind_a_trusted_proxy_the_client_is_the_forwarded_address(tmp_path: Path) -> None:
    """From a trusted proxy, X-Forwarded-For names the client (the rightmost address that is not a trusted
    proxy): two forwarded clients are limited apart, and a client cannot escape by writing addresses on the left.
    From an untrusted peer the header is ignored: every request counts against the peer itself."""
    limits = parse_rate_limits("enrollment_address=2/m,enrollment_account=off")
    proxies = parse_networks("127.0.0.20/31")
    async with _stack(tmp_path, rate_limits=limits, trusted_proxies=proxies) as stack:
        url = stack.https_url + "/v1/enrollments"
        async with _session(stack, "127.0.0.20") as proxy:

            async def via_proxy(forwarded: str) -> int:
                return (await _post(proxy, url, _unknown_account(), **{"X-Forwarded-For": forwarded}))[0]

            assert [await via_proxy("198.51.100.7") for _ in range(3)] == [401, 401, 429]
            assert await via_proxy("198.51.100.8") == 401
            # A spoofed left part does not help: the proxies appended the real client on the right.
            assert await via_proxy("203.0.113.1, 198.51.100.7") == 429
            # A chain of trusted proxies: the client is the nearest untrusted hop.
            assert await via_proxy("198.51.100.9, 127.0.0.21") == 401
        async with _session(stack, "127.0.0.22") as untrusted:
            statuses = [
                (await _post(untrusted, url, _unknown_account(), **{"X-Forwarded-For": f"198.51.100.{i}"}))[0]
                for i in range(20, 23)
            ]
        assert statuses == [401, 401, 429]
