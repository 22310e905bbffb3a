"""A Redis Cluster shard failover under load: one master is SIGKILLed while writers spread over every shard,
its replica takes its slots over, and the same store object carries on; nothing it acknowledged is lost.

Every write through `redis+cluster://` waits for one replica (`WAIT 1`), so an acknowledged write is on the
replica the cluster promotes. While the shard has no master (or, once promoted, no replica yet) its writes fail
with StoreUnavailable and nothing else; the store reads the slot layout again after a node fails and finds the
new master by itself. The killed node is restarted, as a supervisor would, and rejoins as a replica. The
cluster is this test's own (the shared one stays intact for the other tests).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kagi.store import Placement, open_store
from tests.support.redis_topology import RedisClusterProcesses, wait_for
from tests.support.write_load import WriteLoad

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def _by_key(key: str) -> str:
    return key


async def test_a_master_killed_under_load_fails_over_and_no_acknowledged_write_is_lost(
    tmp_path: Path, namespace: str
) -> None:
    """Writers spread by key over the three shards; one master is SIGKILLed; its replica is promoted; the same
    store recovers by itself; every acknowledged write is there; failures were StoreUnavailable."""
    cluster = RedisClusterProcesses(tmp_path)
    cluster.start()
    placement = Placement(spread={"writes": _by_key, "counters": _by_key})
    store = open_store(cluster.url, namespace=namespace, state_dir=None, placement=placement)
    load = WriteLoad(store)
    try:
        load.start(writers=6)
        await load.until_acked(60, within=60)
        victim_address = next(iter(cluster.masters()))
        victim = next(node for node in cluster.nodes if node.address == victim_address)
        victim.kill()
        killed_at = len(load.acked)

        def promoted() -> bool:
            return victim_address not in cluster.masters(skip=victim)

        await asyncio.to_thread(wait_for, promoted, "the cluster promoting the killed master's replica", 60)
        await asyncio.to_thread(victim.start)  # it rejoins as the new master's replica

        def rejoined() -> bool:
            with victim.client() as client:
                info = client.info("replication")
                return info["role"] == "slave" and info.get("master_link_status") == "up"

        await asyncio.to_thread(wait_for, rejoined, "the restarted node replicating", 90)
        await load.until_acked(killed_at + 60, within=90)
        await load.stop()
        assert not load.unexpected, load.unexpected[:3]
        assert load.unavailable > 0, "no call failed while the shard had no master: the kill proved nothing"
        lost = await load.lost()
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    finally:
        await load.stop()
        await store.close()
        cluster.stop()
