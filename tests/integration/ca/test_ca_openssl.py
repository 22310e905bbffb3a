"""OpenSSL, a real relying party, accepts what the CA issues, rejects it once revoked, and reads OCSP answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography.x509 import ocsp

from services.ca_service.domain.ocsp import answer_ocsp, parse_ocsp_request, select_responder
from services.ca_service.domain.revocation import RevocationReason
from services.ca_service.domain.serials import new_serial
from services.ca_service.domain.settings import CaKind


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a real tool (openssl, a pkilint entry point) and capture its text output, whatever its exit code."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)


def _verify(pki, leaf: str, *extra: str, ca: str = "customer-ca.pem"):
    directory = pki.directory
    return run(
        "openssl", "verify", *extra, "-CAfile", directory / "root.pem", "-untrusted", directory / ca, directory / leaf
    )


def test_openssl_accepts_an_issued_customer_certificate_for_client_auth(pki, customer):
    """`openssl verify -CAfile root -untrusted customer-ca leaf` says OK, also for the sslclient purpose."""
    pki.write("accepted.pem", pki.issue(customer, "customer").pem)
    result = _verify(pki, "accepted.pem", "-purpose", "sslclient")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("accepted.pem: OK")


def test_customer_certificate_is_not_a_server_nor_chained_to_the_internal_ca(pki, customer):
    """A customer certificate fails as a TLS server, and under the internal CA it does not chain at all."""
    pki.write("not-server.pem", pki.issue(customer, "customer").pem)
    assert _verify(pki, "not-server.pem", "-purpose", "sslserver").returncode != 0
    assert _verify(pki, "not-server.pem", ca="internal-ca.pem").returncode != 0


def test_service_certificate_verifies_as_tls_server_and_client(pki, gateway):
    """An internal certificate verifies under the internal CA for both sslserver and sslclient."""
    pki.write("gateway.pem", pki.issue(gateway, "service").pem)
    for purpose in ("sslserver", "sslclient"):
        result = _verify(pki, "gateway.pem", "-purpose", purpose, ca="internal-ca.pem")
        assert result.returncode == 0, result.stdout + result.stderr
    assert _verify(pki, "gateway.pem").returncode != 0


def test_openssl_crl_check_rejects_the_certificate_after_revocation(pki, customer):
    """With -crl_check the certificate passes on the current CRL, and fails on the next one once revoked."""
    issued = pki.issue(customer, "customer")
    pki.write("revoked-leaf.pem", issued.pem)
    before = pki.write("customer-before.crl", pki.crl(CaKind.CUSTOMER).pem)
    result = _verify(pki, "revoked-leaf.pem", "-crl_check", "-CRLfile", str(before))
    assert result.returncode == 0, result.stdout + result.stderr

    pki.revoke(issued, RevocationReason.KEY_COMPROMISE)
    after = pki.write("customer-after.crl", pki.crl(CaKind.CUSTOMER).pem)
    result = _verify(pki, "revoked-leaf.pem", "-crl_check", "-CRLfile", str(after))
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr

    crl_text = run("openssl", "crl", "-in", after, "-noout", "-text").stdout
    assert "X509v3 CRL Number:" in crl_text
    assert "Key Compromise" in crl_text


def _ocsp_request(pki, name: str, *subject: str) -> bytes:
    request = pki.directory / f"{name}-req.der"
    result = run("openssl", "ocsp", "-issuer", pki.directory / "customer-ca.pem", *subject, "-reqout", request)
    assert result.returncode == 0, result.stderr
    return request.read_bytes()


def _answer(pki, request: bytes) -> bytes:
    query = parse_ocsp_request(request)
    responder = select_responder(query, [pki.responder(CaKind.INTERNAL), pki.responder(CaKind.CUSTOMER)])
    assert responder is not None
    return answer_ocsp(responder, query, pki.statuses.get(query.serial), settings=pki.settings, clock=pki.clock)


def _read_response(pki, name: str, response: bytes, *subject: str) -> str:
    """Read the response twice, as a relying party would, and return all openssl printed.

    First with the original request (-reqin): openssl checks its nonce against the echo and verifies the
    signature against the CA bundle. Then as in `openssl ocsp -issuer ... -cert ... -respin ...`, which
    prints the per-certificate summary line; -no_nonce there, since that form builds a new request whose
    fresh nonce the stored response cannot echo.
    """
    directory = pki.directory
    respin = pki.write(f"{name}-resp.der", response)
    bundle = pki.bundle(CaKind.CUSTOMER)
    with_request = run(
        "openssl", "ocsp", "-reqin", directory / f"{name}-req.der", "-respin", respin, "-CAfile", bundle, "-resp_text"
    )
    first = with_request.stdout + with_request.stderr
    assert with_request.returncode == 0, first
    assert "Response verify OK" in first
    assert "Nonce Verify error" not in first
    summary = run(
        "openssl",
        "ocsp",
        "-issuer",
        directory / "customer-ca.pem",
        *subject,
        "-respin",
        respin,
        "-resp_text",
        "-CAfile",
        bundle,
        "-no_nonce",
    )
    second = summary.stdout + summary.stderr
    assert summary.returncode == 0, second
    assert "Response verify OK" in second
    return first + second


def test_openssl_ocsp_reads_good_then_revoked_with_reason(pki, customer):
    """openssl's own request (with nonce) is answered good; after revocation, revoked with keyCompromise.

    Each response verifies against the CA bundle: the delegated signer is found in the response, chains to
    the root, and carries EKU OCSPSigning; the nonce openssl sent is checked against the echo.
    """
    issued = pki.issue(customer, "customer")
    leaf = pki.write("ocsp-leaf.pem", issued.pem)

    good = _read_response(pki, "good", _answer(pki, _ocsp_request(pki, "good", "-cert", str(leaf))), "-cert", str(leaf))
    assert "Cert Status: good" in good
    assert f"{leaf}: good" in good
    assert "OCSP Nonce" in good

    pki.revoke(issued, RevocationReason.KEY_COMPROMISE)
    request = _ocsp_request(pki, "revoked", "-cert", str(leaf))
    revoked = _read_response(pki, "revoked", _answer(pki, request), "-cert", str(leaf))
    assert "Cert Status: revoked" in revoked
    assert f"{leaf}: revoked" in revoked
    assert "Revocation Reason: keyCompromise (0x1)" in revoked
    assert "Revocation Time:" in revoked


def test_openssl_ocsp_reads_unknown_for_a_random_serial(pki):
    """A serial the CA never issued is answered unknown (never good), and the answer still verifies."""
    serial = f"0x{new_serial():X}"
    response = _answer(pki, _ocsp_request(pki, "unknown", "-serial", serial))
    assert ocsp.load_der_ocsp_response(response).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    output = _read_response(pki, "unknown", response, "-serial", serial)
    assert "Cert Status: unknown" in output
    assert f"{serial}: unknown" in output


def test_openssl_ocsp_verifies_with_the_signer_as_vafile(pki, customer):
    """Pinning the delegated signer with -VAfile also verifies the response."""
    issued = pki.issue(customer, "customer")
    leaf = pki.write("va-leaf.pem", issued.pem)
    request = _ocsp_request(pki, "va", "-cert", str(leaf), "-no_nonce")
    signer = pki.write("customer-ocsp.pem", pki.delegates[CaKind.CUSTOMER].pem)
    result = run(
        "openssl",
        "ocsp",
        "-respin",
        pki.write("va-resp.der", _answer(pki, request)),
        "-issuer",
        pki.directory / "customer-ca.pem",
        "-cert",
        leaf,
        "-VAfile",
        signer,
        "-no_nonce",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Response verify OK" in output
    assert f"{leaf}: good" in output
