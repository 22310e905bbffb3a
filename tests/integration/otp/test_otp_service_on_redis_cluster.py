"""The OTP service on a real 3-master / 3-replica Redis Cluster: two replicas of the service issue, activate and
verify tokens (request-id retries answered as before); every key of one token (its records, its activation, its
recorded answers) shares one slot, a verification touches only that token's master, and many tokens land on
all three masters. Only the service IDs and the users' indexes meet in the service's own slot."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis

from kagi.otp.v1 import otp_pb2 as pb
from services.otp_service.app.repository import (
    ACTIVATIONS,
    TOKEN_REQUESTS,
    TOKENS,
    VERIFICATION,
    VERIFY_REQUESTS,
    user_collection,
)
from services.otp_service.domain.totp import hotp, time_step
from tests.integration.otp.otp_grpc_support import (
    USAGE_START_PASSWORD,
    Backend,
    OtpCluster,
    Provisioned,
    failing,
    provision,
    seed_bytes,
)
from tests.support.redis_topology import RedisClusterProcesses

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

SPREAD_TOKENS = 24
"""Tokens made to show the spread: all three masters get some unless 24 draws of 64 buckets miss one (~1e-5)."""


@pytest.fixture
def backend(redis_cluster: RedisClusterProcesses, tmp_path: Path, namespace: str) -> Backend:
    """The service's store: the shared test Cluster, under a namespace of this test's own."""
    return Backend("redis-cluster", redis_cluster.url, tmp_path / "state", namespace)


def _client(address: str) -> redis.Redis:
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), decode_responses=True, socket_timeout=10)


def _keys_naming(cluster: RedisClusterProcesses, text: str) -> dict[str, list[str]]:
    """Every key whose name contains TEXT, per master that holds it."""
    found: dict[str, list[str]] = {}
    for address in cluster.masters():
        with _client(address) as client:
            keys = sorted(client.scan_iter(match=f"*{text}*", count=1000))
        if keys:
            found[address] = keys
    return found


def _slot(address: str, key: str) -> int:
    with _client(address) as client:
        return int(client.execute_command("CLUSTER", "KEYSLOT", key))


def _reads_and_scripts(cluster: RedisClusterProcesses) -> dict[str, int]:
    """Per master, how many HMGET and EVALSHA calls it has served (what the store sends for a verification)."""
    counts: dict[str, int] = {}
    for address in cluster.masters():
        with _client(address) as client:
            stats = client.info("commandstats")
        counts[address] = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hmget", "evalsha"))
    return counts


def _code(token: Provisioned, now: float) -> str:
    return hotp(seed_bytes(token.secret), time_step(now, 60))


async def test_two_replicas_issue_activate_and_verify_tokens_spread_per_token(
    cluster: OtpCluster, redis_cluster: RedisClusterProcesses, namespace: str
) -> None:
    """Replica A issues and activates tokens (steps 7-9, retried with their request ids), replica B verifies
    them; each token's keys share one slot; a verification's store calls go to that token's master only;
    the tokens land on all three masters; the service-wide slot holds the service IDs and user indexes."""
    issuer = cluster.stub("enrollment", await cluster.start())
    verifier = cluster.stub("enrollment", await cluster.start())

    # Steps 7-9 with request ids, each sent twice: the retry is answered from the ledger, the seed only once.
    create = pb.CreateTokenRequest(
        user_id="user-0001",
        delivery_email="taro@example.jp",
        usage_start_password=USAGE_START_PASSWORD,
        request_id="create-1",
    )
    token = (await issuer.CreateToken(create)).token
    assert (await issuer.CreateToken(create)).token.token_id == token.token_id
    activate = pb.ActivateTokenRequest(
        service_id=token.service_id,
        app_user_id=token.app_user_id,
        usage_start_password=USAGE_START_PASSWORD,
        consent=True,
        request_id="activate-1",
    )
    activated = await issuer.ActivateToken(activate)
    again = await issuer.ActivateToken(activate)
    assert again.activation.activation_id == activated.activation.activation_id
    assert again.activation.secret == ""
    assert activated.activation.secret
    confirm = pb.ConfirmRegistrationRequest(
        service_id=token.service_id,
        app_user_id=token.app_user_id,
        activation_id=activated.activation.activation_id,
        request_id="confirm-1",
    )
    assert (await issuer.ConfirmRegistration(confirm)).token.state == pb.Token.STATE_REGISTERED
    assert (await issuer.ConfirmRegistration(confirm)).token.state == pb.Token.STATE_REGISTERED
    first = Provisioned(
        token.token_id,
        token.service_id,
        token.app_user_id,
        activated.activation.secret,
        activated.activation.activation_id,
    )

    # Step 10 on the other replica: the retry gets the first answer, the same code under a new id is a replay.
    now = cluster.clock.now()
    verify = pb.VerifyCodeRequest(token_id=first.token_id, code=_code(first, now), request_id="verify-1")
    assert (await verifier.VerifyCode(verify)).token.state == pb.Token.STATE_ACTIVE
    assert (await verifier.VerifyCode(verify)).token.state == pb.Token.STATE_ACTIVE
    replay = pb.VerifyCodeRequest(token_id=first.token_id, code=verify.code, request_id="verify-2")
    assert (await failing(verifier.VerifyCode(replay))).reason == "REPLAYED"

    # One token's keys: one slot, on one master, in every collection that holds its state.
    held = _keys_naming(redis_cluster, first.token_id)
    spread = {address: [k for k in keys if f"{{{namespace}:" in k] for address, keys in held.items()}
    spread = {address: keys for address, keys in spread.items() if keys}
    assert len(spread) == 1, held
    (master, keys) = next(iter(spread.items()))
    assert len({_slot(master, key) for key in keys}) == 1, keys
    for collection in (TOKENS, VERIFICATION, ACTIVATIONS, VERIFY_REQUESTS, TOKEN_REQUESTS):
        assert any(f":e:{collection}:{first.token_id}" in key for key in keys), (collection, keys)
    # The only service-wide key naming the token is its line in the user's index.
    service_wide = [k for keys in held.values() for k in keys if f"{{{namespace}}}" in k]
    assert service_wide == [k for k in service_wide if f":e:{user_collection('user-0001')}:" in k]
    assert len(service_wide) == 1, service_wide

    # A verification (cache warm on the verifier, so one script) reaches that master and no other.
    cluster.clock.advance(60)
    before = _reads_and_scripts(redis_cluster)
    code = _code(first, cluster.clock.now())
    await verifier.VerifyCode(pb.VerifyCodeRequest(token_id=first.token_id, code=code, request_id="verify-3"))
    after = _reads_and_scripts(redis_cluster)
    assert {address for address in after if after[address] != before[address]} == {master}

    # Many tokens, activated on A and verified on B: they spread over all three masters.
    tokens = [await provision(cluster, user_id=f"user-{i:04d}") for i in range(2, 2 + SPREAD_TOKENS)]
    now = cluster.clock.now()
    for made in tokens:
        verified = await verifier.VerifyCode(pb.VerifyCodeRequest(token_id=made.token_id, code=_code(made, now)))
        assert verified.token.state == pb.Token.STATE_ACTIVE
    masters: Counter[str] = Counter()
    for made in tokens:
        for address, keys in _keys_naming(redis_cluster, f":e:{TOKENS}:{made.token_id}").items():
            masters[address] += len(keys)
    assert set(masters) == set(redis_cluster.masters()), masters
