"""A token's later life over gRPC, on SQLite and on Redis: a user's tokens listed page by page from their own index,
disabling (a lost phone) stops verification, reissuing revokes the token and makes a new pending one."""

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


async def test_a_users_tokens_are_listed_page_by_page_oldest_first(cluster: OtpCluster, clock: FakeClock) -> None:
    """Five tokens of one user come back in creation order over three pages of two; another user's token never
    appears; a bad page size or page token is INVALID_ARGUMENT naming the field."""
    await cluster.start()
    mine = []
    for _ in range(5):
        mine.append((await create_pending(cluster, user_id="user:taro@example")).token_id)
        await create_pending(cluster, user_id="user:hanako@example")
        clock.advance(1)
    operator = cluster.stub("operator")

    listed, pages, page_token = [], 0, ""
    while True:
        page = await operator.ListTokens(
            pb.ListTokensRequest(user_id="user:taro@example", page_size=2, page_token=page_token)
        )
        listed += [t.token_id for t in page.tokens]
        assert all(t.user_id == "user:taro@example" for t in page.tokens)
        pages += 1
        page_token = page.next_page_token
        if not page_token:
            break
    assert listed == mine
    assert pages == 3
    everything = await operator.ListTokens(pb.ListTokensRequest(user_id="user:taro@example"))
    assert [t.token_id for t in everything.tokens] == mine
    assert everything.next_page_token == ""

    bad_size = await failing(operator.ListTokens(pb.ListTokensRequest(user_id="user:taro@example", page_size=-1)))
    assert (bad_size.code, list(bad_size.fields)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"])
    bad_token = await failing(operator.ListTokens(pb.ListTokensRequest(user_id="user:taro@example", page_token="!!")))
    assert (bad_token.code, list(bad_token.fields)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    bad_user = await failing(operator.ListTokens(pb.ListTokensRequest(user_id="")))
    assert (bad_user.code, list(bad_user.fields)) == (grpc.StatusCode.INVALID_ARGUMENT, ["user_id"])


async def test_disabled_token_verifies_nothing(cluster: OtpCluster, clock: FakeClock) -> None:
    """After DisableToken the right code is refused (FAILED_PRECONDITION, TOKEN_NOT_ACTIVE) and GetToken shows
    DISABLED; disabling again is an illegal transition."""
    await cluster.start()
    token = await provision(cluster)
    frontend = cluster.stub("enrollment")
    disabled = await frontend.DisableToken(pb.DisableTokenRequest(request_id="lost-phone", token_id=token.token_id))
    assert disabled.token.state == pb.Token.STATE_DISABLED
    code = await oathtool_code(token.secret, clock.now())
    refused = await failing(frontend.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=code)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TOKEN_NOT_ACTIVE")
    again = await failing(frontend.DisableToken(pb.DisableTokenRequest(token_id=token.token_id)))
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ILLEGAL_TRANSITION")
    assert (await frontend.GetToken(pb.GetTokenRequest(token_id=token.token_id))).token.state == pb.Token.STATE_DISABLED


async def test_reissue_revokes_the_old_token_and_creates_a_new_pending_one(
    cluster: OtpCluster, clock: FakeClock
) -> None:
    """ReissueToken answers a new pending token for the same user with new IDs; the old one is REVOKED, verifies
    nothing and cannot be reissued twice; the new one activates with the new password and its own seed."""
    await cluster.start()
    old = await provision(cluster)
    frontend, gateway = cluster.stub("enrollment"), cluster.stub("enrollment")

    reissued = await frontend.ReissueToken(
        pb.ReissueTokenRequest(request_id="reissue-1", token_id=old.token_id, usage_start_password="97531")
    )
    new = reissued.token
    assert new.state == pb.Token.STATE_PENDING_ACTIVATION
    assert new.user_id == "user-0001"
    assert new.token_id != old.token_id
    assert new.service_id != old.service_id

    assert (await frontend.GetToken(pb.GetTokenRequest(token_id=old.token_id))).token.state == pb.Token.STATE_REVOKED
    code = await oathtool_code(old.secret, clock.now())
    assert (await failing(frontend.VerifyCode(pb.VerifyCodeRequest(token_id=old.token_id, code=code)))).reason == (
        "TOKEN_NOT_ACTIVE"
    )
    twice = await failing(
        frontend.ReissueToken(pb.ReissueTokenRequest(token_id=old.token_id, usage_start_password="97531"))
    )
    assert (twice.code, twice.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ILLEGAL_TRANSITION")

    wrong = await failing(
        gateway.ActivateToken(
            pb.ActivateTokenRequest(
                service_id=new.service_id,
                app_user_id=new.app_user_id,
                usage_start_password=USAGE_START_PASSWORD,
                consent=True,
            )
        )
    )
    assert wrong.reason == "ACTIVATION_FAILED"
    activated = await gateway.ActivateToken(
        pb.ActivateTokenRequest(
            service_id=new.service_id, app_user_id=new.app_user_id, usage_start_password="97531", consent=True
        )
    )
    assert activated.activation.secret
    assert activated.activation.secret != old.secret
    listed = await frontend.ListTokens(pb.ListTokensRequest(user_id="user-0001"))
    assert {t.token_id: t.state for t in listed.tokens} == {
        old.token_id: pb.Token.STATE_REVOKED,
        new.token_id: pb.Token.STATE_ACTIVATED,
    }


async def test_unknown_and_malformed_token_ids(cluster: OtpCluster) -> None:
    """A well-formed but unknown token id is NOT_FOUND; a malformed one is INVALID_ARGUMENT naming token_id."""
    await cluster.start()
    stub = cluster.stub("operator")
    missing = await failing(stub.GetToken(pb.GetTokenRequest(token_id="0" * 32)))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "TOKEN_NOT_FOUND")
    malformed = await failing(stub.GetToken(pb.GetTokenRequest(token_id="../etc/passwd")))
    assert (malformed.code, list(malformed.fields)) == (grpc.StatusCode.INVALID_ARGUMENT, ["token_id"])
