"""The one-time-password window through the OTP service over mTLS, on SQLite and on Redis, with oathtool's codes:
by default the previous minute's code is accepted and the next minute's refused; KAGI_OTP_FUTURE_STEPS=1 (read
from the environment as `kagi serve otp` reads it) accepts the next minute's too."""

from __future__ import annotations

import base64
import dataclasses

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from services.otp_service.main import OtpSettings
from tests.integration.otp.otp_grpc_support import OtpCluster, failing, oathtool_code, provision


async def test_default_window_accepts_the_previous_step_and_refuses_the_next(
    cluster: OtpCluster, clock: FakeClock
) -> None:
    """With the default settings the next minute's code is WRONG_CODE, a code of two minutes back STEP_EXPIRED,
    and the previous minute's code is accepted."""
    await cluster.start()
    token = await provision(cluster)
    stub = cluster.stub("enrollment")

    ahead = await oathtool_code(token.secret, clock.now() + 60)
    assert (await failing(stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=ahead)))).reason == (
        "WRONG_CODE"
    )
    late = await oathtool_code(token.secret, clock.now() - 120)
    assert (await failing(stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=late)))).reason == (
        "STEP_EXPIRED"
    )
    previous = await oathtool_code(token.secret, clock.now() - 60)
    reply = await stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=previous))
    assert reply.token.state == pb.Token.STATE_ACTIVE


async def test_kagi_otp_future_steps_1_accepts_the_next_step(cluster: OtpCluster, clock: FakeClock) -> None:
    """A server whose policy comes from KAGI_OTP_FUTURE_STEPS=1 accepts the next minute's code, and still
    refuses the code of the minute after it as WRONG_CODE."""
    from_env = OtpSettings.from_env(
        {
            "KAGI_INSECURE_PLAINTEXT": "1",
            "KAGI_OTP_PEPPER": "a-pepper-of-at-least-thirty-two-bytes",
            "KAGI_OTP_KEK": base64.b64encode(bytes(32)).decode(),
            "KAGI_OTP_FUTURE_STEPS": "1",
        }
    ).policy
    settings = cluster.settings()
    await cluster.start(dataclasses.replace(settings, policy=dataclasses.replace(from_env, issuer="Kagi Shinkumi")))
    token = await provision(cluster)
    stub = cluster.stub("enrollment")

    too_far = await oathtool_code(token.secret, clock.now() + 120)
    assert (await failing(stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=too_far)))).reason == (
        "WRONG_CODE"
    )
    ahead = await oathtool_code(token.secret, clock.now() + 60)
    reply = await stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=ahead))
    assert reply.token.state == pb.Token.STATE_ACTIVE
