"""Group commit: concurrent conditional writes to one store share one atomic `commit` per round.

Why: with SQLite every commit is one fsync, and with Redis one round trip plus redis-py's per-call CPU, so a
hot path of small conditional writes (idempotency claims, serial reservations, OTP verifications, journal
changes) would be bound by the number of commits rather than by work. Grouped, a burst shares one commit.

How: callers submit units, each a list of operations that must land all together or not at all (one
single-key write is a unit of one). A unit that finds no round in flight goes at once, alone, in its
caller's own task (no timer, so a lone caller pays no delay and no task switch; an engine made with
`inline=False` sends it from its own task instead); units that arrive while a round is in flight queue,
and the next round takes them together, in arrival order, once the callers the last round woke have had a
pass or two of the event loop to queue their next writes. Per unit, the semantics stay those of the store:

- A unit's operations are never split across rounds.
- Two units naming one key never share a round (the later one waits for a later round), so their conditions
  are judged one after the other, in arrival order, exactly as without grouping.
- A round keeps to one placement group (the store's `placement`), since a commit may not span groups. Without
  a planner, units of different groups go in separate rounds sent at the same time (up to
  `MAX_PARALLEL_ROUNDS`: they touch disjoint keys, so their order does not matter), so spreading a service's
  keys by aggregate does not serialise its writes; with a planner, one round at a time, the others wait. A
  unit whose own operations span groups fails alone, at once.
- A round carries at most `max_operations` operations (a Lua script's size, a transaction's length); a unit
  larger than that goes alone.
- A failed condition (KeyExists, VersionMismatch) fails only the unit that owns the failing operation, with
  the error re-indexed to that unit's own operations; the round is retried without it.
- Any other error (StoreUnavailable...) fails every unit of the round: none of it was written.
- A unit whose caller was cancelled before its round is dropped; nothing is owed to anyone.

A `RoundPlanner` may add operations of its own to every round (the journal's audit records, chain-head
compare-and-swap and feed events) and decide what happens when one of those fails: a failed condition on an
operation no unit owns is the planner's to handle (re-read and re-plan, a bounded number of times). The
planner's operations must be in the round's placement group (the journal's are service-wide, so the units it
plans for must be too).

`GroupCommitStore` is the store adapter: a KeyValueStore whose conditional writes join rounds. One engine
belongs to one event loop.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from kagi.store.base import (
    ConditionFailed,
    Create,
    Delete,
    Entry,
    KeyValueStore,
    Operation,
    Page,
    Placement,
    Replace,
    check_collection,
    check_commit,
    check_operation,
    check_value,
    ttl_millis,
)

MAX_ROUND_OPERATIONS = 256
"""The most operations one round carries by default (bounds a Lua script's size and a transaction's length)."""

MAX_PARALLEL_ROUNDS = 16
"""The most rounds of different placement groups one engine without a planner has in flight at once."""

_SETTLE_PASSES = 3
"""The most passes of the event loop a round waits for the callers the previous round woke."""

T = TypeVar("T")

_Key = tuple[str, str]


@dataclass(eq=False, slots=True)
class _Unit(Generic[T]):
    operations: list[Operation]
    payload: T
    size: int
    keys: frozenset[_Key]
    group: str
    future: asyncio.Future[list[Entry | None]]


class RoundPlanner(Generic[T]):
    """Operations a round carries besides its units', and what to do when one of them fails.

    The engine calls `plan` before every attempt at a round, then exactly one of `landed` (the commit
    succeeded), `lost` (a condition failed on one of the planner's own operations) or `abandoned` (the round
    failed as a whole). Rounds of one engine never overlap, so a planner may keep state between the calls.
    This base class adds nothing and gives up on every failure.
    """

    async def plan(self, payloads: Sequence[T]) -> Sequence[Operation]:
        """Return the operations to commit after the units' own, given the round's payloads in order."""
        return ()

    def landed(self, entries: Sequence[Entry | None]) -> None:
        """Take note that the round committed; ENTRIES are the results of the planned operations."""

    async def lost(self, error: ConditionFailed, attempt: int) -> bool:
        """Say whether to plan the round again after ERROR failed a planned operation (ATTEMPT counts from 1)."""
        return False

    def abandoned(self, error: BaseException) -> None:
        """Take note that the round failed as a whole with ERROR (it may or may not have been written)."""


class GroupCommit(Generic[T]):
    """The group-commit engine: units of operations submitted concurrently share `commit` rounds on STORE.

    T is what a unit carries for the planner (the journal's Change); None when there is no planner. With
    `inline` (the default) a lone caller's round runs in the caller's own task, and cancelling that caller
    cancels its round; without, every round runs in the engine's task, whatever becomes of its callers.
    """

    def __init__(
        self,
        store: KeyValueStore,
        planner: RoundPlanner[T] | None = None,
        *,
        max_operations: int = MAX_ROUND_OPERATIONS,
        max_units: int | None = None,
        inline: bool = True,
    ) -> None:
        if max_operations < 1 or (max_units is not None and max_units < 1):
            raise ValueError("a round must be able to carry at least one unit")
        self._store = store
        self._planner = planner
        self._max_operations = max_operations
        self._max_units = max_units
        self._inline = inline
        self._queue: list[_Unit[T]] = []
        # A round is in flight (sent by a lone caller in its own task, or by the draining task) or queued.
        self._busy = False
        self._draining: asyncio.Task[None] | None = None
        self._idle: list[asyncio.Future[None]] = []

    async def submit(
        self, operations: Sequence[Operation], payload: T, *, size: int | None = None
    ) -> builtins.list[Entry | None]:
        """Commit OPERATIONS, all or none, in the next round; return the entries they wrote (None for deletes).

        SIZE is what the unit counts against the round's operation bound (default: its operation count; the
        journal adds the audit records and feed events it brings). A malformed unit fails here, alone.
        """
        ops = _checked(operations)
        group = self._store.placement.group_of(ops)
        loop = asyncio.get_running_loop()
        keys = frozenset((op.collection, op.key) for op in ops)
        unit = _Unit(ops, payload, len(ops) if size is None else size, keys, group, loop.create_future())
        if not self._busy and self._inline:
            # Nothing in flight: go now, alone and without a task switch (the common case at low load).
            self._busy = True
            try:
                await self._commit_round([unit])
            finally:
                self._hand_over()
            return unit.future.result()
        self._queue.append(unit)
        if not self._busy:
            self._busy = True
            self._draining = loop.create_task(self._drain())
        return await unit.future

    async def close(self) -> None:
        """Wait until no round is in flight or queued."""
        while self._busy:
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter

    def _hand_over(self) -> None:
        """Send the units that queued during a lone caller's round next, together, from a task of their own."""
        if self._queue:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._set_idle()

    async def _drain(self) -> None:
        try:
            carried = 0
            while self._queue:
                rounds = self._next_rounds()
                if len(rounds) == 1:
                    await self._commit_round(rounds[0])
                elif rounds:
                    await asyncio.gather(*(self._commit_round(units) for units in rounds))
                if rounds:
                    carried = sum(len(units) for units in rounds)
                # The callers a round woke come back with their next writes within a pass or two of the event
                # loop. Waiting for them (a few passes at most, no timer) keeps a burst in one round; sent at
                # once, the first of them would go alone and the burst would stay split in two for good.
                for _ in range(_SETTLE_PASSES):
                    if len(self._queue) >= carried:
                        break
                    await asyncio.sleep(0)
        finally:
            # Normally the loop saw an empty queue with no await since; if this task was cancelled instead,
            # the units still queued would wait forever.
            for unit in self._queue:
                unit.future.cancel()
            self._queue = []
            self._draining = None
            self._set_idle()

    def _set_idle(self) -> None:
        self._busy = False
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _next_rounds(self) -> builtins.list[builtins.list[_Unit[T]]]:
        """Take, in arrival order, waiting units with disjoint keys into rounds of one placement group each, up
        to each round's bounds: one round (the first unit's group) with a planner, whose rounds never overlap;
        without, up to `MAX_PARALLEL_ROUNDS` rounds of different groups, which touch disjoint keys."""
        rounds: dict[str, builtins.list[_Unit[T]]] = {}
        counts: dict[str, int] = {}
        waiting: builtins.list[_Unit[T]] = []
        keys: set[_Key] = set()
        # Keys of units left waiting: a later unit on one of them must not overtake it.
        deferred: set[_Key] = set()
        max_units = self._max_units
        max_rounds = 1 if self._planner is not None else MAX_PARALLEL_ROUNDS
        for unit in self._queue:
            if unit.future.done():  # its caller was cancelled: nothing is owed to anyone
                continue
            taken = rounds.get(unit.group)
            count = counts.get(unit.group, 0)
            full = taken is not None and (
                count + unit.size > self._max_operations or (max_units is not None and len(taken) >= max_units)
            )
            no_round = taken is None and len(rounds) >= max_rounds
            if full or no_round or not keys.isdisjoint(unit.keys) or not deferred.isdisjoint(unit.keys):
                waiting.append(unit)
                deferred |= unit.keys
            else:
                rounds.setdefault(unit.group, []).append(unit)
                keys |= unit.keys
                counts[unit.group] = count + unit.size
        self._queue = waiting
        return list(rounds.values())

    async def _commit_round(self, units: builtins.list[_Unit[T]]) -> None:
        planner = self._planner
        lost = 0
        while units:
            owned = 0
            try:
                planned = await planner.plan([unit.payload for unit in units]) if planner is not None else ()
                ops = [op for unit in units for op in unit.operations]
                owned = len(ops)
                if planned:
                    ops.extend(planned)
                entries = await self._store.commit(ops)
            except ConditionFailed as exc:
                error: ConditionFailed = exc
            except BaseException as exc:
                if planner is not None:
                    planner.abandoned(exc)
                _fail(units, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            else:
                if planner is not None:
                    planner.landed(entries[owned:])
                start = 0
                for unit in units:
                    end = start + len(unit.operations)
                    if not unit.future.done():
                        unit.future.set_result(entries[start:end])
                    start = end
                return

            failed = error.failed
            if failed is not None and 0 <= failed.index < owned:
                # A unit's own condition: fail that unit alone; the others' conditions were not the problem.
                start = 0
                for unit in units:
                    end = start + len(unit.operations)
                    if failed.index < end:
                        if not unit.future.done():
                            unit.future.set_exception(error.at(failed.index - start))
                        break
                    start = end
                units = [unit for unit in units if not unit.future.done()]
                continue
            lost += 1
            retry = False
            if failed is not None and planner is not None:
                try:
                    retry = await planner.lost(error, lost)
                except BaseException as exc:
                    planner.abandoned(exc)
                    _fail(units, exc)
                    if not isinstance(exc, Exception):
                        raise
                    return
            if not retry:
                # The driver named no operation, or the planner gives up: nobody can be singled out.
                if planner is not None:
                    planner.abandoned(error)
                _fail(units, error)
                return
            units = [unit for unit in units if not unit.future.done()]


def _fail(units: Sequence[_Unit[T]], exc: BaseException) -> None:
    for unit in units:
        if unit.future.done():
            continue
        if isinstance(exc, Exception):
            unit.future.set_exception(exc)
        else:
            unit.future.cancel()  # cancellation or shutdown: the caller learns it from its own task


def _checked(operations: Sequence[Operation]) -> builtins.list[Operation]:
    """Validate one unit, so that a malformed one fails its caller and never a shared round."""
    if len(operations) == 1:
        # One write (all of the CA's and the ledger's single-key calls) needs no duplicate check, and a short
        # printable-ASCII key, as theirs all are, needs none of check_key's per-character checks.
        op = operations[0]
        key = op.key
        if isinstance(key, str) and 0 < len(key) <= 256 and key.isascii() and key.isprintable():
            check_collection(op.collection)
            if not isinstance(op, Delete):
                check_value(op.value)
        else:
            check_operation(op)
        ops = [op]
    else:
        ops = check_commit(operations)
    for op in ops:
        # A TTL the driver would refuse must not sink the round: check what the driver checks.
        if not isinstance(op, Delete) and op.ttl is not None:
            ttl_millis(op.ttl)
    return ops


class GroupCommitStore(KeyValueStore):
    """A KeyValueStore whose conditional writes share rounds on INNER (see the module docstring).

    `create`, `compare_and_swap`, a versioned `delete` and `commit` join rounds; reads, `increment`, `list`
    and an unconditional `delete` go straight to INNER.
    """

    def __init__(self, inner: KeyValueStore, *, max_operations: int = MAX_ROUND_OPERATIONS) -> None:
        self.inner = inner
        self._rounds: GroupCommit[None] = GroupCommit(inner, max_operations=max_operations)

    def __repr__(self) -> str:
        return f"GroupCommitStore({self.inner!r})"

    @property
    def placement(self) -> Placement:
        """Return INNER's placement (a round never mixes two of its groups)."""
        return self.inner.placement

    async def get(self, collection: str, key: str) -> Entry | None:
        """Return the live entry under the key from INNER, or None."""
        return await self.inner.get(collection, key)

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Write a new entry in the next round if none is live under the key; otherwise raise KeyExists."""
        (entry,) = await self._rounds.submit([Create(collection, key, value, ttl)], None)
        return cast(Entry, entry)

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Replace the entry in the next round if it is at VERSION; otherwise raise VersionMismatch."""
        (entry,) = await self._rounds.submit([Replace(collection, key, value, version, ttl)], None)
        return cast(Entry, entry)

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Remove the entry (only at VERSION when given) and say whether one was removed.

        A commit cannot tell "removed" from "was absent" (it returns None for both), so an unconditional
        delete goes to INNER on its own; a versioned one joins a round, and succeeding proves the entry was there.
        """
        if version is None:
            return await self.inner.delete(collection, key)
        await self._rounds.submit([Delete(collection, key, version)], None)
        return True

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add AMOUNT to a counter on INNER and return the new value."""
        return await self.inner.increment(collection, key, amount, ttl=ttl)

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """Return one page of a collection's durable entries from INNER."""
        return await self.inner.list(collection, page_size=page_size, page_token=page_token)

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Apply all operations atomically, or none, in the next round shared with concurrent writes."""
        if not operations:
            return []
        return await self._rounds.submit(operations, None)

    async def ping(self) -> None:
        """Return when INNER answers."""
        await self.inner.ping()

    async def close(self) -> None:
        """Let the queued rounds finish, then close INNER."""
        await self._rounds.close()
        await self.inner.close()
