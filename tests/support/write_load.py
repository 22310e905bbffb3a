"""A steady load of conditional writes for failover tests, and the check that nothing acknowledged was lost.

Each writer creates a new key, then moves its own counter on by compare-and-swap, again and again. A call that
raises StoreUnavailable may or may not have landed, as the store's contract says: the writer re-reads its
counter (as a caller would) and goes on. Anything but StoreUnavailable is recorded as unexpected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kagi.store import Entry, KeyValueStore, StoreUnavailable, VersionMismatch


@dataclass
class WriteLoad:
    """Writers on one store: what they got acknowledged, and how calls failed."""

    store: KeyValueStore
    acked: set[str] = field(default_factory=set)
    counters: dict[int, int] = field(default_factory=dict)
    unavailable: int = 0
    unexpected: list[BaseException] = field(default_factory=list)
    stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, writers: int) -> None:
        """Start WRITERS writer tasks."""
        self._tasks = [asyncio.create_task(self._writer(n)) for n in range(writers)]

    async def stop(self) -> None:
        """Stop the writers and wait for them."""
        self.stopping = True
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def until_acked(self, count: int, within: float) -> None:
        """Wait until COUNT writes in all were acknowledged; fail after WITHIN seconds."""
        await until(lambda: len(self.acked) >= count, f"{count} acknowledged writes", within)

    async def lost(self) -> list[str]:
        """Return what was acknowledged and is not there: keys, and counters below their acknowledged value."""
        missing = [key for key in sorted(self.acked) if await self.store.get("writes", key) is None]
        for number, value in self.counters.items():
            found = await self.store.get("counters", f"w{number}")
            if found is None or int(found.value) < value:  # an unacknowledged CAS may have landed too, never less
                missing.append(f"counter w{number} (acknowledged {value}, found {found})")
        return missing

    async def _read(self, key: str) -> Entry | None:
        while not self.stopping:
            try:
                return await self.store.get("counters", key)
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        return None

    async def _writer(self, number: int) -> None:
        counter = f"w{number}"
        while True:
            try:
                entry = await self.store.create("counters", counter, b"0")
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        self.counters[number] = 0
        i = 0
        while not self.stopping:
            i += 1
            key = f"w{number}-{i}"
            try:
                await self.store.create("writes", key, b"x")
                self.acked.add(key)
                value = int(entry.value) + 1
                entry = await self.store.compare_and_swap(
                    "counters", counter, str(value).encode(), version=entry.version
                )
                self.counters[number] = value
            except StoreUnavailable:
                self.unavailable += 1
                found = await self._read(counter)  # the CAS may have landed without its acknowledgement
                if found is None:
                    return
                entry = found
                await asyncio.sleep(0.05)
            except VersionMismatch as exc:  # a write applied twice, or one lost
                self.unexpected.append(exc)
                return
            except Exception as exc:
                self.unexpected.append(exc)
                await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool], what: str, within: float) -> None:
    """Poll CONDITION on the event loop until it holds; fail naming WHAT after WITHIN seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.1)
