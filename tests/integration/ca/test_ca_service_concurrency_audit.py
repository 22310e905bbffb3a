"""Concurrency and the audit trail: 100 parallel IssueCertificate calls yield 100 distinct serials, all stored,
all in one unforked audit chain that `kagi admin verify-audit` accepts; a tampered audit record is caught."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner

from kagi.ca.v1 import ca_pb2
from kagi.cli.admin import AdminContext
from kagi.cli.admin_ca import verify_audit_command
from kagi.journal import AUDIT, audit_key, audit_records
from tests.integration.ca.ca_service_harness import RunningCa, issue_request, running_ca, snapshot, verify_audit


async def test_hundred_parallel_issuances_are_distinct_stored_and_audited(ca: RunningCa) -> None:
    """100 concurrent issuances on 10 channels: 100 serials, 100 issued records, 100 issue records in a chain
    whose sequence numbers are 0..n-1 without gap or fork, and the stored chain verifies end to end."""
    stubs = [ca.stub("enrollment") for _ in range(10)]
    before = await snapshot(ca.target)
    replies = await asyncio.gather(
        *(stubs[i % 10].IssueCertificate(issue_request(f"parallel-{i}", user_id=f"u-{i:03d}")) for i in range(100))
    )
    serials = {reply.certificate.serial_number for reply in replies}
    assert len(serials) == 100

    after = await snapshot(ca.target)
    new_records = {k: json.loads(v) for k, v in after.certificates.items() if k not in before.certificates}
    assert set(new_records) == serials
    assert all(record["state"] == "issued" for record in new_records.values())

    store = ca.target.open()
    try:
        chain = [record async for record in audit_records(store)]
    finally:
        await store.close()
    assert [record.sequence for record in chain] == list(range(len(chain)))
    assert {record.subject for record in chain if record.action == "issue"} >= serials
    report = await verify_audit(ca.target)
    assert report.ok, report
    assert report.checked == len(chain)


async def test_tampered_audit_record_is_detected(ca: RunningCa) -> None:
    """Rewriting one stored audit record (a changed actor) makes verification fail at exactly that record,
    and `kagi admin verify-audit` exits 1 naming its sequence; before the change it exits 0."""
    stub = ca.stub("enrollment")
    for i in range(5):
        await stub.IssueCertificate(issue_request(f"tamper-{i}"))
    ctx = AdminContext(ca.target.state_dir, ca.dev.tls("operator"), {"ca": ca.address})
    args = ["--store-url", ca.target.url, "--namespace", ca.target.namespace]
    runner = CliRunner()
    clean = await asyncio.to_thread(runner.invoke, verify_audit_command, args, obj=ctx)
    assert clean.exit_code == 0, clean.output
    assert "audit chain OK" in clean.output

    store = ca.target.open()
    try:
        entry = await store.get(AUDIT, audit_key(3))
        assert entry is not None
        body = json.loads(entry.value)
        body["actor"] = "spiffe://kagi.internal/operator"
        await store.compare_and_swap(AUDIT, audit_key(3), json.dumps(body).encode(), version=entry.version)
    finally:
        await store.close()

    report = await verify_audit(ca.target)
    assert not report.ok
    assert report.bad_sequence == 3
    assert "modified" in report.problem
    broken = await asyncio.to_thread(runner.invoke, verify_audit_command, args, obj=ctx)
    assert broken.exit_code == 1
    assert "BROKEN at sequence 3" in broken.output


async def test_revocations_are_audited_with_reason(ca: RunningCa) -> None:
    """A revocation appends a revoke record naming the serial and the RFC 5280 reason; revoking again adds none."""
    issued = await ca.stub("enrollment").IssueCertificate(issue_request())
    serial = issued.certificate.serial_number
    operator = ca.stub("operator")
    for request_id in ("rv-1", "rv-2"):
        reply = await operator.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(
                request_id=request_id, serial_number=serial, reason=ca_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION
            )
        )
        assert reply.certificate.state == ca_pb2.Certificate.STATE_REVOKED
    store = ca.target.open()
    try:
        revokes = [r async for r in audit_records(store) if r.action == "revoke" and r.subject == serial]
    finally:
        await store.close()
    assert len(revokes) == 1
    assert dict(revokes[0].details)["reason"] == "cessationOfOperation"
    assert revokes[0].actor == "spiffe://kagi.internal/operator"


async def test_two_replicas_appending_at_once_never_fork_the_chain(ca: RunningCa) -> None:
    """Two CA servers on one store issue 40 certificates each at the same time: the head compare-and-swap makes
    one chain of contiguous sequence numbers holding all 80 issuances, and it verifies."""
    async with running_ca(ca.dev, ca.target) as replica:
        stubs = [ca.stub("enrollment"), replica.stub("enrollment")]
        replies = await asyncio.gather(
            *(stubs[i % 2].IssueCertificate(issue_request(f"replicas-{i}", user_id=f"r-{i}")) for i in range(80))
        )
    serials = {reply.certificate.serial_number for reply in replies}
    assert len(serials) == 80
    store = ca.target.open()
    try:
        chain = [record async for record in audit_records(store)]
    finally:
        await store.close()
    assert [record.sequence for record in chain] == list(range(len(chain)))
    assert len({record.hash for record in chain}) == len(chain)
    assert {record.subject for record in chain if record.action == "issue"} >= serials
    assert (await verify_audit(ca.target)).ok
