"""Enrollments expire after 60 idle minutes (an injected clock, no waiting): an expired enrollment shows
EXPIRED and refuses its next step."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from kagi.clock import FakeClock
from kagi.enrollment.v1 import enrollment_pb2 as pb
from tests.support.enrollment_flow import Customer, open_stack


async def test_idle_enrollment_expires_and_refuses_the_next_step(tmp_path: Path) -> None:
    """Fifty-nine idle minutes keep the enrollment; sixty-one make it EXPIRED with no next step."""
    clock = FakeClock(time.time())
    stack = await open_stack(tmp_path / "kagi", clock=clock)
    try:
        customer = Customer(stack, tmp_path)
        await customer.register_application()
        await customer.step1()
        await customer.step2()
        clock.advance(59 * 60)
        await customer.step3()
        assert (await customer.state()).state == pb.Enrollment.STATE_REGISTERED
        clock.advance(61 * 60)
        expired = await customer.state()
        assert expired.state == pb.Enrollment.STATE_EXPIRED
        assert expired.next_step == pb.STEP_UNSPECIFIED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await customer.step4()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "EXPIRED" in (refused.value.details() or "")
    finally:
        await stack.close()
        stack.smtp.stop()


async def test_notice_expires_after_thirty_days(tmp_path: Path) -> None:
    """A notice not used within 30 days is refused at step 1 as expired."""
    clock = FakeClock(time.time())
    stack = await open_stack(tmp_path / "kagi", clock=clock)
    try:
        customer = Customer(stack, tmp_path)
        await customer.register_application()
        clock.advance(31 * 86400)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await customer.step1()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await stack.close()
        stack.smtp.stop()
