"""The bank's ten steps against real CA and OTP services and a real SMTP server: a real CSR, a real code from
the activated seed, ending COMPLETED with a certificate that verifies and a token that is ACTIVE."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from kagi.ca.v1 import ca_pb2
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.otp.v1 import otp_pb2
from kagi.runtime.grpc_client import error_from_rpc
from tests.support.enrollment_flow import Customer, Stack
from tests.support.tools import run, tool


async def walk_to_completion(customer: Customer) -> None:
    """Take every step in order, checking the state after each."""
    await customer.register_application()
    expected = [
        (customer.step1, pb.Enrollment.STATE_NOTICE_VERIFIED),
        (customer.step2, pb.Enrollment.STATE_PROFILE_SUBMITTED),
        (customer.step3, pb.Enrollment.STATE_REGISTERED),
        (customer.step4, pb.Enrollment.STATE_CERTIFICATE_ISSUED),
        (customer.step5, pb.Enrollment.STATE_CERTIFICATE_LOGGED_IN),
        (customer.step6, pb.Enrollment.STATE_PASSWORD_VERIFIED),
        (customer.step7, pb.Enrollment.STATE_TOKEN_REQUESTED),
        (customer.step8, pb.Enrollment.STATE_APP_ACTIVATED),
        (customer.step9, pb.Enrollment.STATE_APP_REGISTERED),
    ]
    for step, state in expected:
        await step()
        assert (await customer.state()).state == state, step.__doc__
    await customer.step10(time.time())
    assert (await customer.state()).state == pb.Enrollment.STATE_COMPLETED


async def test_ten_steps_complete_with_a_valid_certificate_and_an_active_token(stack: Stack, workdir: Path) -> None:
    """All ten steps succeed; the certificate verifies with openssl against the CA chain; the token is ACTIVE;
    the step-7 mail carried the IDs and not the usage-start password; completion was mailed to the user."""
    customer = Customer(stack, workdir)
    await walk_to_completion(customer)
    enrollment = await customer.state()
    assert enrollment.next_step == pb.STEP_UNSPECIFIED

    chain = await stack.ca().GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    (workdir / "root.pem").write_text(chain.root_pem)
    (workdir / "customer-ca.pem").write_text(chain.customer_ca_pem)
    (workdir / "leaf.pem").write_text(customer.certificate_pem)
    verified = await run(
        [tool("openssl"), "verify", "-CAfile", str(workdir / "root.pem"), "-untrusted",
         str(workdir / "customer-ca.pem"), "-purpose", "sslclient", str(workdir / "leaf.pem")]
    )  # fmt: skip
    assert verified.strip().endswith("OK")

    token = await stack.otp().GetToken(otp_pb2.GetTokenRequest(token_id=enrollment.token_id))
    assert token.token.state == otp_pb2.Token.STATE_ACTIVE

    await stack.deliver_mail()
    bodies = [m.get_content() for m in stack.smtp.inbox.messages]
    token_mail = next(b for b in bodies if "Service ID:" in b)
    assert "4831" not in token_mail
    assert any("初期設定が完了しました" in b for b in bodies)


async def test_retrying_every_step_with_the_same_request_id_returns_the_first_answer(
    stack: Stack, workdir: Path
) -> None:
    """Each step sent twice with one request id answers the same twice, acts once (one certificate, one
    token), and never returns a secret (session token, seed) the second time: step 8's replay is refused
    (ACTIVATION_ALREADY_DELIVERED) rather than answered without its seed."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    first = await customer.step1(request_id="r1")
    again = await customer.step1(request_id="r1")
    assert again.enrollment == first.enrollment
    assert first.session_token
    assert again.session_token == ""

    for step, rid in ((customer.step2, "r2"), (customer.step3, "r3")):
        assert await step(request_id=rid) == await step(request_id=rid)
    issued = await customer.step4(request_id="r4")
    csr_again = await customer.step4(request_id="r4")
    assert csr_again.serial_number == issued.serial_number
    listed = await stack.ca().ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=issued.enrollment.user_id))
    assert len(listed.certificates) == 1
    for step, rid in ((customer.step5, "r5"), (customer.step6, "r6"), (customer.step7, "r7")):
        assert await step(request_id=rid) == await step(request_id=rid)
    activated = await customer.step8(request_id="r8")
    assert activated.activation.secret
    with pytest.raises(grpc.aio.AioRpcError) as replayed:  # the secret goes out once: never a 200 without it
        await customer.step8(request_id="r8")
    assert replayed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_from_rpc(replayed.value).reason == "ACTIVATION_ALREADY_DELIVERED"
    assert await customer.step9(request_id="r9") == await customer.step9(request_id="r9")
    done = await customer.step10(time.time(), request_id="r10")
    assert await customer.step10(time.time(), request_id="r10") == done
    tokens = await stack.otp().ListTokens(otp_pb2.ListTokensRequest(user_id=done.enrollment.user_id))
    assert len(tokens.tokens) == 1


async def test_twenty_concurrent_registrations_of_one_login_id_yield_one(stack: Stack, workdir: Path) -> None:
    """Twenty enrollments (twenty applications) racing to register the same login ID: exactly one succeeds;
    the others are told the login ID is taken, naming the field."""
    customers = [Customer(stack, workdir, login_id="sameid99") for _ in range(20)]
    for customer in customers:
        await customer.register_application()
        await customer.step1()
        await customer.step2()
    results = await asyncio.gather(*(c.step3() for c in customers), return_exceptions=True)
    winners = [r for r in results if isinstance(r, pb.ConfirmRegistrationResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 19
    assert all(e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED) for e in losers)
    assert any("login_id" in (e.details() or "") or e.code() == grpc.StatusCode.INVALID_ARGUMENT for e in losers)
    states = [(await customer.state()).state for customer in customers]
    assert states.count(pb.Enrollment.STATE_REGISTERED) == 1
    assert states.count(pb.Enrollment.STATE_PROFILE_SUBMITTED) == 19


@pytest.mark.parametrize("wrong", ["login", "password"])
async def test_five_failures_lock_and_an_operator_unlocks(stack: Stack, workdir: Path, wrong: str) -> None:
    """Five wrong temporary passwords lock the application (each wrong entry, the fifth too, answers the uniform
    UNAUTHENTICATED); five wrong login passwords lock the enrollment (the fifth says so). Locked answers
    RESOURCE_EXHAUSTED to the right password; the operator's unlock restores it."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    assert customer.notice is not None
    if wrong == "login":
        attempt = customer.step1
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await attempt(login_password="WRONGwrong99")
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as locked:
            await customer.step1()
    else:
        for step in (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5):
            await step()
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await customer.step6(password="Wrong0pass")
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.aio.AioRpcError) as locked:
            await customer.step6()
    assert locked.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION)

    await stack.enrollment("developer").UnlockApplication(
        pb.UnlockApplicationRequest(request_id="unlock-1", application_id=customer.notice.application.application_id)
    )
    if wrong == "login":
        await customer.step1()
        assert (await customer.state()).state == pb.Enrollment.STATE_NOTICE_VERIFIED
    else:
        await customer.step6()
        assert (await customer.state()).state == pb.Enrollment.STATE_PASSWORD_VERIFIED


async def test_unknown_account_answers_like_a_wrong_password(stack: Stack, workdir: Path) -> None:
    """Step 1 for an account never registered answers exactly as a wrong password does: accounts can't be probed."""
    known = Customer(stack, workdir)
    await known.register_application()
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await known.step1(login_password="WRONGwrong99")
    stranger = Customer(stack, workdir)
    stranger.notice = known.notice
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stranger.step1()
    assert (unknown.value.code(), unknown.value.details()) == (wrong.value.code(), wrong.value.details())
    unknown_error, wrong_error = error_from_rpc(unknown.value), error_from_rpc(wrong.value)
    assert (unknown_error.reason, unknown_error.metadata) == (wrong_error.reason, wrong_error.metadata)
