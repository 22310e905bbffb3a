"""Every step taken out of order is refused with the state and the expected step named, and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from kagi.enrollment.v1 import enrollment_pb2 as pb
from tests.support.enrollment_flow import Customer, Stack

REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION,  # the state does not allow the step
    grpc.StatusCode.PERMISSION_DENIED,  # before step 4 there is no certificate to present
    grpc.StatusCode.UNAUTHENTICATED,  # an unknown app ID is refused as a wrong one
    grpc.StatusCode.INVALID_ARGUMENT,  # before step 7 the app has no IDs at all to send: empty IDs are bad input
}


async def test_every_step_out_of_order_is_refused_and_changes_nothing(stack: Stack, workdir: Path) -> None:
    """At each state of the procedure, every step other than the next one is refused (but step 7 again before
    the app registers, which test_token_requested_again_during_setup proves); the enrollment's state, next step
    and deadline stay as they were."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    steps: list[Callable[[], Awaitable[object]]] = [
        customer.step1,
        customer.step2,
        customer.step3,
        customer.step4,
        customer.step5,
        customer.step6,
        customer.step7,
        customer.step8,
        customer.step9,
        lambda: customer.step10(time.time()),
    ]
    await steps[0]()
    for expected_index in range(1, len(steps)):
        before = await customer.state()
        for index, step in enumerate(steps):
            if index in (0, expected_index):
                continue  # step 1 makes a new enrollment rather than moving this one
            if index == 6 and expected_index in (7, 8):
                continue  # step 7 again before the app registers replaces the token (its own test)
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await step()
            assert failure.value.code() in REFUSALS, (expected_index + 1, index + 1, failure.value)
            if failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION:
                state_name = pb.Enrollment.State.Name(before.state).removeprefix("STATE_")
                assert state_name in (failure.value.details() or "")
            after = await customer.state()
            assert (after.state, after.next_step, after.expire_time) == (
                before.state,
                before.next_step,
                before.expire_time,
            )
        await steps[expected_index]()
    assert (await customer.state()).state == pb.Enrollment.STATE_COMPLETED
