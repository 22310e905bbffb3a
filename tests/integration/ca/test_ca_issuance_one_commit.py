"""An issuance is one store commit, after signing, on a real SQLite file and a real Redis: the certificate, its
indexes, its request-id entry and its audit record land together or not at all; a serial drawn twice is signed
again under a new one; the request-id entry is IssueCertificate's idempotency (same request: same certificate;
other content: REQUEST_ID_REUSED; another caller: another entry); a certificate whose commit failed is never
returned."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from kagi.ca.v1 import ca_pb2
from kagi.errors import InvalidArgument
from kagi.journal import Change, verify_stored_chain
from kagi.runtime.grpc_client import error_from_rpc
from kagi.runtime.identity import Role
from kagi.store.base import StoreUnavailable
from services.ca_service.app.access import Actor
from services.ca_service.app.records import CertificateRecord
from services.ca_service.domain.identity import CustomerIdentity
from services.ca_service.domain.issuance import PreparedIssuance
from services.ca_service.main import CaRuntime
from tests.integration.ca.ca_service_harness import RunningCa, issue_request, make_csr, verify_audit

ENROLLMENT = Actor("spiffe://kagi.internal/enrollment", Role.ENROLLMENT)
OPERATOR = Actor("spiffe://kagi.internal/operator", Role.OPERATOR)


def _prepare(runtime: CaRuntime, user_id: str, actor: Actor = ENROLLMENT) -> PreparedIssuance:
    identity = CustomerIdentity(user_id=user_id, login_id=f"l-{user_id}", user_name="One Commit", company="Kagi Bank")
    return runtime.issuance.prepare(csr=make_csr(), identity=identity, profile="customer", actor=actor)


def _count(monkeypatch: pytest.MonkeyPatch, store: object, names: list[str]) -> dict[str, int]:
    """Count the calls of the store's methods NAMES (they still run)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original: Callable[..., Awaitable[Any]] = getattr(store, name)

        async def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls[_name] += 1
            return await _original(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)
    return calls


async def test_an_issuance_with_a_request_id_is_one_commit_and_nothing_else(
    runtime: CaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the chain head is known, an issuance with a request id touches the store exactly once: one commit
    (certificate, indexes, request-id entry, audit record, chain head), no read, no reservation, no ledger."""
    await runtime.issuance.issue(_prepare(runtime, "u-warm"), request_id="warm-up", actor=ENROLLMENT)
    calls = _count(monkeypatch, runtime.store, ["commit", "create", "compare_and_swap", "get", "delete"])
    issued = await runtime.issuance.issue(
        _prepare(runtime, "u-one"), request_id="one-commit", actor=ENROLLMENT, fingerprint="fp-1"
    )
    assert calls == {"commit": 1, "create": 0, "compare_and_swap": 0, "get": 0, "delete": 0}
    monkeypatch.undo()
    assert (await runtime.revocation.get(issued.serial_hex)).certificate_pem == issued.certificate_pem
    assert (await verify_stored_chain(runtime.store)).ok


async def test_a_serial_drawn_twice_is_signed_again_under_a_new_one(runtime: CaRuntime) -> None:
    """An issuance whose serial is recorded already (2^-159 odds, forced here) fails its commit on the certificate
    key, draws a new serial and signs again; the certificate first recorded under the serial is untouched."""
    first = await runtime.issuance.issue(_prepare(runtime, "u-first"), request_id="", actor=ENROLLMENT)
    colliding = dataclasses.replace(_prepare(runtime, "u-second"), serial=first.serial)
    second = await runtime.issuance.issue(colliding, request_id="collide-1", actor=ENROLLMENT, fingerprint="fp")
    assert second.serial != first.serial
    assert second.subject_id == "u-second"
    assert (await runtime.revocation.get(first.serial_hex)).certificate_pem == first.certificate_pem
    assert (await runtime.revocation.get(second.serial_hex)).certificate_pem == second.certificate_pem
    listed, _ = await runtime.revocation.list_certificates(
        subject_id="u-second", state=None, page_size=10, page_token=""
    )
    assert [record.serial_hex for record in listed] == [second.serial_hex]


async def test_a_retry_gets_the_recorded_certificate_and_other_content_is_refused(runtime: CaRuntime) -> None:
    """The same request id and fingerprint answer the certificate recorded first (nothing new is recorded); the
    same id with another fingerprint is REQUEST_ID_REUSED naming request_id; another caller's same id is its own."""
    first = await runtime.issuance.issue(
        _prepare(runtime, "u-retry"), request_id="retry-1", actor=ENROLLMENT, fingerprint="fp-a"
    )
    again = await runtime.issuance.issue(
        _prepare(runtime, "u-retry"), request_id="retry-1", actor=ENROLLMENT, fingerprint="fp-a"
    )
    assert again == first
    with pytest.raises(InvalidArgument) as reused:
        await runtime.issuance.issue(
            _prepare(runtime, "u-retry"), request_id="retry-1", actor=ENROLLMENT, fingerprint="fp-b"
        )
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert "request_id" in reused.value.fields
    other = await runtime.issuance.issue(
        _prepare(runtime, "u-retry", OPERATOR), request_id="retry-1", actor=OPERATOR, fingerprint="fp-b"
    )
    assert other.serial != first.serial
    listed, _ = await runtime.revocation.list_certificates(
        subject_id="u-retry", state=None, page_size=10, page_token=""
    )
    assert sorted(record.serial_hex for record in listed) == sorted([first.serial_hex, other.serial_hex])


async def test_concurrent_calls_with_one_request_id_record_one_certificate(runtime: CaRuntime) -> None:
    """Ten concurrent calls with one request id and fingerprint all answer the one certificate recorded; one
    concurrent call with other content under the same id is REQUEST_ID_REUSED."""
    same = [
        runtime.issuance.issue(_prepare(runtime, "u-race"), request_id="race-1", actor=ENROLLMENT, fingerprint="fp")
        for _ in range(10)
    ]
    other = runtime.issuance.issue(
        _prepare(runtime, "u-race"), request_id="race-1", actor=ENROLLMENT, fingerprint="fp-other"
    )
    results = await asyncio.gather(*same, other, return_exceptions=True)
    records = [r for r in results if isinstance(r, CertificateRecord)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len({record.serial for record in records}) == 1
    assert len(records) >= 10
    assert all(isinstance(e, InvalidArgument) and e.reason == "REQUEST_ID_REUSED" for e in errors)
    listed, _ = await runtime.revocation.list_certificates(subject_id="u-race", state=None, page_size=20, page_token="")
    assert [record.serial for record in listed] == [records[0].serial]


async def test_a_certificate_whose_commit_failed_is_never_returned(
    runtime: CaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the commit recording a signed certificate fails, the issuance fails: no certificate is returned,
    none is recorded, and a retry with the request id issues afresh."""
    tried: list[Change] = []

    async def unavailable(change: Change) -> list[object]:
        tried.append(change)
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(runtime.journal, "submit", unavailable)
    with pytest.raises(StoreUnavailable):
        await runtime.issuance.issue(_prepare(runtime, "u-down"), request_id="down-1", actor=ENROLLMENT)
    assert len(tried) == 1
    monkeypatch.undo()
    listed, _ = await runtime.revocation.list_certificates(subject_id="u-down", state=None, page_size=10, page_token="")
    assert listed == []
    issued = await runtime.issuance.issue(_prepare(runtime, "u-down"), request_id="down-1", actor=ENROLLMENT)
    assert (await runtime.revocation.get(issued.serial_hex)).serial == issued.serial


async def test_over_grpc_a_reused_request_id_is_invalid_argument_and_scoped_by_caller(ca: RunningCa) -> None:
    """Through IssueCertificate: a retry of the same request gets the same certificate, the same request id with
    another CSR is INVALID_ARGUMENT (REQUEST_ID_REUSED), and the operator's same request id is another entry."""
    enrollment = ca.stub("enrollment")
    request = issue_request("grpc-reuse-1", user_id="u-grpc")
    first = await enrollment.IssueCertificate(request)
    again = await enrollment.IssueCertificate(request)
    assert again.certificate.certificate_pem == first.certificate.certificate_pem
    assert again.chain_pem == first.chain_pem
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await enrollment.IssueCertificate(issue_request("grpc-reuse-1", csr=make_csr(), user_id="u-grpc"))
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc(reused.value)
    assert (error.reason, "request_id" in error.fields) == ("REQUEST_ID_REUSED", True)
    operator = await ca.stub("operator").IssueCertificate(issue_request("grpc-reuse-1", user_id="u-grpc"))
    assert operator.certificate.serial_number != first.certificate.serial_number
    listed = await ca.stub("operator").ListCertificates(ca_pb2.ListCertificatesRequest(subject_id="u-grpc"))
    assert len(listed.certificates) == 2
    assert (await verify_audit(ca.target)).ok
