"""Retrying a read-decide-write unit of work when a concurrent writer wins the race for its records.

Every use case that reads records, decides, and writes them back with compare-and-swap has the same shape:
on a lost race (the store's VersionMismatch, or KeyExists for a create-if-absent) read again and decide
again, a bounded number of times, then give up with `ConcurrentChange` (ABORTED), which tells the caller
that retrying later will succeed. Write the unit once as a coroutine function and pass it here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from kagi.errors import ConcurrentChange
from kagi.store.base import KeyExists, VersionMismatch

T = TypeVar("T")

LOST_RACE_ATTEMPTS = 20
"""How many times a unit of work is read and decided again before the caller is told to retry."""

LostRace = VersionMismatch | KeyExists


async def retry_lost_races(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    on: tuple[type[Exception], ...] = (VersionMismatch,),
    attempts: int = LOST_RACE_ATTEMPTS,
) -> T:
    """Run ATTEMPT until it is not refused by a lost race (ON); raise ConcurrentChange naming WHAT after ATTEMPTS.

    ATTEMPT must re-read everything it decides on: a retry that reused a stale read would lose the race again.
    """
    for _ in range(attempts):
        try:
            return await attempt()
        except on:
            continue
    raise ConcurrentChange(f"{what} kept changing concurrently; retry")
