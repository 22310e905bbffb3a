"""Failpoints: named places where a test can make a real process die, to prove that nothing half-done survives.

They are off unless `main` arms them from its settings (KAGI_FAILPOINTS, a comma-separated list of names), so
production never pays more than a set lookup. An armed failpoint ends the process at once, as a power cut or a
SIGKILL would: no cleanup, no flush, exit status 86.
"""

from __future__ import annotations

import os

import structlog

_armed: frozenset[str] = frozenset()
EXIT_STATUS = 86


def arm(names: str | None) -> None:
    """Enable the comma-separated failpoint names (empty or None disarms all)."""
    global _armed  # one process-wide switch, set once by main
    _armed = frozenset(n.strip() for n in (names or "").split(",") if n.strip())
    if _armed:
        structlog.get_logger("kagi.failpoints").warning("failpoints armed", names=sorted(_armed))


def failpoint(name: str) -> None:
    """End the process immediately when `name` is armed; otherwise it does nothing."""
    if name in _armed:
        os._exit(EXIT_STATUS)
