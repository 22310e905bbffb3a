"""A token's whole life over gRPC with mTLS, on SQLite and on Redis: created by the enrollment, activated once for
the app (the seed is never returned again, not even to a replay), registered with the activation ID, then
verified with a code that OATH Toolkit's oathtool computes from the delivered seed."""

from __future__ import annotations

import grpc

from kagi.clock import FakeClock
from kagi.common.v1 import common_pb2
from kagi.otp.v1 import otp_pb2 as pb
from tests.integration.otp.otp_grpc_support import (
    NOW,
    USAGE_START_PASSWORD,
    OtpCluster,
    failing,
    oathtool_code,
    provision,
)


async def test_create_activate_confirm_verify_makes_the_token_active(cluster: OtpCluster, clock: FakeClock) -> None:
    """Step 7-10 over gRPC: the seed comes once, a second activation and a replay of the first never return it,
    the wrong activation ID is refused, oathtool's code for now makes the token ACTIVE and is then spent, and
    codes three steps away are refused as expired (past) or wrong (future)."""
    await cluster.start()
    enrollment = cluster.stub("enrollment")

    created = await enrollment.CreateToken(
        pb.CreateTokenRequest(
            request_id="create-1",
            user_id="user-0001",
            delivery_email="taro@example.jp",
            usage_start_password=USAGE_START_PASSWORD,
        )
    )
    token = created.token
    assert token.state == pb.Token.STATE_PENDING_ACTIVATION
    assert (token.algorithm, token.digits, token.period) == (common_pb2.OTP_ALGORITHM_SHA1, 6, 60)
    assert len(token.service_id) == 10
    assert len(token.app_user_id) == 8
    assert token.user_id == "user-0001"

    activate = pb.ActivateTokenRequest(
        request_id="activate-1",
        service_id=token.service_id,
        app_user_id=token.app_user_id.lower(),  # typed on a phone: case does not matter
        usage_start_password=USAGE_START_PASSWORD,
        consent=True,
    )
    first = await enrollment.ActivateToken(activate)
    secret = first.activation.secret
    assert len(secret) == 32  # 160-bit SHA-1 seed, unpadded base32
    assert f"secret={secret}" in first.activation.otpauth_uri
    assert first.activation.otpauth_uri.startswith("otpauth://totp/Kagi%20Shinkumi:")
    assert first.activation.activation_id
    assert first.token.state == pb.Token.STATE_ACTIVATED

    replay = await enrollment.ActivateToken(activate)
    assert replay.activation.secret == ""
    assert replay.activation.otpauth_uri == ""
    assert replay.activation.activation_id == first.activation.activation_id
    assert replay.token.token_id == token.token_id

    activate.request_id = "activate-2"
    again = await failing(enrollment.ActivateToken(activate))
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION
    assert again.reason == "ILLEGAL_TRANSITION"
    assert secret not in again.message

    wrong_id = await failing(
        enrollment.ConfirmRegistration(
            pb.ConfirmRegistrationRequest(
                service_id=token.service_id, app_user_id=token.app_user_id, activation_id="not-the-activation-id"
            )
        )
    )
    assert (wrong_id.code, wrong_id.reason) == (grpc.StatusCode.UNAUTHENTICATED, "REGISTRATION_FAILED")
    confirmed = await enrollment.ConfirmRegistration(
        pb.ConfirmRegistrationRequest(
            request_id="confirm-1",
            service_id=token.service_id,
            app_user_id=token.app_user_id,
            activation_id=first.activation.activation_id,
        )
    )
    assert confirmed.token.state == pb.Token.STATE_REGISTERED

    expired = await failing(
        enrollment.VerifyCode(
            pb.VerifyCodeRequest(token_id=token.token_id, code=await oathtool_code(secret, NOW - 180))
        )
    )
    assert (expired.code, expired.reason) == (grpc.StatusCode.UNAUTHENTICATED, "STEP_EXPIRED")
    future = await failing(
        enrollment.VerifyCode(
            pb.VerifyCodeRequest(token_id=token.token_id, code=await oathtool_code(secret, NOW + 180))
        )
    )
    assert (future.code, future.reason) == (grpc.StatusCode.UNAUTHENTICATED, "WRONG_CODE")

    code = await oathtool_code(secret, clock.now())
    verified = await enrollment.VerifyCode(pb.VerifyCodeRequest(request_id="v-1", token_id=token.token_id, code=code))
    assert verified.token.state == pb.Token.STATE_ACTIVE

    spent = await failing(
        enrollment.VerifyCode(pb.VerifyCodeRequest(request_id="v-2", token_id=token.token_id, code=code))
    )
    assert (spent.code, spent.reason) == (grpc.StatusCode.UNAUTHENTICATED, "REPLAYED")

    info = (await enrollment.GetToken(pb.GetTokenRequest(token_id=token.token_id))).token
    assert info.state == pb.Token.STATE_ACTIVE
    assert info.remaining_seconds == 30  # NOW is the middle of a 60-second step
    clock.advance(25)
    info = (await enrollment.GetToken(pb.GetTokenRequest(token_id=token.token_id))).token
    assert info.remaining_seconds == 5


async def test_current_steps_code_verifies_and_an_older_one_never_again(cluster: OtpCluster, clock: FakeClock) -> None:
    """After the current minute's code is accepted, the code of the minute before it is refused as REPLAYED
    although it is still inside the window: no step at or below the last one counts again."""
    await cluster.start()
    token = await provision(cluster)
    stub = cluster.stub("enrollment")
    previous_code = await oathtool_code(token.secret, clock.now() - 60)
    now_code = await oathtool_code(token.secret, clock.now())
    await stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=now_code))
    older = await failing(stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=previous_code)))
    assert older.reason == "REPLAYED"
    clock.advance(120)
    later = await oathtool_code(token.secret, clock.now())
    assert (await stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=later))).token.state == (
        pb.Token.STATE_ACTIVE
    )


async def test_retried_verification_returns_the_first_answer_and_counts_once(
    cluster: OtpCluster, clock: FakeClock
) -> None:
    """A VerifyCode retried with its request_id gets its first answer back: an accepted code stays accepted for
    the retry (and is spent for everyone else, who is told REPLAYED without it counting as a failure), a wrong
    code is counted once however often it is retried, and the same request_id with another code is refused as
    a reused id."""
    await cluster.start()
    token = await provision(cluster)
    stub = cluster.stub("enrollment")
    code = await oathtool_code(token.secret, clock.now())

    first = await stub.VerifyCode(pb.VerifyCodeRequest(request_id="login-1", token_id=token.token_id, code=code))
    retry = await stub.VerifyCode(pb.VerifyCodeRequest(request_id="login-1", token_id=token.token_id, code=code))
    assert first.token.state == retry.token.state == pb.Token.STATE_ACTIVE
    other = await failing(
        stub.VerifyCode(pb.VerifyCodeRequest(request_id="login-2", token_id=token.token_id, code=code))
    )
    assert other.reason == "REPLAYED"
    assert other.metadata["attempts_remaining"] == "5"

    bad = "000000" if code != "000000" else "111111"
    answers = [
        await failing(stub.VerifyCode(pb.VerifyCodeRequest(request_id="login-3", token_id=token.token_id, code=bad)))
        for _ in range(3)
    ]
    assert {(a.reason, a.metadata["attempts_remaining"]) for a in answers} == {("WRONG_CODE", "4")}

    reused = await failing(
        stub.VerifyCode(pb.VerifyCodeRequest(request_id="login-1", token_id=token.token_id, code=bad))
    )
    assert (reused.code, reused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
