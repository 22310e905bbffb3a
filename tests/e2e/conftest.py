"""Fixtures for the end-to-end tests: the real services and the gateway, started per test, and real clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from tests.integration.gateway.gateway_support import GatewayStack, open_gateway_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return CA, OTP and enrollment services with the gateway in front, on free loopback ports."""
    running = await open_gateway_stack(tmp_path)
    yield running
    await running.close()


@pytest.fixture
async def timed(tmp_path: Path) -> AsyncIterator[tuple[GatewayStack, FakeClock]]:
    """Return the same stack with the services on a FakeClock, so a test steps one-time-password windows."""
    clock = FakeClock(time.time())
    running = await open_gateway_stack(tmp_path, clock=clock)
    yield running, clock
    await running.close()
