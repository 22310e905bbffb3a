"""A Sentinel failover under load: the master is SIGKILLed while writers run, Sentinel promotes the replica, and
the same store object carries on; nothing it acknowledged is lost.

Every write through `redis+sentinel://` waits for one replica (`WAIT 1`) before it is acknowledged, so an
acknowledged write is on the replica that Sentinel promotes. While there is no master (or, after the
promotion, no replica yet to acknowledge to) calls fail with StoreUnavailable and nothing else; the killed
server is restarted, as a supervisor would, and Sentinel makes it the new master's replica.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kagi.store import open_store
from tests.support.redis_topology import SentinelSet, wait_for
from tests.support.write_load import WriteLoad

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


async def test_master_killed_under_load_the_replica_is_promoted_and_no_acknowledged_write_is_lost(
    tmp_path: Path, namespace: str
) -> None:
    """Writers run through redis+sentinel://; the master is SIGKILLed; Sentinel promotes the replica; the same
    store recovers by itself; every acknowledged key and counter value is there; failures were StoreUnavailable."""
    sentinels = SentinelSet(tmp_path)
    sentinels.start()
    store = open_store(sentinels.url, namespace=namespace, state_dir=None)
    load = WriteLoad(store)
    try:
        load.start(writers=4)
        await load.until_acked(40, within=60)
        assert sentinels.master_address() == sentinels.master.address
        sentinels.master.kill()
        killed_at = len(load.acked)

        def promoted() -> bool:
            return sentinels.master_address() == sentinels.replica.address

        await asyncio.to_thread(wait_for, promoted, "Sentinel promoting the replica", 60)
        # A supervisor restarts the killed server; Sentinel turns it into the new master's replica.
        await asyncio.to_thread(sentinels.master.start)
        await asyncio.to_thread(sentinels.wait_until_replicated, sentinels.master, 90)
        await load.until_acked(killed_at + 40, within=90)
        await load.stop()
        assert not load.unexpected, load.unexpected[:3]
        assert load.unavailable > 0, "no call failed while the master was down: the kill proved nothing"
        lost = await load.lost()
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    finally:
        await load.stop()
        await store.close()
        sentinels.stop()
