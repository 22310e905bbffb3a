"""Fixtures for the front-end boundary's tests: the services on a fake clock (one-time-password windows are
stepped, never slept out), with `kagi admin` pointed at them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from tests.support.enrollment_flow import Stack
from tests.support.frontend import running_stack


@pytest.fixture
def clock() -> FakeClock:
    """Return the services' clock: the real time at the start, then moved only by the test."""
    return FakeClock(time.time())


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """Hold the stack's CA, stores and credential (kagi admin --state-dir)."""
    return tmp_path / "kagi"


@pytest.fixture
async def stack(state_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """Return CA, OTP and enrollment over mTLS on `clock` with real SMTP; `kagi admin` reaches it."""
    async with running_stack(state_dir, clock) as running:
        for name in ("ca", "otp", "enrollment"):
            monkeypatch.setenv(f"KAGI_{name.upper()}_TARGET", running.targets[name])
        yield running


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Return the client's side: keys, CSRs and credentials it writes."""
    directory = tmp_path / "client"
    directory.mkdir()
    return directory
