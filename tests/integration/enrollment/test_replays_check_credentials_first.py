"""The idempotency ledger answers nothing before the credential is checked: entries are scoped by caller and
subject (an account, an enrollment and its credential, a token), so a replay with a wrong credential is
refused and another customer's reuse of a request id is simply a different entry."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.runtime.grpc_client import error_from_rpc
from tests.support.enrollment_flow import Customer, Stack


async def test_a_step1_replay_with_wrong_passwords_is_refused(stack: Stack, workdir: Path) -> None:
    """Step 1 replayed with its request id but a wrong temporary password answers the uniform NOTICE_MISMATCH,
    never the first call's 201 with the enrollment id."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    first = await customer.step1(request_id="notice-1")
    with pytest.raises(grpc.aio.AioRpcError) as replay:
        await customer.step1(login_password="WRONGwrong99", request_id="notice-1")
    assert replay.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_from_rpc(replay.value).reason == "NOTICE_MISMATCH"
    assert first.enrollment.enrollment_id not in str(replay.value.details())
    again = await customer.step1(request_id="notice-1")  # the right passwords still get the replay
    assert again.enrollment.enrollment_id == first.enrollment.enrollment_id
    assert again.session_token == ""


async def test_another_customers_reuse_of_a_request_id_is_a_different_entry(stack: Stack, workdir: Path) -> None:
    """Two customers (two accounts, one gateway) sending the same request id each get their own enrollment:
    no refusal, no replay of the other's answer."""
    first, second = Customer(stack, workdir), Customer(stack, workdir)
    for customer in (first, second):
        await customer.register_application()
    one = await first.step1(request_id="same-key")
    two = await second.step1(request_id="same-key")
    assert two.session_token
    assert two.enrollment.enrollment_id != one.enrollment.enrollment_id
    assert two.enrollment.application_id == second.notice.application.application_id  # type: ignore[union-attr]


async def test_a_session_step_replay_needs_the_session_token(stack: Stack, workdir: Path) -> None:
    """Step 2 replayed with its request id but without the right session token is refused (SESSION_INVALID)
    before anything stored is disclosed (the profile summary)."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    await customer.step1()
    await customer.step2(request_id="profile-1")
    token, customer.session = customer.session, "x" * 43
    with pytest.raises(grpc.aio.AioRpcError) as replay:
        await customer.step2(request_id="profile-1")
    assert replay.value.code() == grpc.StatusCode.UNAUTHENTICATED
    customer.session = token
    assert (await customer.step2(request_id="profile-1")).summary.login_id == customer.login_id


async def test_a_certificate_step_replay_needs_the_certificate(stack: Stack, workdir: Path) -> None:
    """Step 5 replayed with another certificate relayed is refused (CERTIFICATE_MISMATCH), not replayed."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3, customer.step4):
        await step()
    await customer.step5(request_id="login-1")
    pem, customer.certificate_pem = customer.certificate_pem, ""  # cert_metadata: someone else's certificate
    with pytest.raises(grpc.aio.AioRpcError) as replay:
        await customer.step5(request_id="login-1")
    assert replay.value.code() == grpc.StatusCode.PERMISSION_DENIED
    customer.certificate_pem = pem


async def test_an_activation_replay_says_to_ask_for_a_new_token(stack: Stack, workdir: Path) -> None:
    """Step 8 replayed after a lost answer is 409 ACTIVATION_ALREADY_DELIVERED telling the customer to ask for
    a new token, never a 200 with an empty secret."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5, customer.step6):
        await step()
    await customer.step7()
    assert (await customer.step8(request_id="activate-1")).activation.secret
    with pytest.raises(grpc.aio.AioRpcError) as replay:
        await customer.step8(request_id="activate-1")
    assert replay.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = error_from_rpc(replay.value)
    assert error.reason == "ACTIVATION_ALREADY_DELIVERED"
    assert "new token" in error.message


async def test_step4_retires_the_session_token(stack: Stack, workdir: Path) -> None:
    """After step 4 the step-1 session token no longer reads the enrollment nor takes any step; only a replay
    of that step-4 request (its answer lost) still answers, with the same certificate."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3):
        await step()
    issued = await customer.step4(request_id="cert-1")
    with pytest.raises(grpc.aio.AioRpcError) as read:
        await stack.enrollment().GetEnrollment(
            pb.GetEnrollmentRequest(enrollment_id=customer.enrollment_id, session_token=customer.session)
        )
    assert read.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as step:
        await customer.step4()  # a new request: the token is retired
    assert step.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as cancel:
        await stack.enrollment().CancelEnrollment(
            pb.CancelEnrollmentRequest(
                request_id="c1", enrollment_id=customer.enrollment_id, session_token=customer.session
            )
        )
    assert cancel.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await customer.step4(request_id="cert-1")).serial_number == issued.serial_number
    assert (await customer.state()).state == pb.Enrollment.STATE_CERTIFICATE_ISSUED  # by the certificate
