"""The durable mail outbox's sender: mails are queued (repository `outbox_entry`) in the same atomic commit as
the step that causes them, and the sender delivers them, retrying with backoff while the mail server is down. A
step never fails because mail is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import structlog

from kagi.clock import Clock
from kagi.errors import Unavailable
from kagi.runtime.metrics import outbox_dead, outbox_depth, outbox_oldest_age, refresh_on_scrape
from kagi.store.base import Entry, KeyValueStore, VersionMismatch
from services.enrollment_service.adapters.mail import MailTransport, build_message
from services.enrollment_service.app.repository import OUTBOX
from services.enrollment_service.domain.messages import Mail

log = structlog.get_logger("kagi.enrollment.outbox")

MAX_BACKOFF_SECONDS = 300.0
MAX_ATTEMPTS = 100
PARALLEL_SENDS = 8
# A claimed mail is leased for at least this long, and always longer than the transport's longest send, so
# another sender never takes (and sends again) a mail whose slow send is still under way.
MIN_LEASE_SECONDS = 60.0
LEASE_MARGIN_SECONDS = 30.0


def lease_for(transport: MailTransport) -> float:
    """Return how long a claimed mail stays the claimer's: the transport's longest send plus a margin."""
    longest = float(getattr(transport, "max_send_seconds", 0.0))
    return max(MIN_LEASE_SECONDS, longest + LEASE_MARGIN_SECONDS)


@dataclass
class OutboxSender:
    """Delivers queued mails; several replicas may run one, as each mail is claimed by CAS."""

    store: KeyValueStore
    transport: MailTransport
    clock: Clock
    sender_address: str
    lease_seconds: float = 0.0  # 0: derived from the transport (see lease_for)

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            self.lease_seconds = lease_for(self.transport)
        self._doorbell = asyncio.Event()
        self._round = asyncio.Lock()
        refresh_on_scrape(self)

    async def refresh_metrics(self) -> None:
        """Set the outbox gauges (depth, given-up mails, oldest mail's age) from the store, at scrape."""
        depth = dead = 0
        oldest: float | None = None
        token = ""
        while True:
            page = await self.store.list(OUTBOX, page_size=1000, page_token=token)
            for entry in page.entries:
                depth += 1
                dead += bool(json.loads(entry.value).get("dead"))
                queued_ms = entry.key.partition("-")[0]
                if oldest is None and queued_ms.isdigit():
                    oldest = int(queued_ms) / 1000  # keys start with the queueing time: the first is the oldest
            token = page.next_page_token
            if not token:
                break
        outbox_depth.set(depth)
        outbox_dead.set(dead)
        outbox_oldest_age.set(0 if oldest is None else max(0.0, self.clock.now() - oldest))

    async def deliver_due(self) -> int:
        """Send every mail whose time has come; return how many this call delivered.

        Rounds run one at a time: a call made while `run`'s round is sending (rung by a step's mail) first waits
        for it, so every mail due when the call was made has gone out when it returns.
        """
        async with self._round:
            delivered = 0
            token = ""
            # Mails go out side by side (a slow mail server must not hold the whole queue), a few at a time.
            gate = asyncio.Semaphore(PARALLEL_SENDS)

            async def deliver(entry: Entry) -> int:
                async with gate:
                    return await self._deliver(entry)

            while True:
                page = await self.store.list(OUTBOX, page_size=100, page_token=token)
                delivered += sum(await asyncio.gather(*(deliver(entry) for entry in page.entries)))
                token = page.next_page_token
                if not token:
                    return delivered

    async def _deliver(self, entry: Entry) -> int:
        record = json.loads(entry.value)
        now = self.clock.now()
        if record.get("dead") or record["next_attempt_at"] > now:
            return 0
        record["attempts"] += 1
        backoff = min(2.0 ** record["attempts"], MAX_BACKOFF_SECONDS)
        # The claim is a lease: no other sender takes the mail until the send has surely ended.
        record["next_attempt_at"] = now + max(backoff, self.lease_seconds)
        if record["attempts"] > MAX_ATTEMPTS:
            record["dead"] = True
        try:
            claimed = await self.store.compare_and_swap(
                OUTBOX, entry.key, json.dumps(record).encode(), version=entry.version
            )
        except VersionMismatch:
            return 0  # another sender has it
        if record.get("dead"):
            log.error("mail given up", outbox_key=entry.key, attempts=record["attempts"] - 1)
            return 0
        mail = Mail(to=record["to"], subject=record["subject"], body=record["body"])
        try:
            await self.transport.send(build_message(mail, sender=self.sender_address, now=now))
        except Unavailable as exc:
            log.warning("mail deferred", outbox_key=entry.key, attempts=record["attempts"], error=exc.message)
            # The send is over: end the lease early, so the retry comes after the backoff, not the lease.
            record["next_attempt_at"] = now + backoff
            with contextlib.suppress(VersionMismatch):
                await self.store.compare_and_swap(
                    OUTBOX, entry.key, json.dumps(record).encode(), version=claimed.version
                )
            return 0
        with contextlib.suppress(VersionMismatch):
            await self.store.delete(OUTBOX, entry.key, version=claimed.version)
        log.info("mail sent", outbox_key=entry.key)
        return 1

    def ring(self) -> None:
        """Have `run` deliver at once: a mail was just queued (the repository's `mail_queued`)."""
        self._doorbell.set()

    async def run(self, stop: asyncio.Event, *, interval: float = 1.0) -> None:
        """Deliver due mails every `interval` seconds, and at once when `ring` is called, until `stop` is set;
        store outages are waited out. Mails queued where nothing rings (another replica, the journal) wait for the
        next round; the doorbell spares the mail of a step the polling, which a short interval made cost a store
        read every few milliseconds."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._doorbell.clear()
                try:
                    await self.deliver_due()
                except Unavailable as exc:
                    log.warning("outbox paused", error=exc.message)
                rung = asyncio.ensure_future(self._doorbell.wait())
                await asyncio.wait((stopped, rung), timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                rung.cancel()
        finally:
            stopped.cancel()
