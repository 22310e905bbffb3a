"""Placement on a real 3-master / 3-replica Redis Cluster: where an aggregate's keys go, and redirections.

The store contract itself runs on this cluster too (tests/integration/test_store_contract.py, backend
"redis-cluster"); these tests prove what only a cluster shows: one aggregate's keys share a slot, many
aggregates spread over every master, the 64 buckets cover the slots evenly, and a slot moved to another
master mid-use (ASK while it migrates, MOVED after) is followed without a new store object.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import pytest
import redis
from redis.crc import key_slot

from kagi.store import Create, InvalidKey, Placement, StoreUnavailable, open_store
from kagi.store.redis import BUCKETS, RedisStore, bucket_tags
from tests.support.redis_topology import RedisClusterProcesses

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def _token_of(key: str) -> str:
    return key.split("/", 1)[0]


TOKENS = Placement(spread={"tokens": _token_of, "verification": _token_of})


@pytest.fixture
async def store(redis_cluster: RedisClusterProcesses, namespace: str) -> AsyncIterator[RedisStore]:
    """Open a store on the shared cluster, token collections spread by token id."""
    opened = open_store(redis_cluster.url, namespace=namespace, state_dir=None, placement=TOKENS)
    assert isinstance(opened, RedisStore)
    try:
        yield opened
    finally:
        await opened.close()


def _slot(tag: str) -> int:
    return key_slot(("{" + tag + "}").encode())


def _owner(cluster: RedisClusterProcesses, slot: int) -> str:
    for address, ranges in cluster.masters().items():
        if any(first <= slot <= last for first, last in ranges):
            return address
    raise AssertionError(f"no master serves slot {slot}")


def test_the_64_buckets_cover_the_slots_evenly() -> None:
    """Bucket b's hash tag lands in slots [b*256, (b+1)*256), for any namespace, so any balanced assignment of
    slots to shards gives each shard the same share of buckets."""
    for namespace in ("otp", "ca", "enrollment", "t0123456789abcdef"):
        tags = bucket_tags(namespace)
        assert len(tags) == BUCKETS == 64
        assert [_slot(tag) // 256 for tag in tags] == list(range(64))
        assert all(tag.startswith(f"{namespace}:") for tag in tags)


async def test_keys_of_one_aggregate_share_a_slot_and_aggregates_spread_over_every_master(
    store: RedisStore, redis_cluster: RedisClusterProcesses
) -> None:
    """Every key of one token, in both spread collections, is in one slot (so one commit can hold them);
    300 tokens land on all 3 masters, none with more than half of them; service-wide keys share one slot."""
    for token in ("tok-a", "tok-b"):
        slots = {_slot(store.tag("tokens", f"{token}/{part}")) for part in ("state", "seed", "x/y")}
        slots.add(_slot(store.tag("verification", token)))
        assert len(slots) == 1
        await store.commit([Create("tokens", f"{token}/state", b""), Create("verification", token, b"")])
    assert len({_slot(store.tag(c, k)) for c, k in [("audit", "1"), ("serials", "9"), ("x", "y")]}) == 1

    per_master = collections.Counter(_owner(redis_cluster, _slot(store.tag("tokens", f"t{i}"))) for i in range(300))
    assert len(per_master) == 3, per_master
    assert max(per_master.values()) < 150, per_master
    for i in range(30):  # and the writes do go there: each master holds some of them
        await store.create("tokens", f"t{i}", b"")
    holding = 0
    for node in redis_cluster.nodes:
        with node.client() as client:
            if client.info("replication")["role"] == "master" and client.dbsize() > 0:
                holding += 1
    assert holding == 3


async def test_a_cross_group_commit_is_refused_before_reaching_the_cluster(store: RedisStore) -> None:
    """Two tokens in one commit would be a CROSSSLOT script on a cluster: the store refuses it first, naming the
    rule, and writes nothing."""
    with pytest.raises(InvalidKey) as caught:
        await store.commit([Create("tokens", "one/a", b""), Create("tokens", "two/a", b"")])
    assert caught.value.fields == {"operations": "every key of a commit must be in one placement group"}
    assert await store.get("tokens", "one/a") is None


async def test_a_slot_moved_to_another_master_is_followed_without_a_new_store(
    store: RedisStore, redis_cluster: RedisClusterProcesses
) -> None:
    """The slot of a token migrates to another master while the store uses it. Mid-migration a write whose keys
    all moved is answered ASK and lands on the new master; one whose keys are split between the two is refused
    with TRYAGAIN, which the store reports as StoreUnavailable. Once the slot is moved, every call is redirected
    (MOVED) and succeeds, with all the data there."""
    token = "moving"
    first = await store.create("tokens", f"{token}/a", b"1")
    slot = _slot(store.tag("tokens", f"{token}/a"))
    masters = redis_cluster.masters()
    source = _owner(redis_cluster, slot)
    target = next(address for address in masters if address != source)
    nodes = {node.address: node for node in redis_cluster.nodes}

    def client(address: str) -> redis.Redis:
        return nodes[address].client()

    landed = {f"{token}/a"}
    with client(source) as src, client(target) as dst:
        source_id, target_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        try:
            # The group's version counter is still on the source, the new entry is not: TRYAGAIN.
            with pytest.raises(StoreUnavailable):
                await store.create("tokens", f"{token}/b", b"2")
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            host, port = target.split(":")
            src.execute_command("MIGRATE", host, port, "", 0, 10000, "KEYS", *keys)
            # Every key has left the source: the write is answered ASK, and lands on the target.
            during = await store.compare_and_swap("tokens", f"{token}/a", b"1+", version=first.version)
        finally:
            for address in masters:
                with client(address) as node:
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    assert _owner(redis_cluster, slot) == target
    assert during.version > first.version
    after = await store.create("tokens", f"{token}/c", b"3")  # MOVED, followed
    landed.add(f"{token}/c")
    assert after.version > during.version
    assert await store.get("tokens", f"{token}/a") == during
    assert {e.key for e in (await store.list("tokens")).entries} == landed
