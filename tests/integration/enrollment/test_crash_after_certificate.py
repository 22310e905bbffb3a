"""A crash between the CA's answer and the enrollment's save loses nothing and duplicates nothing: the
enrollment process is really killed there (a failpoint), restarted, and the retry yields the one certificate."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kagi.ca.v1 import ca_pb2
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.runtime.failpoints import EXIT_STATUS
from kagi.runtime.grpc_client import open_channel
from tests.support.enrollment_flow import Customer, Stack, identity, open_stack
from tests.support.tools import tool

T = TypeVar("T")


def _spawn(stack: Stack, **extra: str) -> subprocess.Popen[bytes]:
    assert stack.dev is not None
    env = {**os.environ, **stack.dev.env, "KAGI_LOG_LEVEL": "WARNING", **extra}
    return subprocess.Popen([tool("kagi"), "serve", "enrollment"], env=env)


async def _wait_serving(stack: Stack) -> None:
    async with open_channel(stack.targets["enrollment"], identity(stack.tls_dir, "gateway")) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(100):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the enrollment service did not come up")


async def _answered(call: Callable[[], Awaitable[T]]) -> T:
    """Return CALL's answer, retrying UNAVAILABLE as a client does: the customer's channel reconnects to the
    restarted process on its own schedule (round_robin over localhost's addresses, backing off up to 1 s)."""
    for _ in range(50):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.2)
    return await call()


async def test_kill_after_ca_issue_then_retry_yields_one_certificate(tmp_path: Path) -> None:
    """The enrollment dies right after the CA signed; on restart the same request id gets the same
    certificate and the CA holds exactly one certificate for the user."""
    stack = await open_stack(tmp_path / "kagi")
    process: subprocess.Popen[bytes] | None = None
    try:
        assert stack.dev is not None
        await stack.dev.components.pop("enrollment").stop(0)
        process = _spawn(stack, KAGI_FAILPOINTS="enrollment.after_ca_issue", KAGI_IDEMPOTENCY_PENDING_SECONDS="1")
        await _wait_serving(stack)
        customer = Customer(stack, tmp_path)
        await customer.register_application()
        for step in (customer.step1, customer.step2, customer.step3):
            await step()

        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await customer.step4(request_id="cert-1")
        assert crashed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=10) == EXIT_STATUS

        process = _spawn(stack, KAGI_IDEMPOTENCY_PENDING_SECONDS="1")
        await _wait_serving(stack)
        state = await _answered(customer.state)
        assert state.state == pb.Enrollment.STATE_REGISTERED  # the crash saved nothing
        await asyncio.sleep(1.2)  # the dead process's claim on the request id lapses
        issued = await customer.step4(request_id="cert-1")
        assert issued.enrollment.state == pb.Enrollment.STATE_CERTIFICATE_ISSUED
        listed = await stack.ca().ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=state.user_id))
        assert [c.serial_number for c in listed.certificates] == [issued.serial_number]
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        await stack.close()
        stack.smtp.stop()
