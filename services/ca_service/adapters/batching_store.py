"""A KeyValueStore wrapper that group-commits concurrent single-key writes into one atomic `commit` each round.

Why: with SQLite every commit is one fsync and with Redis one round trip plus redis-py's per-call CPU, so
the CA's hot path (idempotency claims, serial reservations) would be bound by the number of writes rather than
by work. Here a write that arrives while a commit is in flight waits for the next round, which carries every
write queued meanwhile: no timer, so a lone write goes out at once and a burst shares one commit.

Semantics are the wrapped store's, per call: a failed condition (KeyExists, VersionMismatch) fails only its
own caller, because the driver names the failing operation and the round is retried without it; two writes
to one key never share a round (the later waits for the next); an unavailable store fails the whole round.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from kagi.store.base import (
    Create,
    Delete,
    Entry,
    KeyExists,
    KeyValueStore,
    Operation,
    Page,
    Replace,
    StoreError,
    VersionMismatch,
    check_collection,
    check_operation,
)

MAX_BATCH = 256
"""MAX_BATCH is the most writes one round commits (bounds a Lua script's size and a transaction's length)."""


@dataclass(eq=False)
class _Write:
    op: Operation
    future: asyncio.Future[Entry | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def slot(self) -> tuple[str, str]:
        return self.op.collection, self.op.key


class BatchingStore(KeyValueStore):
    """BatchingStore forwards reads to `inner` and coalesces create, compare-and-swap and delete calls.

    `commit` and `increment` pass straight through (a multi-key commit is already one round). One instance
    belongs to one event loop.
    """

    def __init__(self, inner: KeyValueStore, *, max_batch: int = MAX_BATCH) -> None:
        self._inner = inner
        self._max_batch = max_batch
        self._queue: list[_Write] = []
        self._runner: asyncio.Task[None] | None = None

    @property
    def inner(self) -> KeyValueStore:
        """Inner is the wrapped store."""
        return self._inner

    def __repr__(self) -> str:
        return f"BatchingStore({self._inner!r})"

    async def get(self, collection: str, key: str) -> Entry | None:
        """Get reads straight from the wrapped store."""
        return await self._inner.get(collection, key)

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Create joins the next round as a create-if-absent."""
        return cast(Entry, await self._submit(Create(collection, key, value, ttl)))

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Compare_and_swap joins the next round as a conditional replace."""
        return cast(Entry, await self._submit(Replace(collection, key, value, version, ttl)))

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Delete joins the next round; it reports True when an entry was there to remove.

        A batched delete cannot tell "removed" from "was absent" (commit returns None for both), so an
        unconditional delete is sent on its own; a versioned one succeeding proves the entry was there.
        """
        if version is None:
            return await self._inner.delete(collection, key)
        await self._submit(Delete(collection, key, version))
        return True

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Increment passes straight through."""
        return await self._inner.increment(collection, key, amount, ttl=ttl)

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """List passes straight through."""
        return await self._inner.list(collection, page_size=page_size, page_token=page_token)

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Commit passes straight through: it is one atomic round already."""
        return await self._inner.commit(operations)

    async def ping(self) -> None:
        """Ping passes straight through."""
        await self._inner.ping()

    async def close(self) -> None:
        """Close waits for the round in flight, then closes the wrapped store."""
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._runner)
        await self._inner.close()

    async def _submit(self, op: Operation) -> Entry | None:
        # A malformed write must fail its caller here, never a whole round. Short printable-ASCII keys (all
        # the CA writes) pass check_key by construction; its per-character scan is worth skipping for them.
        key = op.key
        if 0 < len(key) <= 256 and key.isascii() and key.isprintable():
            check_collection(op.collection)
        else:
            check_operation(op)
        write = _Write(op)
        self._queue.append(write)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._drain())
        return await write.future

    async def _drain(self) -> None:
        while self._queue:
            batch: builtins.list[_Write] = []
            later: builtins.list[_Write] = []
            slots: set[tuple[str, str]] = set()
            for write in self._queue:
                if write.future.done():  # its caller was cancelled: drop it
                    continue
                if len(batch) >= self._max_batch or write.slot in slots:
                    later.append(write)
                else:
                    batch.append(write)
                    slots.add(write.slot)
            self._queue = later
            await self._commit_round(batch)

    async def _commit_round(self, batch: builtins.list[_Write]) -> None:
        while batch:
            try:
                results = await self._inner.commit([write.op for write in batch])
            except (KeyExists, VersionMismatch) as exc:
                failed = _failed_index(exc, len(batch))
                if failed is None:
                    _fail_all(batch, exc)
                    return
                _settle(batch.pop(failed).future, error=exc)
                continue  # the others' conditions were not the problem: commit them without it
            except BaseException as exc:
                _fail_all(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for write, result in zip(batch, results, strict=True):
                _settle(write.future, result=result)
            return


def _failed_index(exc: StoreError, size: int) -> int | None:
    try:
        index = int(getattr(exc, "metadata", {}).get("operation", ""))
    except ValueError:
        return None
    return index if 0 <= index < size else None


def _settle(
    future: asyncio.Future[Entry | None], *, result: Entry | None = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _fail_all(batch: Sequence[_Write], exc: BaseException) -> None:
    for write in batch:
        _settle(write.future, error=exc)
