"""The revocation feed's positions, on a real SQLite file and a real Redis: assigned by the store at commit (in the
journal's head compare-and-swap), so two replicas writing at once, one of them with a clock 3 s behind, produce
positions 1..n in commit order, and a reader going by cursor sees each exactly once, never N+1 before N. A
subscriber that falls behind is ended, not fed a gap."""

from __future__ import annotations

import asyncio
import time

from kagi.clock import SystemClock
from kagi.journal import AuditEvent, Change, FeedEvent, Journal, feed_key, verify_stored_chain
from kagi.store.base import Create
from services.ca_service.app.feed import RevocationFeed, RevocationNotice
from services.ca_service.app.repository import REVOCATION_EVENTS, CaRepository
from tests.integration.ca.ca_service_harness import StoreTarget


class _ClockBehind:
    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def now(self) -> float:
        return time.time() - self._seconds


def _revocation(serial: str) -> Change:
    body = {"serial": serial, "issuer": "customer", "revoked_at": int(time.time()), "reason": 1}
    return Change(
        [Create("test-revoked", serial, b"1")],
        [AuditEvent("operator", "revoke", serial)],
        [FeedEvent(serial, body)],
    )


async def test_two_replicas_writing_at_once_never_show_a_reader_a_gap(store_target: StoreTarget) -> None:
    """Replica A (real clock) and replica B (3 s behind), each its own store connection, commit 60 revocations
    each concurrently while a third connection reads by cursor in a tight loop: the reader delivers positions
    1..120 in order, each once (no position ever appeared behind the cursor), every serial arrives, and the
    audit chain still verifies."""
    stores = [store_target.open() for _ in range(3)]
    journals = [
        Journal(stores[0], SystemClock(), feed_collection=REVOCATION_EVENTS),
        Journal(stores[1], _ClockBehind(3.0), feed_collection=REVOCATION_EVENTS),
    ]
    reader = RevocationFeed(CaRepository(stores[2]), SystemClock())
    seen: list[RevocationNotice] = []
    reader.add_listener(seen.append)
    await reader.poll_once()  # the cursor starts at the newest position: 0 here
    serials = [f"{replica}{n:04x}" for n in range(60) for replica in ("a", "b")]
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            await reader.poll_once()
            await asyncio.sleep(0)

    async def write(journal: Journal, prefix: str) -> None:
        for serial in [s for s in serials if s.startswith(prefix)]:
            await journal.submit(_revocation(serial))

    try:
        reading = asyncio.create_task(read())
        await asyncio.gather(write(journals[0], "a"), write(journals[1], "b"))
        done.set()
        await reading
        await reader.poll_once()
        assert [notice.position for notice in seen] == list(range(1, len(serials) + 1))
        assert sorted(notice.serial_hex for notice in seen) == sorted(serials)
        assert [notice.key for notice in seen] == [feed_key(n) for n in range(1, len(serials) + 1)]
        assert (await verify_stored_chain(stores[0])).ok
    finally:
        for store in stores:
            await store.close()


async def test_a_subscriber_that_falls_behind_is_ended_and_a_new_one_gets_the_replay(
    store_target: StoreTarget,
) -> None:
    """With queue_limit 2, a subscriber that reads nothing while 3 revocations arrive gets None (its stream is
    to end: reconnect) instead of some of them; a subscriber that joins afterwards is replayed all 3 at once,
    beyond the limit, and stays subscribed."""
    store = store_target.open()
    journal = Journal(store, SystemClock(), feed_collection=REVOCATION_EVENTS)
    feed = RevocationFeed(CaRepository(store), SystemClock(), queue_limit=2)
    try:
        await feed.poll_once()
        async with feed.subscribe() as slow:
            for serial in ("c1", "c2", "c3"):
                await journal.submit(_revocation(serial))
            assert await feed.poll_once() == 3
            assert slow.get_nowait() is None
            assert slow.empty()
        async with feed.subscribe() as late:
            replayed = [late.get_nowait() for _ in range(3)]
            assert [notice.serial_hex if notice else None for notice in replayed] == ["c1", "c2", "c3"]
            await journal.submit(_revocation("c4"))
            assert await feed.poll_once() == 1
            notice = late.get_nowait()
            assert notice is not None
            assert notice.serial_hex == "c4"
    finally:
        await store.close()
