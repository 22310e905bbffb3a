"""A Sentinel failover under load: the master is SIGKILLed while writers run, Sentinel promotes the replica, and
the same store object carries on; nothing it acknowledged is lost.

Every write through `redis+sentinel://` waits for one replica (`WAIT 1`) before it is acknowledged, so an
acknowledged write is on the replica that Sentinel promotes. While there is no master (or, after the
promotion, no replica yet to acknowledge to) calls fail with StoreUnavailable and nothing else; the killed
server is restarted, as a supervisor would, and Sentinel makes it the new master's replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kagi.store import Entry, KeyValueStore, StoreUnavailable, VersionMismatch, open_store
from tests.support.redis_topology import SentinelSet, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

WRITERS = 4


@dataclass
class Load:
    """What the writers did: keys acknowledged, each writer's last acknowledged counter, failures by type."""

    acked: set[str] = field(default_factory=set)
    counters: dict[int, int] = field(default_factory=dict)
    unavailable: int = 0
    unexpected: list[BaseException] = field(default_factory=list)
    stop: bool = False


async def _read(store: KeyValueStore, collection: str, key: str, load: Load) -> Entry | None:
    """Read until the store answers (it may be failing over) or the load stops."""
    while not load.stop:
        try:
            return await store.get(collection, key)
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    return None


async def _writer(store: KeyValueStore, number: int, load: Load) -> None:
    """Create a new key, then move this writer's counter on by compare-and-swap, again and again."""
    counter = f"w{number}"
    entry = await store.create("counters", counter, b"0")
    load.counters[number] = 0
    i = 0
    while not load.stop:
        i += 1
        key = f"w{number}-{i}"
        try:
            await store.create("writes", key, b"x")
            load.acked.add(key)
            value = int(entry.value) + 1
            entry = await store.compare_and_swap("counters", counter, str(value).encode(), version=entry.version)
            load.counters[number] = value
        except StoreUnavailable:
            load.unavailable += 1
            # The CAS may have landed without its acknowledgement: learn the counter again, as a caller would.
            found = await _read(store, "counters", counter, load)
            if found is None:
                return
            entry = found
            await asyncio.sleep(0.05)
        except VersionMismatch as exc:  # would mean a write was applied twice or lost its order
            load.unexpected.append(exc)
            return
        except Exception as exc:
            load.unexpected.append(exc)
            await asyncio.sleep(0.05)


async def _until(condition: Callable[[], bool], what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.1)


async def test_master_killed_under_load_the_replica_is_promoted_and_no_acknowledged_write_is_lost(
    tmp_path: Path, namespace: str
) -> None:
    """Writers run through redis+sentinel://; the master is SIGKILLed; Sentinel promotes the replica; the same
    store recovers by itself; every acknowledged key and counter value is there; failures were StoreUnavailable."""
    sentinels = SentinelSet(tmp_path)
    sentinels.start()
    store = open_store(sentinels.url, namespace=namespace, state_dir=None)
    load = Load()
    writers = [asyncio.create_task(_writer(store, n, load)) for n in range(WRITERS)]
    try:
        await _until(lambda: len(load.acked) >= 40, "40 acknowledged writes before the kill", 60)
        old_master = sentinels.master_address()
        assert old_master == sentinels.master.address
        sentinels.master.kill()
        killed_at = len(load.acked)

        def promoted() -> bool:
            return sentinels.master_address() == sentinels.replica.address

        await asyncio.to_thread(wait_for, promoted, "Sentinel promoting the replica", 60)
        # A supervisor restarts the killed server; Sentinel turns it into the new master's replica.
        await asyncio.to_thread(sentinels.master.start)
        await asyncio.to_thread(sentinels.wait_until_replicated, sentinels.master, 90)
        await _until(lambda: len(load.acked) >= killed_at + 40, "40 acknowledged writes after the failover", 90)
    finally:
        load.stop = True
        await asyncio.gather(*writers, return_exceptions=True)

    try:
        assert not load.unexpected, load.unexpected[:3]
        assert load.unavailable > 0, "no call failed while the master was down: the kill proved nothing"
        missing = [key for key in sorted(load.acked) if await store.get("writes", key) is None]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
        for number, value in load.counters.items():
            found = await store.get("counters", f"w{number}")
            assert found is not None
            assert int(found.value) >= value  # an unacknowledged CAS may have landed too, never fewer
    finally:
        await store.close()
        sentinels.stop()
