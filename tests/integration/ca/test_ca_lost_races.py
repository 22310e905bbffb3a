"""Lost races on a certificate record, on a real SQLite file and a real Redis: a revocation or renewal whose
compare-and-swap loses decides again on the state that won; one that keeps losing ends with ABORTED (reason
CONCURRENT_CHANGE) and changes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kagi.errors import ConcurrentChange, ErrorKind
from kagi.journal import Change
from kagi.runtime.identity import Role
from kagi.store.base import Entry, VersionMismatch
from services.ca_service.app.access import Actor
from services.ca_service.app.records import CertificateRecord
from services.ca_service.domain.identity import CustomerIdentity
from services.ca_service.domain.revocation import RevocationReason
from services.ca_service.main import CaRuntime
from tests.integration.ca.ca_service_harness import make_csr

OPERATOR = Actor("spiffe://kagi.internal/operator", Role.OPERATOR)


async def _issue(runtime: CaRuntime, user_id: str) -> CertificateRecord:
    identity = CustomerIdentity(
        user_id=user_id, login_id=f"login-{user_id}", user_name="Race Tester", company="Kagi Bank"
    )
    prepared = runtime.issuance.prepare(csr=make_csr(), identity=identity, profile="customer", actor=OPERATOR)
    return await runtime.issuance.issue(prepared, request_id="", actor=OPERATOR)


def _always_losing(monkeypatch: pytest.MonkeyPatch, runtime: CaRuntime) -> list[Change]:
    """Make every journal change that replaces a record lose its compare-and-swap; return the changes tried."""
    tried: list[Change] = []

    async def losing(change: Change) -> Sequence[Entry | None]:
        tried.append(change)
        raise VersionMismatch("the record changed")

    monkeypatch.setattr(runtime.journal, "submit", losing)
    return tried


async def test_a_revocation_that_loses_to_a_hold_decides_again_and_makes_it_final(
    runtime: CaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a keyCompromise revocation is being committed, another writer puts the certificate on hold first:
    the revocation's compare-and-swap loses, it reads the held record, and turns the hold into keyCompromise
    (changed: True) instead of failing."""
    issued = await _issue(runtime, "u-race-1")
    original = runtime.journal.submit
    tried: list[Change] = []

    async def racing(change: Change) -> Sequence[Entry | None]:
        tried.append(change)
        if len(tried) == 1:
            record, version = await runtime.revocation.issued_record(issued.serial_hex)
            hold = await runtime.revocation.plan(record, version, RevocationReason.CERTIFICATE_HOLD, OPERATOR)
            await original(Change(hold.operations, [hold.audit], [hold.feed]))
        return await original(change)

    monkeypatch.setattr(runtime.journal, "submit", racing)
    revoked, changed = await runtime.revocation.revoke(
        issued.serial_hex, RevocationReason.KEY_COMPROMISE, actor=OPERATOR
    )
    assert changed
    assert revoked.reason is RevocationReason.KEY_COMPROMISE
    assert len(tried) == 2
    assert (await runtime.revocation.get(issued.serial_hex)).reason is RevocationReason.KEY_COMPROMISE


async def test_a_revocation_that_keeps_losing_is_aborted(runtime: CaRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A revocation whose every commit loses is tried a bounded number of times, then ends with ConcurrentChange
    (ABORTED, CONCURRENT_CHANGE); the certificate is still good."""
    issued = await _issue(runtime, "u-race-2")
    tried = _always_losing(monkeypatch, runtime)
    with pytest.raises(ConcurrentChange) as failure:
        await runtime.revocation.revoke(issued.serial_hex, RevocationReason.KEY_COMPROMISE, actor=OPERATOR)
    assert (failure.value.kind, failure.value.reason) == (ErrorKind.ABORTED, "CONCURRENT_CHANGE")
    assert 1 < len(tried) <= 20
    monkeypatch.undo()
    answer = await runtime.revocation.status(issued.serial_hex, None)
    assert answer.record is not None
    assert answer.record.revoked_at is None


async def test_a_renewal_that_keeps_losing_is_aborted(runtime: CaRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal revoking its predecessor whose every commit loses ends with ConcurrentChange (ABORTED,
    CONCURRENT_CHANGE); the old certificate is still good and no new certificate is listed for the subject."""
    issued = await _issue(runtime, "u-race-3")
    tried = _always_losing(monkeypatch, runtime)
    with pytest.raises(ConcurrentChange) as failure:
        await runtime.issuance.renew(
            issued.serial_hex, make_csr(), revoke_previous=True, request_id="renew-race-3", actor=OPERATOR
        )
    assert (failure.value.kind, failure.value.reason) == (ErrorKind.ABORTED, "CONCURRENT_CHANGE")
    assert 1 < len(tried) <= 20
    monkeypatch.undo()
    old = await runtime.revocation.get(issued.serial_hex)
    assert old.revoked_at is None
    listed, _ = await runtime.revocation.list_certificates(
        subject_id="u-race-3", state=None, page_size=10, page_token=""
    )
    assert [record.serial_hex for record in listed] == [issued.serial_hex]
