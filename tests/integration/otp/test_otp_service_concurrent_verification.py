"""Replay protection under concurrency, on SQLite and on Redis: one code presented many times at once is accepted
exactly once, within one server and across replicas sharing the store, whatever their caches hold."""

from __future__ import annotations

import dataclasses

import pytest

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from kagi.otp.v1 import otp_pb2_grpc
from tests.integration.otp.otp_grpc_support import OtpCluster, gather_outcomes, oathtool_code, provision, with_policy


def _calls(stubs: list[otp_pb2_grpc.OtpServiceStub], token_id: str, code: str, n: int, tag: str) -> list:  # type: ignore[type-arg]
    return [
        (
            lambda i=i: stubs[i % len(stubs)].VerifyCode(
                pb.VerifyCodeRequest(request_id=f"{tag}-{i}", token_id=token_id, code=code)
            )
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("cache_size", "group_commit"), [(20_000, None), (0, None), (20_000, True)], ids=["cached", "uncached", "grouped"]
)
async def test_fifty_concurrent_verifications_of_one_code_accept_exactly_one(
    cluster: OtpCluster, clock: FakeClock, cache_size: int, group_commit: bool | None
) -> None:
    """50 concurrent VerifyCode calls (distinct request ids) with the same valid code: exactly one OK and 49
    REPLAYED, with the token cache and without it, and with commits grouped into shared store rounds.
    Lockout and rate limit are raised above 50 here so that every loser is reported as what it is."""
    settings = with_policy(cluster.settings(), max_failures=100, rate_limit_failures=100)
    server = await cluster.start(dataclasses.replace(settings, cache_size=cache_size, group_commit=group_commit))
    token = await provision(cluster)
    code = await oathtool_code(token.secret, clock.now())
    stubs = [cluster.stub("enrollment", server) for _ in range(4)]

    outcomes = await gather_outcomes(_calls(stubs, token.token_id, code, 50, "same-code"))

    assert outcomes.count("OK") == 1
    assert outcomes.count("REPLAYED") == 49


async def test_with_the_default_policy_the_losers_are_all_replayed(cluster: OtpCluster, clock: FakeClock) -> None:
    """Under the default policy (lock at 5 failures, 3 per minute) the same burst accepts exactly one and the
    49 others are REPLAYED: a used code is no guess, so the burst neither locks nor throttles the token, and
    next minute's code is accepted."""
    await cluster.start()
    token = await provision(cluster)
    code = await oathtool_code(token.secret, clock.now())
    stubs = [cluster.stub("enrollment") for _ in range(4)]

    outcomes = await gather_outcomes(_calls(stubs, token.token_id, code, 50, "burst"))

    assert (outcomes.count("OK"), outcomes.count("REPLAYED")) == (1, 49)
    clock.advance(60)
    later = await oathtool_code(token.secret, clock.now())
    reply = await stubs[0].VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=later))
    assert reply.token.state == pb.Token.STATE_ACTIVE


async def test_replicas_sharing_the_store_accept_a_code_once_whatever_their_caches_hold(
    cluster: OtpCluster, clock: FakeClock
) -> None:
    """Two OTP servers on one store: each caches the token while accepting a code, so each then holds a stale
    copy of the other's last write. A burst of one new code split between them is still accepted exactly once,
    and a code accepted by one replica is REPLAYED on the other."""
    settings = with_policy(cluster.settings(), max_failures=100, rate_limit_failures=100)
    a = await cluster.start(settings)
    b = await cluster.start(dataclasses.replace(settings))
    token = await provision(cluster)
    stubs_a = [cluster.stub("enrollment", a) for _ in range(2)]
    stubs_b = [cluster.stub("enrollment", b) for _ in range(2)]

    first = await oathtool_code(token.secret, clock.now() - 60)
    await stubs_a[0].VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=first))
    second = await oathtool_code(token.secret, clock.now())
    await stubs_b[0].VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=second))
    assert await gather_outcomes(_calls(stubs_a, token.token_id, second, 1, "stale-a")) == ["REPLAYED"]

    clock.advance(120)
    burst = await oathtool_code(token.secret, clock.now())
    outcomes = await gather_outcomes(_calls([*stubs_a, *stubs_b], token.token_id, burst, 40, "split"))
    assert outcomes.count("OK") == 1
    assert outcomes.count("REPLAYED") == 39
