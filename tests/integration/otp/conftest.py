"""Fixtures of the OTP service tests: a throwaway PKI with every role's identity, both store backends, and a
cluster of OTP servers on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from kagi.runtime.settings import TlsFiles
from tests.integration.otp.otp_grpc_support import NOW, ROLES, Backend, OtpCluster
from tests.support.tls import TestPki


@pytest.fixture(scope="session")
def otp_identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    """An internal certificate for every SPIFFE role, and a customer certificate that carries none."""
    pki = TestPki.create()
    base = tmp_path_factory.mktemp("otp-pki")
    files = {role: pki.write(base / role, role, pki.service(role), pki.internal) for role in ROLES}
    files["customer"] = pki.write(base / "customer", "customer", pki.customer_leaf("u1"), pki.customer)
    return files


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Backend:
    """Each store the service runs on: a SQLite file in a fresh directory, and the test run's real Redis."""
    if request.param == "sqlite":
        return Backend("sqlite", "sqlite:", tmp_path / "state", namespace)
    redis_url: str = request.getfixturevalue("redis_server")
    return Backend("redis", redis_url, tmp_path / "state", namespace)


@pytest.fixture
def clock() -> FakeClock:
    """A clock in the middle of a 60-second step that only moves when a test moves it."""
    return FakeClock(NOW)


@pytest.fixture
async def cluster(backend: Backend, otp_identities: dict[str, TlsFiles], clock: FakeClock) -> AsyncIterator[OtpCluster]:
    """No OTP server yet: tests start as many as they need on `backend`; all stop afterwards."""
    otp = OtpCluster(backend, otp_identities, clock)
    try:
        yield otp
    finally:
        await otp.close()
