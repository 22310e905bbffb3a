"""The revocation feed: every replica polls the store's time-ordered revocation events and fans them out.

A revocation commits its event in the same atomic write as the revocation itself (see `journal`), keyed by
the commit-time nanoseconds, so any replica sees it on its next poll (every 250 ms). Keys are stamped just
before the commit and replicas' clocks differ slightly, so an event can land behind the newest key a poller
has seen: each poll re-reads a short look-back window and drops the keys it already delivered. Events older
than the retention (a day) are pruned by whichever replica gets there first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from kagi.clock import Clock
from kagi.store.base import Delete, KeyValueStore, encode_page_token
from services.ca_service.app.repository import REVOCATION_EVENTS
from services.ca_service.domain.revocation import RevocationReason
from services.ca_service.domain.settings import CaKind

log = structlog.get_logger("kagi.ca.feed")

POLL_INTERVAL = 0.25
"""POLL_INTERVAL is how often each replica reads new revocation events (seconds)."""

LOOKBACK = 2.0
"""LOOKBACK is how far behind its clock a poll re-reads, for events committed late or by a skewed replica."""

RETENTION = 24 * 3600.0
"""RETENTION is how long revocation events are kept."""

PRUNE_INTERVAL = 600.0
"""PRUNE_INTERVAL is how often a replica deletes events past the retention."""

_QUEUE_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class RevocationNotice:
    """RevocationNotice is one revocation as the feed delivers it."""

    key: str
    serial_hex: str
    issuer: CaKind
    revoked_at: int
    reason: RevocationReason


def _time_key(seconds: float) -> str:
    return f"{max(0, int(seconds * 1e9)):020d}"


class RevocationFeed:
    """RevocationFeed polls the store for revocation events and hands each new one to every subscriber."""

    def __init__(
        self,
        store: KeyValueStore,
        clock: Clock,
        *,
        poll_interval: float = POLL_INTERVAL,
        lookback: float = LOOKBACK,
        retention: float = RETENTION,
    ) -> None:
        self._store = store
        self._clock = clock
        self._poll_interval = poll_interval
        self._lookback = lookback
        self._retention = retention
        self._subscribers: set[asyncio.Queue[RevocationNotice | None]] = set()
        self._listeners: list[Callable[[RevocationNotice], None]] = []
        self._seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0

    def start(self) -> None:
        """Start begins polling (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop ends polling and closes every subscription."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def add_listener(self, listener: Callable[[RevocationNotice], None]) -> None:
        """Add_listener calls `listener` (synchronously, on the loop) for every new revocation."""
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[RevocationNotice | None]]:
        """Subscribe yields a queue of new revocations (None: the feed stopped or the reader fell too far behind).

        It starts with what was committed during the last look-back window, so a watcher that loaded a CRL
        just before subscribing misses nothing in between.
        """
        queue: asyncio.Queue[RevocationNotice | None] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._subscribers.add(queue)
        self.start()
        try:
            # Only what the poller delivered already: the rest reaches this queue with the next poll.
            for notice in await self._recent():
                if notice.key in self._seen:
                    queue.put_nowait(notice)
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def poll_once(self) -> int:
        """Poll_once reads new events and delivers them; returns how many were new."""
        now = self._clock.now()
        fresh = [notice for notice in await self._recent() if notice.key not in self._seen]
        for notice in fresh:
            self._seen[notice.key] = now
            self._deliver(notice)
        horizon = now - 4 * self._lookback
        if len(self._seen) > 1024:
            self._seen = {key: seen for key, seen in self._seen.items() if seen >= horizon}
        return len(fresh)

    async def prune(self) -> int:
        """Prune deletes events older than the retention; returns how many it deleted."""
        cutoff = _time_key(self._clock.now() - self._retention)
        deleted = 0
        while True:
            page = await self._store.list(REVOCATION_EVENTS, page_size=500)
            old = [entry.key for entry in page.entries if entry.key < cutoff]
            if not old:
                return deleted
            await self._store.commit([Delete(REVOCATION_EVENTS, key) for key in old])
            deleted += len(old)
            if len(old) < len(page.entries):
                return deleted

    async def _recent(self) -> list[RevocationNotice]:
        token = encode_page_token(_time_key(self._clock.now() - self._lookback))
        notices: list[RevocationNotice] = []
        while True:
            page = await self._store.list(REVOCATION_EVENTS, page_size=1000, page_token=token)
            for entry in page.entries:
                notice = _notice(entry.key, entry.value)
                if notice is not None:
                    notices.append(notice)
            token = page.next_page_token
            if not token:
                return notices

    def _deliver(self, notice: RevocationNotice) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(notice)
            except asyncio.QueueFull:
                # A reader this far behind is better told to reconnect (and reload the CRL) than fed forever.
                self._subscribers.discard(queue)
        for listener in self._listeners:
            try:
                listener(notice)
            except Exception:  # a listener's bug must not stop the feed
                log.exception("revocation listener failed")

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
                if time.monotonic() - self._last_prune > PRUNE_INTERVAL:
                    self._last_prune = time.monotonic()
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store may be down for a while; keep polling
                log.warning("revocation feed poll failed", error=str(exc))
            await asyncio.sleep(max(0.0, self._poll_interval - (time.monotonic() - started)))


def _notice(key: str, value: bytes) -> RevocationNotice | None:
    try:
        body = json.loads(value)
        return RevocationNotice(
            key=key,
            serial_hex=str(body["serial"]),
            issuer=CaKind(body["issuer"]),
            revoked_at=int(body["revoked_at"]),
            reason=RevocationReason(int(body["reason"])),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("skipping a malformed revocation event", key=key)
        return None
