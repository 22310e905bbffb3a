"""Revocation while the CA's stream is down: each request then asks the CA (GetCertificateStatus, trusted for
one second), so a revocation still takes effect within two seconds; with the CA unreachable the certificate
routes fail closed (503); when the CA is back the gateway reconnects the stream by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack, open_gateway_stack
from tests.support.ports import stable_port


async def _until(predicate: Any, limit: float) -> float:
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < limit, f"not within {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_without_the_stream_status_queries_still_refuse_within_two_seconds(stack: GatewayStack) -> None:
    """With the revocation stream stopped the gateway is not live; a certificate is still accepted (the CA says
    good), and after its revocation it is refused within 2 s."""
    customer = await GatewayCustomer(stack).through_step4()
    revocation = stack.gateway.context.revocation
    await revocation.stop()
    assert not revocation.live
    async with stack.client(customer.certificate) as client:
        assert (await client.request("GET", "/v1/client-certificate")).status == 200
        await stack.revoke(customer.serial_hex)

        async def refused() -> bool:
            return (await client.request("GET", "/v1/client-certificate")).status == 401

        assert await _until(refused, 2.0) < 2.0


async def test_ca_down_fails_closed_and_the_stream_comes_back(tmp_path: Path) -> None:
    """With the CA stopped, a certificate route answers 503 REVOCATION_STATUS_UNAVAILABLE (never lets the
    certificate through unchecked); once the CA runs again the stream reconnects (live again) and a new
    revocation is refused within 2 s."""
    stack = await open_gateway_stack(tmp_path, ca_port=stable_port())
    try:
        customer = await GatewayCustomer(stack).through_step4()
        revocation = stack.gateway.context.revocation
        async with stack.client(customer.certificate) as client:
            assert (await client.request("GET", "/v1/client-certificate")).status == 200
            await stack.stop("ca")

            async def not_live() -> bool:
                return not revocation.live

            await _until(not_live, 5.0)
            answer = await client.request("GET", "/v1/client-certificate")
            assert (answer.status, answer.reason) == (503, "REVOCATION_STATUS_UNAVAILABLE")
            assert answer.headers["Retry-After"] == "1"

            await stack.restart_ca()

            async def live() -> bool:
                return revocation.live

            await _until(live, 10.0)
            assert (await client.request("GET", "/v1/client-certificate")).status == 200
            await stack.revoke(customer.serial_hex)

            async def refused() -> bool:
                return (await client.request("GET", "/v1/client-certificate")).status == 401

            assert await _until(refused, 2.0) < 2.0
    finally:
        await stack.close()
