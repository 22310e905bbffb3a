"""A certificate's life through the service: renewal keeps the identity and can supersede the old certificate
atomically, a hold becomes a final revocation, a subject's certificates are revoked together, and listings page
by subject and by state."""

from __future__ import annotations

import grpc
import pytest
from cryptography import x509

from kagi.ca.v1 import ca_pb2
from tests.integration.ca.ca_service_harness import RunningCa, issue_request, make_csr


async def test_renewal_keeps_identity_and_supersedes_the_old_certificate(ca: RunningCa) -> None:
    """RenewCertificate with revoke_previous issues a new certificate for the same subject (new key, new serial)
    and revokes the old one as superseded; renewing a revoked certificate is FAILED_PRECONDITION."""
    stub = ca.stub("enrollment")
    old = (await stub.IssueCertificate(issue_request(user_id="u-renew"))).certificate
    renewed = await stub.RenewCertificate(
        ca_pb2.RenewCertificateRequest(
            request_id="renew-1", serial_number=old.serial_number, csr=make_csr("p384"), revoke_previous=True
        )
    )
    new = renewed.certificate
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject
    assert new.subject_id == "u-renew"
    assert x509.load_pem_x509_certificate(new.certificate_pem.encode()).public_key().key_size == 384
    previous = await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number=old.serial_number))
    assert previous.certificate.state == ca_pb2.Certificate.STATE_REVOKED
    assert previous.certificate.revocation_reason == ca_pb2.REVOCATION_REASON_SUPERSEDED

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.RenewCertificate(
            ca_pb2.RenewCertificateRequest(request_id="renew-2", serial_number=old.serial_number, csr=make_csr())
        )
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_hold_can_become_final_and_revocation_is_idempotent(ca: RunningCa) -> None:
    """certificateHold, then keyCompromise: the reason changes once; revoking again leaves it as it is."""
    serial = (await ca.stub("enrollment").IssueCertificate(issue_request())).certificate.serial_number
    stub = ca.stub("operator")

    async def revoke(request_id: str, reason: int) -> ca_pb2.Certificate:
        reply = await stub.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(request_id=request_id, serial_number=serial, reason=reason)  # type: ignore[arg-type]
        )
        return reply.certificate

    held = await revoke("h", ca_pb2.REVOCATION_REASON_CERTIFICATE_HOLD)
    assert held.revocation_reason == ca_pb2.REVOCATION_REASON_CERTIFICATE_HOLD
    final = await revoke("k", ca_pb2.REVOCATION_REASON_KEY_COMPROMISE)
    assert final.revocation_reason == ca_pb2.REVOCATION_REASON_KEY_COMPROMISE
    again = await revoke("u", ca_pb2.REVOCATION_REASON_UNSPECIFIED)
    assert again.revocation_reason == ca_pb2.REVOCATION_REASON_KEY_COMPROMISE
    crl = await stub.GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER))
    entry = x509.load_der_x509_crl(crl.crl).get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise


async def test_subject_revocation_and_listings(ca: RunningCa) -> None:
    """Three certificates of one user: RevokeSubjectCertificates revokes the two still active (not the one revoked
    before); listings by subject and by state page through them with small pages."""
    stub = ca.stub("enrollment")
    serials = [
        (await stub.IssueCertificate(issue_request(user_id="u-many"))).certificate.serial_number for _ in range(3)
    ]
    await stub.IssueCertificate(issue_request(user_id="u-other"))
    operator = ca.stub("operator")
    await operator.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(request_id="first", serial_number=serials[0], reason=1)  # type: ignore[arg-type]
    )
    reply = await operator.RevokeSubjectCertificates(
        ca_pb2.RevokeSubjectCertificatesRequest(
            request_id="all", subject_id="u-many", reason=ca_pb2.REVOCATION_REASON_AFFILIATION_CHANGED
        )
    )
    assert sorted(c.serial_number for c in reply.certificates) == sorted(serials[1:])

    async def listing(**query: object) -> list[ca_pb2.Certificate]:
        found: list[ca_pb2.Certificate] = []
        token = ""
        while True:
            page = await operator.ListCertificates(
                ca_pb2.ListCertificatesRequest(page_size=1, page_token=token, **query)
            )  # type: ignore[arg-type]
            assert len(page.certificates) <= 1
            found += page.certificates
            token = page.next_page_token
            if not token:
                return found

    mine = await listing(subject_id="u-many")
    assert sorted(c.serial_number for c in mine) == sorted(serials)
    assert {c.state for c in mine} == {ca_pb2.Certificate.STATE_REVOKED}
    revoked = await listing(state=ca_pb2.Certificate.STATE_REVOKED)
    assert sorted(c.serial_number for c in revoked) == sorted(serials)
    active = await listing(state=ca_pb2.Certificate.STATE_ACTIVE)
    assert {c.subject_id for c in active} == {"u-other", "ocsp-customer", "ocsp-internal"}
