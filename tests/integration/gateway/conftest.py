"""Fixtures for the gateway's integration tests: the real services and the gateway, started per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.gateway.gateway_support import GatewayStack, open_gateway_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return CA, OTP and enrollment services with the gateway in front, on free loopback ports."""
    running = await open_gateway_stack(tmp_path)
    yield running
    await running.close()
