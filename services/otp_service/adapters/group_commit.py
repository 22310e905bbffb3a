"""A KeyValueStore wrapper that sends concurrent `commit` calls to the store together, as one atomic commit per round.

Why: each verification ends in one small conditional commit. Sent one by one, every commit is one Redis round
trip (a socket write, a wake-up, a reply to parse) or, on SQLite, one fsync. Grouped, a burst of verifications of
different tokens shares one round: one EVALSHA, or one transaction and one fsync.

How: a commit that arrives while no round is in flight goes out at once, alone (no timer, so a lone request
pays no delay); commits that arrive meanwhile wait and go out together in the next round. Semantics stay
those of the wrapped store, per caller:

- A caller's operations land all together or not at all (they are never split across rounds).
- A failed condition (KeyExists, VersionMismatch) fails only the caller that owns the failing operation: the
  drivers name the failing operation's index, and the round is retried without that caller.
- Two callers that name the same key never share a round (the later waits for the next one), so their
  conditions are judged one after the other exactly as without grouping.
- Any other failure (StoreUnavailable...) fails every caller of the round: none of it was written.

Reads and single-key writes pass straight through. One instance belongs to one event loop.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field

from kagi.store.base import (
    Entry,
    KeyExists,
    KeyValueStore,
    Operation,
    Page,
    VersionMismatch,
    check_commit,
)

MAX_ROUND_OPERATIONS = 256
"""MAX_ROUND_OPERATIONS bounds the operations of one round (a Lua script's size, a transaction's length)."""


@dataclass(eq=False)
class _Unit:
    ops: list[Operation]
    future: asyncio.Future[list[Entry | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def keys(self) -> set[tuple[str, str]]:
        return {(op.collection, op.key) for op in self.ops}


class GroupCommitStore(KeyValueStore):
    """GroupCommitStore forwards to `inner` and groups concurrent `commit` calls into rounds (module docstring)."""

    def __init__(self, inner: KeyValueStore, *, max_operations: int = MAX_ROUND_OPERATIONS) -> None:
        self.inner = inner
        self._max = max_operations
        self._queue: list[_Unit] = []
        self._busy = False  # a round is in flight (sent by a lone caller itself, or by the draining task)
        self._draining: asyncio.Task[None] | None = None

    async def get(self, collection: str, key: str) -> Entry | None:
        """Get reads through."""
        return await self.inner.get(collection, key)

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Create writes through."""
        return await self.inner.create(collection, key, value, ttl=ttl)

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Compare_and_swap writes through."""
        return await self.inner.compare_and_swap(collection, key, value, version=version, ttl=ttl)

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Delete writes through."""
        return await self.inner.delete(collection, key, version=version)

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Increment writes through."""
        return await self.inner.increment(collection, key, amount, ttl=ttl)

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """List reads through."""
        return await self.inner.list(collection, page_size=page_size, page_token=page_token)

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Commit applies all operations atomically, or none, in the next round shared with concurrent commits."""
        ops = check_commit(operations)  # a malformed commit fails here, never inside a shared round
        if not ops:
            return []
        if not self._busy:
            # Nothing in flight: go now, alone and without a task switch (the common case at low load).
            self._busy = True
            try:
                return await self.inner.commit(ops)
            finally:
                self._hand_over()
        unit = _Unit(ops)
        self._queue.append(unit)
        return await unit.future

    async def ping(self) -> None:
        """Ping asks the wrapped store."""
        await self.inner.ping()

    async def close(self) -> None:
        """Close lets queued rounds finish, then closes the wrapped store."""
        if self._draining is not None:
            await asyncio.gather(self._draining, return_exceptions=True)
        await self.inner.close()

    def _hand_over(self) -> None:
        """After a round: the commits that queued meanwhile go next, together, from a task of their own."""
        if self._queue:
            self._draining = asyncio.create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._queue:
                round_units = self._next_round()
                if round_units:
                    await self._commit_round(round_units)
        finally:
            self._busy = False  # the loop saw an empty queue with no await since: nobody is left waiting

    def _next_round(self) -> builtins.list[_Unit]:
        """Take, in arrival order, the waiting units whose keys are disjoint, up to the operation bound."""
        taken: builtins.list[_Unit] = []
        keys: set[tuple[str, str]] = set()
        count = 0
        waiting: builtins.list[_Unit] = []
        for unit in self._queue:
            if unit.future.done():  # its caller was cancelled: nothing is owed to anyone
                continue
            unit_keys = unit.keys
            fits = count + len(unit.ops) <= self._max or not taken
            if fits and not keys & unit_keys:
                taken.append(unit)
                keys |= unit_keys
                count += len(unit.ops)
            else:
                waiting.append(unit)
        self._queue = waiting
        return taken

    async def _commit_round(self, units: builtins.list[_Unit]) -> None:
        while units:
            ops = [op for unit in units for op in unit.ops]
            try:
                entries = await self.inner.commit(ops)
            except (KeyExists, VersionMismatch) as exc:
                culprit = self._owner(units, exc)
                if culprit is None:  # the driver did not say which operation failed: fail the round
                    _fail(units, exc)
                    return
                _fail([culprit], exc)
                units = [u for u in units if u is not culprit and not u.future.done()]
                continue
            except BaseException as exc:
                _fail(units, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            offset = 0
            for unit in units:
                if not unit.future.done():
                    unit.future.set_result(entries[offset : offset + len(unit.ops)])
                offset += len(unit.ops)
            return

    @staticmethod
    def _owner(units: builtins.list[_Unit], exc: KeyExists | VersionMismatch) -> _Unit | None:
        try:
            index = int(exc.metadata.get("operation", ""))
        except ValueError:
            return None
        for unit in units:
            if index < len(unit.ops):
                return unit
            index -= len(unit.ops)
        return None


def _fail(units: builtins.list[_Unit], exc: BaseException) -> None:
    for unit in units:
        if not unit.future.done():
            unit.future.set_exception(exc)
