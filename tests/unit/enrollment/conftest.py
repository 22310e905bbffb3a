"""Fixtures for the enrollment's unit tests: a bank in memory (tests.unit.enrollment.harness) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.enrollment.harness import Bank, Customer, open_bank


@pytest.fixture
async def bank(tmp_path: Path) -> AsyncIterator[Bank]:
    """A fresh bank: the enrollment service over its own SQLite file, the CA, OTP and mail faked, time stopped."""
    opened = await open_bank(tmp_path)
    yield opened
    await opened.store.close()


@pytest.fixture
def customer(bank: Bank) -> Customer:
    """A customer of the bank with a new account."""
    return bank.customer()
