"""Step 7 again during the setup: when the app lost step 8's answer (its seed is never shown twice: a replay is
409) or the mail went astray, the customer requests the token again; the pending token is revoked, new IDs go by
mail, and steps 8-10 complete the setup with the new token."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from kagi.clock import FakeClock
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.otp.v1 import otp_pb2
from tests.support.enrollment_flow import Customer, open_stack


async def test_a_lost_activation_answer_is_recovered_by_requesting_the_token_again(
    tmp_path: Path, workdir: Path
) -> None:
    """After step 8 the replay of its request is FAILED_PRECONDITION ACTIVATION_ALREADY_DELIVERED; step 7 again
    (from APP_ACTIVATED) answers TOKEN_REQUESTED with the next step ACTIVATE_APP, mails new service and user IDs,
    revokes the first token, and steps 8-10 with the new IDs end COMPLETED."""
    clock = FakeClock(time.time())
    stack = await open_stack(tmp_path / "kagi", clock=clock)
    try:
        customer = Customer(stack, workdir)
        await customer.register_application()
        for step in (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5, customer.step6):
            await step()
        await customer.step7()
        first_token, first_ids = (await customer.state()).token_id, (customer.service_id, customer.app_user_id)
        await customer.step8(request_id="lost-answer")
        with pytest.raises(grpc.aio.AioRpcError) as replay:
            await customer.step8(request_id="lost-answer")
        assert replay.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ACTIVATION_ALREADY_DELIVERED" in str(replay.value.trailing_metadata())

        customer.service_id = ""
        again = await customer.step7()
        assert again.enrollment.state == pb.Enrollment.STATE_TOKEN_REQUESTED
        assert again.enrollment.next_step == pb.STEP_ACTIVATE_APP
        assert (customer.service_id, customer.app_user_id) != first_ids
        assert again.enrollment.token_id != first_token
        old = await stack.otp().GetToken(otp_pb2.GetTokenRequest(token_id=first_token))
        assert old.token.state == otp_pb2.Token.STATE_REVOKED

        await customer.step8()
        await customer.step9()
        done = await customer.step10(clock.now())
        assert done.enrollment.state == pb.Enrollment.STATE_COMPLETED
    finally:
        await stack.close()
        stack.smtp.stop()
