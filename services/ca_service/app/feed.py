"""The revocation feed: every replica reads the store's revocation events by position and fans them out.

A revocation commits its event in the same atomic write as the revocation itself (see `journal`), at a
position the journal takes from the audit head in that very commit: positions follow commit order, so an
event can never appear behind one already read, however late its commit or however skewed its replica's
clock. Each replica keeps a cursor (the last position it delivered) and, every 250 ms, lists the events after
it. A replica starts at the newest position; what was revoked before is in the CRL.

Subscribers (WatchRevocations streams) get each notice in a queue. A new subscriber first gets what this
replica delivered during the replay window (10 s), so a watcher that subscribes, then loads a CRL published
a moment before a revocation, misses nothing. A subscriber that falls `queue_limit` notices behind has its
stream ended (the queue yields None) so that its watcher reconnects and reloads the CRL: a revocation is
never dropped while the stream looks healthy. Events older than the retention (a day) are pruned by
whichever replica gets there first.

The feed is `live` while its last complete read of the store began less than LIVE_WITHIN ago: every revocation
committed (on any replica) before that moment has been delivered, to subscribers and to listeners. What relies
on it (the OCSP answer cache) is thus at most LIVE_WITHIN behind another replica's revocation, and goes back to
the store whenever the feed is not live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from kagi.clock import Clock
from services.ca_service.app.repository import CaRepository
from services.ca_service.domain.revocation import RevocationReason
from services.ca_service.domain.settings import CaKind

log = structlog.get_logger("kagi.ca.feed")

POLL_INTERVAL = 0.25
"""How often each replica reads new revocation events (seconds)."""

REPLAY = 10.0
"""How long (seconds) a delivered notice is replayed to new subscribers: longer than a CRL takes to
cover a revocation (the debounce, or another replica's cover grace), so subscribe-then-load-the-CRL is whole."""

RETENTION = 24 * 3600.0
"""How long revocation events are kept."""

PRUNE_INTERVAL = 600.0
"""How often a replica deletes events past the retention."""

LIVE_WITHIN = 1.0
"""How recent (seconds) the start of the last complete read must be for the feed to be live: four
polls, so one slow or failed poll does not end it."""

QUEUE_LIMIT = 10_000
"""How many notices a subscriber may have waiting before its stream is ended."""

_RECENT_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class RevocationNotice:
    """One revocation as the feed delivers it.

    `position` is its place in the feed (assigned at commit); `observed_at` is when this replica read it, by
    its own clock, and never earlier than the revoking replica's stamp: whatever a CRL listed later than that
    includes the revocation.
    """

    key: str
    position: int
    serial_hex: str
    issuer: CaKind
    revoked_at: int
    reason: RevocationReason
    observed_at: float


class RevocationFeed:
    """Reads the store's revocation events after its cursor and hands each to every subscriber."""

    def __init__(
        self,
        repository: CaRepository,
        clock: Clock,
        *,
        poll_interval: float = POLL_INTERVAL,
        replay: float = REPLAY,
        retention: float = RETENTION,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self._repository = repository
        self._clock = clock
        self._poll_interval = poll_interval
        self._replay = replay
        self._retention = retention
        self.queue_limit = queue_limit
        """How far behind a subscriber may fall before its stream is ended."""
        # queue -> how many notices it was replayed (allowed on top of the limit)
        self._subscribers: dict[asyncio.Queue[RevocationNotice | None], int] = {}
        self._listeners: list[Callable[[RevocationNotice], None]] = []
        self._recent: deque[tuple[float, RevocationNotice]] = deque(maxlen=_RECENT_LIMIT)
        self._cursor: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        # When (monotonic) the last complete read of the store began; None before the first.
        self._read_from: float | None = None

    @property
    def cursor(self) -> int | None:
        """Return the last position this replica delivered (None until its first read of the store)."""
        return self._cursor

    def live(self) -> bool:
        """Tell whether every revocation committed more than LIVE_WITHIN ago has been delivered."""
        read_from = self._read_from
        return read_from is not None and time.monotonic() - read_from < LIVE_WITHIN

    def start(self) -> None:
        """Begin polling (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """End polling and close every subscription."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._read_from = None
        for queue in list(self._subscribers):
            self._end(queue)

    def add_listener(self, listener: Callable[[RevocationNotice], None]) -> None:
        """Call LISTENER (synchronously, on the loop) for every new revocation."""
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[RevocationNotice | None]]:
        """Yield a queue of new revocations (None: the feed stopped or the reader fell too far behind).

        It starts with what this replica delivered during the replay window, so a watcher that loads a CRL
        just after subscribing misses nothing that CRL may lack.
        """
        queue: asyncio.Queue[RevocationNotice | None] = asyncio.Queue()
        horizon = time.monotonic() - self._replay
        replayed = 0
        for delivered, notice in self._recent:
            if delivered >= horizon:
                queue.put_nowait(notice)
                replayed += 1
        # The replay does not count against the limit: only falling behind the live feed does.
        self._subscribers[queue] = replayed
        self.start()
        try:
            yield queue
        finally:
            self._subscribers.pop(queue, None)

    async def poll_once(self) -> int:
        """Read the events after the cursor and deliver them; return how many were delivered."""
        # Events committed after this moment may be missed by this read (the next one gets them).
        began = time.monotonic()
        if self._cursor is None:
            # A new replica starts at the newest position: everything before it is in the CRL.
            self._cursor = await self._repository.last_feed_position()
        token = ""
        delivered = 0
        while True:
            entries, token = await self._repository.feed_page(self._cursor, token)
            observed = self._clock.now()
            for entry in entries:
                self._cursor = entry.position
                event = entry.event
                if event is None:
                    log.warning("skipping a malformed revocation event", key=entry.key)
                    continue
                self._deliver(
                    RevocationNotice(
                        key=entry.key,
                        position=entry.position,
                        serial_hex=event.serial_hex,
                        issuer=event.issuer,
                        revoked_at=event.revoked_at,
                        reason=event.reason,
                        observed_at=max(observed, event.stamped_at),
                    )
                )
                delivered += 1
            if not token:
                self._read_from = began
                return delivered

    async def prune(self) -> int:
        """Delete events older than the retention (by their commit stamp); return how many were deleted."""
        return await self._repository.prune_feed(int((self._clock.now() - self._retention) * 1e9))

    def _deliver(self, notice: RevocationNotice) -> None:
        now = time.monotonic()
        self._recent.append((now, notice))
        while self._recent and self._recent[0][0] < now - self._replay:
            self._recent.popleft()
        for queue, replayed in list(self._subscribers.items()):
            if queue.qsize() >= self.queue_limit + replayed:
                # A reader this far behind is told to reconnect (and reload the CRL), never fed a gap.
                log.warning("a revocation watcher fell behind; ending its stream", queued=queue.qsize())
                self._end(queue)
                continue
            queue.put_nowait(notice)
        for listener in self._listeners:
            try:
                listener(notice)
            except Exception:  # a listener's bug must not stop the feed
                log.exception("revocation listener failed")

    def _end(self, queue: asyncio.Queue[RevocationNotice | None]) -> None:
        self._subscribers.pop(queue, None)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

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
