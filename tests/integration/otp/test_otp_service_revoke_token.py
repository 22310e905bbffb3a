"""RevokeToken over gRPC, on SQLite and on Redis: an abandoned setup's token ends for good in whatever state it
is (pending, activated, active), its delivery e-mail is forgotten, and revoking again changes nothing."""

from __future__ import annotations

import grpc

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from tests.integration.otp.otp_grpc_support import (
    USAGE_START_PASSWORD,
    OtpCluster,
    create_pending,
    failing,
    oathtool_code,
    provision,
)


async def test_a_revoked_pending_token_can_never_be_activated(cluster: OtpCluster) -> None:
    """A pending token (step 7, its IDs mailed) is REVOKED by RevokeToken: activating it with the mailed IDs and
    the right usage-start password fails; a second RevokeToken, even with a new request id, answers REVOKED."""
    await cluster.start()
    token = await create_pending(cluster)
    enrollment = cluster.stub("enrollment")

    revoked = await enrollment.RevokeToken(pb.RevokeTokenRequest(request_id="abandon-1", token_id=token.token_id))
    assert revoked.token.state == pb.Token.STATE_REVOKED
    refused = await failing(
        enrollment.ActivateToken(
            pb.ActivateTokenRequest(
                service_id=token.service_id,
                app_user_id=token.app_user_id,
                usage_start_password=USAGE_START_PASSWORD,
                consent=True,
            )
        )
    )
    assert refused.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION)
    again = await enrollment.RevokeToken(pb.RevokeTokenRequest(request_id="abandon-2", token_id=token.token_id))
    assert again.token.state == pb.Token.STATE_REVOKED
    listed = await cluster.stub("operator").ListTokens(pb.ListTokensRequest(user_id="user-0001"))
    assert [t.state for t in listed.tokens] == [pb.Token.STATE_REVOKED]


async def test_a_revoked_active_token_verifies_nothing_and_keeps_no_address(
    cluster: OtpCluster, clock: FakeClock
) -> None:
    """An active token revoked by the operator refuses its right code (TOKEN_NOT_ACTIVE); the stored token no
    longer holds the delivery e-mail address."""
    await cluster.start()
    token = await provision(cluster)
    enrollment = cluster.stub("enrollment")
    code = await oathtool_code(token.secret, clock.now())
    await enrollment.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=code))

    await cluster.stub("operator").RevokeToken(pb.RevokeTokenRequest(token_id=token.token_id))
    clock.advance(60)
    code = await oathtool_code(token.secret, clock.now())
    refused = await failing(enrollment.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=code)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TOKEN_NOT_ACTIVE")
    stored = await cluster.servers[0].service.get(token.token_id)
    assert stored.email == ""
    assert stored.sealed_seed is None


async def test_revoking_needs_a_well_formed_known_token(cluster: OtpCluster) -> None:
    """An empty or malformed token id is INVALID_ARGUMENT naming token_id; an unknown one is NOT_FOUND."""
    await cluster.start()
    stub = cluster.stub("enrollment")
    empty = await failing(stub.RevokeToken(pb.RevokeTokenRequest()))
    assert (empty.code, list(empty.fields)) == (grpc.StatusCode.INVALID_ARGUMENT, ["token_id"])
    missing = await failing(stub.RevokeToken(pb.RevokeTokenRequest(token_id="0" * 32)))
    assert missing.code == grpc.StatusCode.NOT_FOUND
