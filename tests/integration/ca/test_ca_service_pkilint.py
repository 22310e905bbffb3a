"""pkilint finds nothing at WARNING or above in what the running CA service publishes: the root, both
intermediates, a customer certificate issued over gRPC, the CRL from GetCrl (with a revoked entry) and an OCSP
response from AnswerOcsp. The only allowance is the domain tests' one for pkilint's known URI false positive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from kagi.ca.v1 import ca_pb2
from services.ca_service.creation import DevPki
from tests.integration.ca.ca_service_harness import RunningCa, StoreTarget, issue_request, running_ca
from tests.integration.ca.test_ca_pkilint import _findings, _without_known_uri_false_positive

SHA1 = hashes.SHA1()  # noqa: S303 - OCSP CertIDs name certificates with SHA-1 by default (RFC 6960)
URIS = {"urn:kagi:user:u-0042"}


@pytest.fixture
async def published(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[dict[str, Path]]:
    """Everything the service publishes, fetched over gRPC and written to files."""
    async with running_ca(dev_pki, StoreTarget("sqlite", "sqlite:", tmp_path, "ca")) as ca:
        yield await _fetch(ca, tmp_path)


async def _fetch(ca: RunningCa, directory: Path) -> dict[str, Path]:
    operator = ca.stub("operator")
    cas = await operator.GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    issued = await ca.stub("enrollment").IssueCertificate(issue_request())
    revoked = await ca.stub("enrollment").IssueCertificate(issue_request())
    await operator.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id="lint-revoke",
            serial_number=revoked.certificate.serial_number,
            reason=ca_pb2.REVOCATION_REASON_AFFILIATION_CHANGED,
        )
    )
    crl = await operator.GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER))
    leaf = x509.load_pem_x509_certificate(issued.certificate.certificate_pem.encode())
    customer_ca = x509.load_pem_x509_certificate(cas.customer_ca_pem.encode())
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, customer_ca, SHA1)
        .add_extension(x509.OCSPNonce(b"0123456789abcdef"), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    answer = await ca.stub("gateway").AnswerOcsp(ca_pb2.AnswerOcspRequest(ocsp_request=request))
    files = {
        "root": cas.root_pem.encode(),
        "customer-ca": cas.customer_ca_pem.encode(),
        "internal-ca": cas.internal_ca_pem.encode(),
        "customer-leaf": issued.certificate.certificate_pem.encode(),
        "customer-crl": crl.crl,
        "ocsp-good": answer.ocsp_response,
    }
    paths = {}
    for name, data in files.items():
        paths[name] = directory / name
        paths[name].write_bytes(data)
    return paths


async def test_published_documents_are_clean_under_pkilint(published: dict[str, Path]) -> None:
    """lint_pkix_cert, the chain linter, lint_crl and lint_ocsp_response find nothing (bar the URI allowance)."""
    for name in ("root", "customer-ca", "internal-ca", "customer-leaf"):
        assert _without_known_uri_false_positive(_findings("lint_pkix_cert", published[name]), URIS) == [], name
    for issuer, subject in (("root", "customer-ca"), ("root", "internal-ca"), ("customer-ca", "customer-leaf")):
        findings = _findings("lint_pkix_signer_signee_cert_chain", published[issuer], published[subject])
        assert _without_known_uri_false_positive(findings, URIS) == [], (issuer, subject)
    assert _findings("lint_crl", "-t", "CRL", "-p", "PKIX", published["customer-crl"]) == []
    assert _findings("lint_ocsp_response", published["ocsp-good"]) == []


async def test_the_only_leaf_finding_is_the_known_uri_false_positive(published: dict[str, Path]) -> None:
    """The allowance hides nothing else: the customer leaf's one finding is its user URN."""
    findings = _findings("lint_pkix_cert", published["customer-leaf"])
    assert [(f["code"], f["message"]) for f in findings] == [
        ("pkix.invalid_uri_syntax", 'Invalid URI syntax: "urn:kagi:user:u-0042"')
    ]
