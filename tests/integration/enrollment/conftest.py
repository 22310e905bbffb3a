"""Fixtures for the enrollment tests: a running stack per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.enrollment_flow import Stack, open_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    running = await open_stack(tmp_path / "kagi")
    yield running
    await running.close()
    running.smtp.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "client"
    directory.mkdir()
    return directory
