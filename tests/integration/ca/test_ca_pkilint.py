"""pkilint, run from its CLI entry points, finds nothing at WARNING or above in anything the CA signs.

One finding is expected and checked precisely rather than filtered broadly: pkilint 0.13 validates URI
SANs with `validators.url`, which knows only web schemes, so it reports `pkix.invalid_uri_syntax` (ERROR) for
`urn:kagi:user:<id>` and `spiffe://kagi.internal/<role>`, both valid RFC 3986 URIs required by the design.
The test allows exactly that code, for exactly those values, after checking them against RFC 3986's grammar.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from services.ca_service.domain.crl import build_crl
from services.ca_service.domain.identity import CustomerIdentity, ServiceIdentity
from services.ca_service.domain.ocsp import answer_ocsp, parse_ocsp_request
from services.ca_service.domain.revocation import CertificateStatus, RevocationReason
from services.ca_service.domain.settings import CaKind

BIN = Path(sys.executable).parent
SHA1 = hashes.SHA1()  # noqa: S303 - OCSP CertIDs name certificates with SHA-1 by default (RFC 6960)
# RFC 3986 section 3: scheme ":" hier-part, with only unreserved, sub-delims, ":", "@", "/" and pct-encoded.
_RFC3986_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(//)?([A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})+")


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a real tool (openssl, a pkilint entry point) and capture its text output, whatever its exit code."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)


def _findings(tool: str, *args: str | Path) -> list[dict[str, str]]:
    result = run(BIN / tool, "lint", "-s", "WARNING", "-f", "JSON", *args)
    assert result.stdout.strip(), f"{tool} printed nothing: {result.stderr}"
    report = json.loads(result.stdout)
    return [
        {"path": entry["node_path"], **finding}
        for entry in report["results"]
        for finding in entry["finding_descriptions"]
    ]


def _without_known_uri_false_positive(findings: list[dict[str, str]], uris: set[str]) -> list[dict[str, str]]:
    remaining = []
    for finding in findings:
        quoted = re.fullmatch(r'Invalid URI syntax: "(.*)"', finding.get("message") or "")
        if finding["code"] == "pkix.invalid_uri_syntax" and quoted and quoted.group(1) in uris:
            assert _RFC3986_URI.fullmatch(quoted.group(1)), quoted.group(1)
            continue
        remaining.append(finding)
    return remaining


def _cert(pki, name: str, certificate: x509.Certificate) -> Path:
    return pki.write(name, certificate.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def documents(pki) -> dict[str, Path]:
    """Every kind of document the CA signs, on disk."""
    customer_identity = CustomerIdentity("u-0099", "tanaka99", "田中 一郎", "株式会社 田中物産")
    leaf = pki.issue(customer_identity, "customer")
    service = pki.issue(ServiceIdentity("ca", dns_names=("ca.kagi.internal",), ip_addresses=("127.0.0.1",)), "service")
    pki.revoke(leaf, RevocationReason.KEY_COMPROMISE)
    other = pki.issue(customer_identity, "customer")
    pki.revoke(other, RevocationReason.UNSPECIFIED)
    root_status = CertificateStatus(
        CaKind.ROOT,
        pki.hierarchy.internal.certificate.serial_number,
        pki.hierarchy.internal.certificate.not_valid_after_utc,
    )

    def response(certificate: x509.Certificate, nonce: bytes | None) -> bytes:
        builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, pki.hierarchy.customer.certificate, SHA1)
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        query = parse_ocsp_request(builder.build().public_bytes(serialization.Encoding.DER))
        return answer_ocsp(
            pki.responder(CaKind.CUSTOMER),
            query,
            pki.statuses.get(query.serial),
            settings=pki.settings,
            clock=pki.clock,
        )

    unknown = pki.delegates[CaKind.CUSTOMER].certificate  # issued by the CA, but not in the status table
    return {
        "root": _cert(pki, "lint-root.pem", pki.hierarchy.root.certificate),
        "customer-ca": _cert(pki, "lint-customer-ca.pem", pki.hierarchy.customer.certificate),
        "internal-ca": _cert(pki, "lint-internal-ca.pem", pki.hierarchy.internal.certificate),
        "customer-leaf": pki.write("lint-customer-leaf.pem", leaf.pem),
        "service-leaf": pki.write("lint-service-leaf.pem", service.pem),
        "customer-ocsp-signer": pki.write("lint-customer-ocsp.pem", pki.delegates[CaKind.CUSTOMER].pem),
        "internal-ocsp-signer": pki.write("lint-internal-ocsp.pem", pki.delegates[CaKind.INTERNAL].pem),
        "customer-crl": pki.write("lint-customer.crl", pki.crl(CaKind.CUSTOMER).der),
        "root-arl": pki.write(
            "lint-root.crl",
            build_crl(pki.hierarchy.root, [root_status], crl_number=1, settings=pki.settings, clock=pki.clock).der,
        ),
        "ocsp-revoked": pki.write("lint-revoked.ocsp", response(leaf.certificate, b"0123456789abcdef")),
        "ocsp-good": pki.write("lint-good.ocsp", response(other.certificate, None)),
        "ocsp-unknown": pki.write("lint-unknown.ocsp", response(unknown, b"nonce")),
    }


URIS = {"urn:kagi:user:u-0099", "spiffe://kagi.internal/ca"}


@pytest.mark.parametrize(
    "name",
    [
        "root",
        "customer-ca",
        "internal-ca",
        "customer-leaf",
        "service-leaf",
        "customer-ocsp-signer",
        "internal-ocsp-signer",
    ],
)
def test_certificates_are_clean_under_lint_pkix_cert(documents, name):
    """lint_pkix_cert -s WARNING reports nothing for each certificate (beyond the known URI false positive)."""
    findings = _findings("lint_pkix_cert", documents[name])
    assert _without_known_uri_false_positive(findings, URIS) == []


def test_the_uri_false_positive_is_what_the_allowance_expects(documents):
    """The allowance is not hiding anything else: the customer leaf's only finding is its user URN."""
    findings = _findings("lint_pkix_cert", documents["customer-leaf"])
    assert [(f["code"], f["message"]) for f in findings] == [
        ("pkix.invalid_uri_syntax", 'Invalid URI syntax: "urn:kagi:user:u-0099"')
    ]


@pytest.mark.parametrize(
    ("issuer", "subject"),
    [
        ("root", "customer-ca"),
        ("root", "internal-ca"),
        ("customer-ca", "customer-leaf"),
        ("internal-ca", "service-leaf"),
        ("customer-ca", "customer-ocsp-signer"),
        ("internal-ca", "internal-ocsp-signer"),
    ],
)
def test_issuer_subject_pairs_are_clean_under_the_chain_linter(documents, issuer, subject):
    """lint_pkix_signer_signee_cert_chain -s WARNING finds nothing for each issuer/subject pair."""
    findings = _findings("lint_pkix_signer_signee_cert_chain", documents[issuer], documents[subject])
    assert _without_known_uri_false_positive(findings, URIS) == []


@pytest.mark.parametrize(("name", "crl_type"), [("customer-crl", "CRL"), ("root-arl", "ARL")])
def test_crls_are_clean_under_lint_crl_pkix(documents, name, crl_type):
    """lint_crl -t CRL|ARL -p PKIX -s WARNING finds nothing in the customer CRL (with reasons) or root ARL."""
    assert _findings("lint_crl", "-t", crl_type, "-p", "PKIX", documents[name]) == []


@pytest.mark.parametrize("name", ["ocsp-good", "ocsp-revoked", "ocsp-unknown"])
def test_ocsp_responses_are_clean_under_lint_ocsp_response(documents, name):
    """lint_ocsp_response -s WARNING finds nothing in good, revoked (with nonce) and unknown responses."""
    assert _findings("lint_ocsp_response", documents[name]) == []
