"""A service's journal: every state change commits together with its hash-chained audit record, group-committed.

The CA and the enrollment service keep their audit trails this way, each in its own store. A change (an
issuance, a revocation, a login) is a list of store operations plus the audit events that describe it.
The journal appends them to the chain in one `commit` per round: the chain head is replaced with
compare-and-swap, the new audit records are created, and every change's operations ride along. So a
certificate is never recorded without its audit record, and two replicas appending at once can never fork
the chain: the loser's head CAS fails, it re-reads the head and re-chains its round.

Rounds are the store's group commit (`kagi.store.group_commit`), with the chain as the round's planner: no
timer, a lone change goes at once; while one commit is in flight, further changes queue and the next round
takes them all. 100 parallel issuances therefore cost a few commits, not 100 CAS retries on one key. A
change whose own condition fails is dropped from the round alone; a lost head CAS re-chains the round.

Feed events (the CA's revocations) are numbered by the same compare-and-swap: the head also holds the last
feed position handed out, and a round's events take the next positions in the commit that moves the head. So
positions are assigned at commit, in commit order, whatever the clocks say: a reader that has seen position
N+1 can never later find N appear (N committed first, or N+1's head CAS would have failed), and a reader that
keeps a cursor (the last position it saw) and lists the feed from there misses nothing.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from kagi.audit import AuditRecord, AuditVerification, next_audit_record, verify_audit_chain
from kagi.clock import Clock
from kagi.errors import KagiError
from kagi.store.base import ConditionFailed, Create, Entry, KeyValueStore, Operation, Replace
from kagi.store.group_commit import GroupCommit, RoundPlanner

AUDIT = "audit"
"""The collection of audit records, keyed by zero-padded sequence (key order is chain order)."""
AUDIT_HEAD = "audit-head"
"""Holds the chain's tip (sequence and hash) under AUDIT_HEAD_KEY: the compare-and-swap point."""
AUDIT_HEAD_KEY = "head"

FEED_KEY_PREFIX = "p"
"""Starts every feed key: "p" and the position, zero-padded to 20 digits (key order is position
order). Older, clock-stamped keys began with a digit, so they sort before every positioned one."""

MAX_ROUND = 128
"""The most changes one commit carries."""
MAX_ROUND_OPERATIONS = 1024
"""Bounds the operations, audit records and feed events of one round's changes."""

_MAX_CHAIN_RETRIES = 200
"""How many times a round is re-chained after other replicas moved the head before its changes fail."""
_MAX_BACKOFF = 0.02
"""The longest pause, in seconds, before re-chaining a round that lost the head to another replica."""
_CACHED_ROUNDS = 8
"""How many rounds in a row are chained from the head this journal wrote last, before it reads the head again.

A replica that keeps committing from its cached head never pauses, while another one needs a read between
attempts: without this bound a busy replica could starve the other's retries until they give up.
"""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What an audit record says: who did what to which subject (never a secret)."""

    actor: str
    action: str
    subject: str
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """An event to publish on the journal's feed (the CA's revocations); numbered at commit."""

    serial_hex: str
    body: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Change:
    """One atomic state change: its store operations, its audit events and its feed events."""

    operations: Sequence[Operation]
    audit: Sequence[AuditEvent]
    feed: Sequence[FeedEvent] = ()


class Journal:
    """Commits Changes with their audit records in rounds, chained from the head kept in the store."""

    def __init__(
        self, store: KeyValueStore, clock: Clock, *, max_round: int = MAX_ROUND, feed_collection: str = ""
    ) -> None:
        # Rounds run in the engine's task, never in a caller's: a caller cancelled mid-round (a client's
        # deadline) does not cut short the round its change rides in, so the change lands or fails with it.
        self._rounds: GroupCommit[Change] = GroupCommit(
            store,
            _Chain(store, clock, feed_collection),
            max_operations=MAX_ROUND_OPERATIONS,
            max_units=max_round,
            inline=False,
        )

    async def submit(self, change: Change) -> builtins.list[Entry | None]:
        """Commit CHANGE with its audit records; return the entries its operations wrote.

        A failed condition of the change's own operations (KeyExists, VersionMismatch) fails this change
        alone; StoreUnavailable fails the round.
        """
        size = len(change.operations) + len(change.audit) + len(change.feed)
        return await self._rounds.submit(change.operations, change, size=size)

    async def close(self) -> None:
        """Wait for the rounds in flight and queued."""
        await self._rounds.close()


class _Chain(RoundPlanner[Change]):
    """The journal's share of every round: audit records, the chain-head compare-and-swap, feed events."""

    def __init__(self, store: KeyValueStore, clock: Clock, feed_collection: str) -> None:
        self._store = store
        self._clock = clock
        self._feed_collection = feed_collection
        # (tip, head entry version, last feed position), cached until a round fails
        self._head: tuple[AuditRecord | None, int | None, int] | None = None
        # What the round being committed moves the head to: (tip, last feed position).
        self._planned: tuple[AuditRecord | None, int] = (None, 0)
        self._cached_rounds = 0

    async def plan(self, payloads: Sequence[Change]) -> builtins.list[Operation]:
        """Chain the round's audit events and number its feed events after the current head."""
        tip, head_version, feed_tip = await self._read_head()
        audit_ops: builtins.list[Operation] = []
        feed_ops: builtins.list[Operation] = []
        now_ns = int(self._clock.now() * 1e9)
        for change in payloads:
            for event in change.audit:
                tip = next_audit_record(
                    tip,
                    clock=self._clock,
                    actor=event.actor,
                    action=event.action,
                    subject=event.subject,
                    details=event.details,
                )
                audit_ops.append(Create(AUDIT, audit_key(tip.sequence), tip.to_json()))
            for feed in change.feed:
                # The next position, taken in the commit that moves the head: see the module doc.
                feed_tip += 1
                body = json.dumps({**feed.body, "at_ns": now_ns}, separators=(",", ":")).encode()
                feed_ops.append(Create(self._feed_collection, feed_key(feed_tip), body))
        if feed_ops and tip is None:
            # Positions live in the head, and there is no head without an audit record.
            raise ValueError("a change with feed events must carry an audit event")
        self._planned = (tip, feed_tip)
        if tip is None:
            return []
        head: dict[str, object] = {"sequence": tip.sequence, "hash": tip.hash}
        if feed_tip:
            head["feed"] = feed_tip
        head_value = json.dumps(head).encode()
        # The head first: when another replica moved it, this is the failure the driver reports.
        head_op: Operation = (
            Create(AUDIT_HEAD, AUDIT_HEAD_KEY, head_value)
            if head_version is None
            else Replace(AUDIT_HEAD, AUDIT_HEAD_KEY, head_value, head_version)
        )
        return [head_op, *audit_ops, *feed_ops]

    def landed(self, entries: Sequence[Entry | None]) -> None:
        """Cache the head the round wrote, so the next round needs no read."""
        tip, feed_tip = self._planned
        if tip is None:
            return  # no audit event and no head yet: nothing moved
        head_entry = entries[0]
        self._cached_rounds += 1
        if self._cached_rounds >= _CACHED_ROUNDS:
            # Read the head again before the next round: the pause lets another replica's retry land.
            self._cached_rounds = 0
            self._head = None
            return
        self._head = (tip, head_entry.version if head_entry is not None else None, feed_tip)

    async def lost(self, error: ConditionFailed, attempt: int) -> bool:
        """Re-read the head and re-chain the round: another replica appended (or the chain was touched)."""
        self._head = None
        self._cached_rounds = 0
        if attempt > _MAX_CHAIN_RETRIES:
            return False
        # A jittered pause that grows with each loss, so two replicas that collide do not collide again in step.
        await asyncio.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.0005 * 2 ** min(attempt, 10))))  # noqa: S311
        return True

    def abandoned(self, error: BaseException) -> None:
        """Forget the cached head: a round that failed as a whole may still have been written."""
        self._head = None

    async def _read_head(self) -> tuple[AuditRecord | None, int | None, int]:
        if self._head is not None:
            return self._head
        entry = await self._store.get(AUDIT_HEAD, AUDIT_HEAD_KEY)
        if entry is None:
            self._head = (None, None, 0)
            return self._head
        head = json.loads(entry.value)
        record_entry = await self._store.get(AUDIT, audit_key(int(head["sequence"])))
        tip = AuditRecord.from_json(record_entry.value) if record_entry is not None else None
        if tip is None or tip.hash != head["hash"]:
            # The head names a record that is missing or different: appending would hide tampering.
            raise ChainBroken(f"the audit head names sequence {head['sequence']}, which is missing or altered")
        self._head = (tip, entry.version, int(head.get("feed", 0)))
        return self._head


def feed_key(position: int) -> str:
    """Return the key of the feed event at POSITION; zero-padded so key order is position order."""
    return f"{FEED_KEY_PREFIX}{position:020d}"


def feed_position(key: str) -> int | None:
    """Return the position a feed key names, or None for a key that names none (an older one)."""
    digits = key[len(FEED_KEY_PREFIX) :]
    if not key.startswith(FEED_KEY_PREFIX) or len(digits) != 20 or not digits.isdigit():
        return None
    return int(digits)


async def last_feed_position(store: KeyValueStore) -> int:
    """Return the position of the newest committed feed event (0 when there is none)."""
    entry = await store.get(AUDIT_HEAD, AUDIT_HEAD_KEY)
    if entry is None:
        return 0
    return int(json.loads(entry.value).get("feed", 0))


def audit_key(sequence: int) -> str:
    """Return the key of the audit record with SEQUENCE; zero-padded so key order is chain order."""
    return f"{sequence:016d}"


class ChainBroken(KagiError):
    """The stored audit head does not match the record it names (the chain was tampered with).

    Nothing more is appended until an operator has looked: `kagi admin verify-audit` shows where it breaks.
    """

    reason = "AUDIT_CHAIN_BROKEN"


async def audit_records(store: KeyValueStore, *, page_size: int = 1000) -> AsyncIterator[AuditRecord]:
    """Read the whole chain from the store in sequence order, a page at a time."""
    token = ""
    while True:
        page = await store.list(AUDIT, page_size=page_size, page_token=token)
        for entry in page.entries:
            yield AuditRecord.from_json(entry.value)
        token = page.next_page_token
        if not token:
            return


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The verdict on the stored chain: ok with the record count, or the first bad record."""

    ok: bool
    checked: int
    bad_sequence: int | None = None
    problem: str = ""
    bad_record: AuditRecord | None = None


async def verify_stored_chain(store: KeyValueStore) -> AuditReport:
    """Check every stored record and that the chain ends at the stored head.

    Records are checked a page at a time, each page anchored on the last record of the one before.
    """
    head_entry = await store.get(AUDIT_HEAD, AUDIT_HEAD_KEY)
    expected_head = json.loads(head_entry.value)["hash"] if head_entry is not None else None
    anchor: AuditRecord | None = None
    checked = 0
    batch: builtins.list[AuditRecord] = []

    def check(final: bool) -> AuditReport | None:
        nonlocal anchor, checked, batch
        if not batch and not final:
            return None
        verdict: AuditVerification = verify_audit_chain(
            batch, anchor=anchor, expected_head=expected_head if final else None
        )
        if not verdict.ok:
            index = verdict.first_bad_index if verdict.first_bad_index is not None else 0
            bad = batch[index] if index < len(batch) else None
            sequence = bad.sequence if bad is not None else (anchor.sequence + 1 if anchor else checked)
            return AuditReport(False, checked + verdict.checked, sequence, verdict.problem, bad)
        checked += verdict.checked
        if batch:
            anchor = batch[-1]
        batch = []
        return None

    async for record in audit_records(store):
        batch.append(record)
        if len(batch) >= 1000 and (report := check(final=False)) is not None:
            return report
    if (report := check(final=True)) is not None:
        return report
    if expected_head is None and checked:
        return AuditReport(False, checked, None, "records exist but the chain head is missing")
    return AuditReport(True, checked)
