"""Lockout over gRPC, on SQLite and on Redis: five failed codes lock a token, a locked token refuses even the right
code, only an operator unlocks it, and the unlock neither verifies a code nor re-opens an old one."""

from __future__ import annotations

import grpc

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from tests.integration.otp.otp_grpc_support import OtpCluster, failing, oathtool_code, provision, wrong_code


async def test_sixth_code_on_a_locked_token_is_refused_until_an_operator_unlocks(
    cluster: OtpCluster, clock: FakeClock
) -> None:
    """Three wrong codes, a fourth refused unevaluated by the rate limit, two more after the rate window: the fifth
    counted failure locks the token (RESOURCE_EXHAUSTED, TOKEN_LOCKED). The sixth code is correct and still
    refused with TOKEN_LOCKED; the gateway may not unlock; after the operator's UnlockToken the token is
    REGISTERED and a new correct code makes it ACTIVE again."""
    await cluster.start()
    token = await provision(cluster)
    user, operator, gateway = cluster.stub("enrollment"), cluster.stub("operator"), cluster.stub("gateway")
    await user.VerifyCode(
        pb.VerifyCodeRequest(token_id=token.token_id, code=await oathtool_code(token.secret, clock.now()))
    )

    def wrong() -> pb.VerifyCodeRequest:
        return pb.VerifyCodeRequest(token_id=token.token_id, code=wrong_code(token.secret, clock.now()))

    clock.advance(60)
    for remaining in ("4", "3", "2"):
        failed = await failing(user.VerifyCode(wrong()))
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "WRONG_CODE")
        assert failed.metadata["attempts_remaining"] == remaining
    limited = await failing(user.VerifyCode(wrong()))
    assert (limited.code, limited.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")

    clock.advance(61)
    fourth = await failing(user.VerifyCode(wrong()))
    assert (fourth.reason, fourth.metadata["attempts_remaining"]) == ("WRONG_CODE", "1")
    fifth = await failing(user.VerifyCode(wrong()))
    assert (fifth.code, fifth.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOKEN_LOCKED")

    clock.advance(60)
    right = await oathtool_code(token.secret, clock.now())
    sixth = await failing(user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=right)))
    assert (sixth.code, sixth.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOKEN_LOCKED")
    assert "当組合までお問い合わせください" in sixth.message
    assert (await operator.GetToken(pb.GetTokenRequest(token_id=token.token_id))).token.state == pb.Token.STATE_LOCKED

    denied = await failing(gateway.UnlockToken(pb.UnlockTokenRequest(token_id=token.token_id)))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    unlocked = await operator.UnlockToken(pb.UnlockTokenRequest(request_id="unlock-1", token_id=token.token_id))
    assert unlocked.token.state == pb.Token.STATE_REGISTERED

    reply = await user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=right))
    assert reply.token.state == pb.Token.STATE_ACTIVE


async def test_unlock_keeps_the_replay_floor(cluster: OtpCluster, clock: FakeClock) -> None:
    """A code accepted before the lockout is REPLAYED after the unlock: unlocking clears counters, not history."""
    await cluster.start()
    token = await provision(cluster)
    user, operator = cluster.stub("enrollment"), cluster.stub("operator")
    accepted = await oathtool_code(token.secret, clock.now())
    await user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=accepted))
    for _ in range(5):
        clock.advance(30)  # two failures per minute stay under the rate limit
        await failing(user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code="000000")))
    assert (await operator.GetToken(pb.GetTokenRequest(token_id=token.token_id))).token.state == pb.Token.STATE_LOCKED
    await operator.UnlockToken(pb.UnlockTokenRequest(token_id=token.token_id))
    clock.set(clock.now() - 150)  # back inside the accepted code's window
    again = await failing(user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=accepted)))
    assert again.reason == "REPLAYED"


async def test_five_wrong_usage_start_passwords_lock_activation(cluster: OtpCluster) -> None:
    """Wrong usage-start passwords are counted: the first four answer ACTIVATION_FAILED, the fifth locks the
    token (TOKEN_LOCKED, shown as ACTIVATION_LOCKED), after which even the right password is refused until an
    operator unlocks it."""
    await cluster.start()
    enrollment, operator = cluster.stub("enrollment"), cluster.stub("operator")
    token = (
        await enrollment.CreateToken(
            pb.CreateTokenRequest(user_id="user-7", delivery_email="a@example.jp", usage_start_password="1234")
        )
    ).token

    def activation(password: str) -> pb.ActivateTokenRequest:
        return pb.ActivateTokenRequest(
            service_id=token.service_id, app_user_id=token.app_user_id, usage_start_password=password, consent=True
        )

    reasons = [(await failing(enrollment.ActivateToken(activation("9999")))).reason for _ in range(5)]
    assert reasons == ["ACTIVATION_FAILED"] * 4 + ["TOKEN_LOCKED"]
    assert (await failing(enrollment.ActivateToken(activation("1234")))).reason == "TOKEN_LOCKED"
    shown = await operator.GetToken(pb.GetTokenRequest(token_id=token.token_id))
    assert shown.token.state == pb.Token.STATE_ACTIVATION_LOCKED
    await operator.UnlockToken(pb.UnlockTokenRequest(token_id=token.token_id))
    assert (await enrollment.ActivateToken(activation("1234"))).activation.secret


async def test_an_unlock_on_one_replica_is_seen_at_once_by_another(cluster: OtpCluster, clock: FakeClock) -> None:
    """Replica A locks the token and caches it locked; the operator unlocks through replica B; A's very next
    verification of a right code is accepted: a refusal from a cached record is re-checked against the store."""
    a = await cluster.start()
    b = await cluster.start()
    token = await provision(cluster)
    user = cluster.stub("enrollment", a)
    for _ in range(5):
        clock.advance(30)  # two failures per minute stay under the rate limit
        await failing(
            user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=wrong_code(token.secret, clock.now())))
        )
    code = await oathtool_code(token.secret, clock.now())
    locked = await failing(user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=code)))
    assert locked.reason == "TOKEN_LOCKED"

    await cluster.stub("operator", b).UnlockToken(pb.UnlockTokenRequest(token_id=token.token_id))

    reply = await user.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=code))
    assert reply.token.state == pb.Token.STATE_ACTIVE


async def test_a_token_not_activated_in_time_expires(cluster: OtpCluster, clock: FakeClock) -> None:
    """A pending token left 24 hours is shown EXPIRED and refuses activation even with the right password."""
    await cluster.start()
    enrollment = cluster.stub("enrollment")
    token = (
        await enrollment.CreateToken(
            pb.CreateTokenRequest(user_id="user-8", delivery_email="b@example.jp", usage_start_password="1234")
        )
    ).token
    clock.advance(24 * 3600 + 1)
    refused = await failing(
        enrollment.ActivateToken(
            pb.ActivateTokenRequest(
                service_id=token.service_id, app_user_id=token.app_user_id, usage_start_password="1234", consent=True
            )
        )
    )
    assert refused.reason == "ACTIVATION_EXPIRED"
    shown = await enrollment.GetToken(pb.GetTokenRequest(token_id=token.token_id))
    assert shown.token.state == pb.Token.STATE_EXPIRED
