"""A service's journal: every state change commits together with its hash-chained audit record, group-committed.

The CA and the enrollment service keep their audit trails this way, each in its own store. A change (an
issuance, a revocation, a login) is a list of store operations plus the audit events that describe it.
The journal appends them to the chain in one `commit` per round: the chain head is replaced with
compare-and-swap, the new audit records are created, and every change's operations ride along. So a
certificate is never recorded without its audit record, and two replicas appending at once can never fork
the chain: the loser's head CAS fails, it re-reads the head and re-chains its round.

Rounds form on their own (no timer): while one commit is in flight, further changes queue; the next round
takes them all. 100 parallel issuances therefore cost a few commits, not 100 CAS retries on one key.

Feed events (the CA's revocations) are numbered by the same compare-and-swap: the head also holds the last
feed position handed out, and a round's events take the next positions in the commit that moves the head. So
positions are assigned at commit, in commit order, whatever the clocks say: a reader that has seen position
N+1 can never later find N appear (N committed first, or N+1's head CAS would have failed), and a reader that
keeps a cursor (the last position it saw) and lists the feed from there misses nothing.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from kagi.audit import AuditRecord, AuditVerification, next_audit_record, verify_audit_chain
from kagi.clock import Clock
from kagi.errors import KagiError
from kagi.store.base import (
    Create,
    Entry,
    KeyExists,
    KeyValueStore,
    Operation,
    Replace,
    VersionMismatch,
)

AUDIT = "audit"
"""AUDIT is the collection of audit records, keyed by zero-padded sequence (key order is chain order)."""
AUDIT_HEAD = "audit-head"
"""AUDIT_HEAD holds the chain's tip (sequence and hash) under AUDIT_HEAD_KEY: the compare-and-swap point."""
AUDIT_HEAD_KEY = "head"

FEED_KEY_PREFIX = "p"
"""FEED_KEY_PREFIX starts every feed key: "p" and the position, zero-padded to 20 digits (key order is position
order). Older, clock-stamped keys began with a digit, so they sort before every positioned one."""

MAX_ROUND = 128
"""MAX_ROUND is the most changes one commit carries."""

_MAX_CHAIN_RETRIES = 50


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """AuditEvent is what an audit record says: who did what to which subject (never a secret)."""

    actor: str
    action: str
    subject: str
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """FeedEvent is an event to publish on the journal's feed (the CA's revocations); numbered at commit."""

    serial_hex: str
    body: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Change:
    """Change is one atomic state change: its store operations, its audit events and its feed events."""

    operations: Sequence[Operation]
    audit: Sequence[AuditEvent]
    feed: Sequence[FeedEvent] = ()


@dataclass(eq=False)
class _Pending:
    change: Change
    future: asyncio.Future[builtins.list[Entry | None]]

    @property
    def slots(self) -> set[tuple[str, str]]:
        return {(op.collection, op.key) for op in self.change.operations}


class Journal:
    """Journal commits Changes with their audit records in rounds, chained from the head kept in the store."""

    def __init__(
        self, store: KeyValueStore, clock: Clock, *, max_round: int = MAX_ROUND, feed_collection: str = ""
    ) -> None:
        self._store = store
        self._feed_collection = feed_collection
        self._clock = clock
        self._max_round = max_round
        self._queue: list[_Pending] = []
        self._runner: asyncio.Task[None] | None = None
        # (tip, head entry version, last feed position), cached until a commit fails
        self._head: tuple[AuditRecord | None, int | None, int] | None = None

    async def submit(self, change: Change) -> builtins.list[Entry | None]:
        """Submit commits `change` with its audit records; returns the entries its operations wrote.

        A failed condition of the change's own operations (KeyExists, VersionMismatch) fails this change
        alone; StoreUnavailable fails the round.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(change, loop.create_future())
        self._queue.append(pending)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._drain())
        return await pending.future

    async def close(self) -> None:
        """Close waits for the round in flight."""
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._runner)

    async def _drain(self) -> None:
        while self._queue:
            round_: builtins.list[_Pending] = []
            later: builtins.list[_Pending] = []
            taken: set[tuple[str, str]] = set()
            for pending in self._queue:
                if pending.future.done():
                    continue
                slots = pending.slots
                # Two changes to one key cannot share a commit; the later one goes in the next round.
                if len(round_) >= self._max_round or slots & taken:
                    later.append(pending)
                else:
                    round_.append(pending)
                    taken |= slots
            self._queue = later
            await self._commit_round(round_)

    async def _commit_round(self, round_: builtins.list[_Pending]) -> None:
        attempts = 0
        while round_:
            attempts += 1
            owners: builtins.list[int | None] = []
            try:
                tip, head_version, feed_tip = await self._read_head()
                operations, owners, tail, head_at, feed_end = self._plan(round_, tip, head_version, feed_tip)
                results = await self._store.commit(operations)
            except (KeyExists, VersionMismatch) as exc:
                index = _failed_index(exc)
                owner = owners[index] if index is not None and 0 <= index < len(owners) else None
                if owner is None:
                    # The head moved (another replica appended) or the chain was touched: re-read and re-chain.
                    self._head = None
                    if attempts > _MAX_CHAIN_RETRIES:
                        _fail(round_, exc)
                        return
                    await asyncio.sleep(0)
                    continue
                failed = round_.pop(owner)
                _settle(failed.future, error=exc)
                continue
            except BaseException as exc:
                self._head = None
                _fail(round_, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            head_entry = results[head_at]
            self._head = (tail, head_entry.version if head_entry is not None else None, feed_end)
            start = 0
            for pending in round_:
                count = len(pending.change.operations)
                _settle(pending.future, result=results[start : start + count])
                start += count
            return

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

    def _plan(
        self, round_: Sequence[_Pending], tip: AuditRecord | None, head_version: int | None, feed_tip: int
    ) -> tuple[builtins.list[Operation], builtins.list[int | None], AuditRecord | None, int, int]:
        operations: builtins.list[Operation] = []
        owners: builtins.list[int | None] = []
        audit_ops: builtins.list[Operation] = []
        feed_ops: builtins.list[Operation] = []
        now_ns = int(self._clock.now() * 1e9)
        for position, pending in enumerate(round_):
            for op in pending.change.operations:
                operations.append(op)
                owners.append(position)
            for event in pending.change.audit:
                tip = next_audit_record(
                    tip,
                    clock=self._clock,
                    actor=event.actor,
                    action=event.action,
                    subject=event.subject,
                    details=event.details,
                )
                audit_ops.append(Create(AUDIT, audit_key(tip.sequence), tip.to_json()))
            for feed in pending.change.feed:
                # The next position, taken in the commit that moves the head: see the module doc.
                feed_tip += 1
                body = json.dumps({**feed.body, "at_ns": now_ns}, separators=(",", ":")).encode()
                feed_ops.append(Create(self._feed_collection, feed_key(feed_tip), body))
        if feed_ops and tip is None:
            # Positions live in the head, and there is no head without an audit record.
            raise ValueError("a change with feed events must carry an audit event")
        head_at = len(operations)
        if tip is not None:
            head: dict[str, object] = {"sequence": tip.sequence, "hash": tip.hash}
            if feed_tip:
                head["feed"] = feed_tip
            head_value = json.dumps(head).encode()
            if head_version is None:
                operations.append(Create(AUDIT_HEAD, AUDIT_HEAD_KEY, head_value))
            else:
                operations.append(Replace(AUDIT_HEAD, AUDIT_HEAD_KEY, head_value, head_version))
            owners.append(None)
        operations += audit_ops + feed_ops
        owners += [None] * (len(audit_ops) + len(feed_ops))
        return operations, owners, tip, head_at, feed_tip


def feed_key(position: int) -> str:
    """feed_key is the key of the feed event at `position`; zero-padded so key order is position order."""
    return f"{FEED_KEY_PREFIX}{position:020d}"


def feed_position(key: str) -> int | None:
    """feed_position is the position a feed key names, or None for a key that names none (an older one)."""
    digits = key[len(FEED_KEY_PREFIX) :]
    if not key.startswith(FEED_KEY_PREFIX) or len(digits) != 20 or not digits.isdigit():
        return None
    return int(digits)


async def last_feed_position(store: KeyValueStore) -> int:
    """last_feed_position is the position of the newest committed feed event (0 when there is none)."""
    entry = await store.get(AUDIT_HEAD, AUDIT_HEAD_KEY)
    if entry is None:
        return 0
    return int(json.loads(entry.value).get("feed", 0))


def audit_key(sequence: int) -> str:
    """audit_key is the key of the audit record with `sequence`; zero-padded so key order is chain order."""
    return f"{sequence:016d}"


class ChainBroken(KagiError):
    """ChainBroken: the stored audit head does not match the record it names (the chain was tampered with).

    Nothing more is appended until an operator has looked: `kagi admin verify-audit` shows where it breaks.
    """

    reason = "AUDIT_CHAIN_BROKEN"


async def audit_records(store: KeyValueStore, *, page_size: int = 1000) -> AsyncIterator[AuditRecord]:
    """audit_records reads the whole chain from the store in sequence order, a page at a time."""
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
    """AuditReport is the verdict on the stored chain: ok with the record count, or the first bad record."""

    ok: bool
    checked: int
    bad_sequence: int | None = None
    problem: str = ""
    bad_record: AuditRecord | None = None


async def verify_stored_chain(store: KeyValueStore) -> AuditReport:
    """verify_stored_chain checks every stored record and that the chain ends at the stored head.

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


def _failed_index(exc: Exception) -> int | None:
    try:
        return int(getattr(exc, "metadata", {}).get("operation", ""))
    except ValueError:
        return None


def _settle(
    future: asyncio.Future[builtins.list[Entry | None]],
    *,
    result: builtins.list[Entry | None] | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or [])


def _fail(round_: Sequence[_Pending], exc: BaseException) -> None:
    for pending in round_:
        _settle(pending.future, error=exc)
