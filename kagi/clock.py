"""Time as an injectable dependency: the system clock for production, a settable one for tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Gives the current time as POSIX seconds; everything that expires or counts windows takes one."""

    def now(self) -> float: ...


class SystemClock:
    """Reads the wall clock."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """Stands still until a test moves it, so no test ever sleeps out a window."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self._now += seconds

    def set(self, when: float) -> None:
        """Put the clock at `when` (POSIX seconds)."""
        self._now = when


def utc_datetime(clock: Clock) -> datetime:
    """Return the clock's reading as an aware UTC datetime."""
    return datetime.fromtimestamp(clock.now(), tz=UTC)
