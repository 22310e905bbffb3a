"""OpenSSL, a real relying party, against the running CA service: a certificate issued over gRPC verifies,
fails `-crl_check` with the CRL from GetCrl once revoked, and AnswerOcsp's responses read good, then revoked
with the right reason, and unknown for a serial never issued, each verifying against the CA bundle."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kagi.ca.v1 import ca_pb2
from services.ca_service.domain.serials import new_serial
from tests.integration.ca.ca_service_harness import RunningCa, issue_request
from tests.support.tools import run


async def _openssl(*argv: str | Path) -> tuple[int, str]:
    """Run openssl and return its exit code and everything it printed (a failure is an answer here)."""
    process = await asyncio.create_subprocess_exec(
        "openssl", *map(str, argv), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


async def _pki_files(ca: RunningCa, directory: Path) -> dict[str, Path]:
    reply = await ca.stub("operator").GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    files = {
        "root": directory / "root.pem",
        "customer": directory / "customer-ca.pem",
        "bundle": directory / "customer-bundle.pem",
    }
    files["root"].write_text(reply.root_pem)
    files["customer"].write_text(reply.customer_ca_pem)
    files["bundle"].write_text(reply.customer_ca_pem + reply.root_pem)
    return files


async def test_openssl_verifies_then_crl_check_rejects_after_revocation(ca: RunningCa, tmp_path: Path) -> None:
    """`openssl verify -CAfile root -untrusted customer-ca` accepts the issued certificate (also with -crl_check
    on the current CRL), and rejects it as revoked with the CRL GetCrl returns after RevokeCertificate."""
    files = await _pki_files(ca, tmp_path)
    issued = await ca.stub("enrollment").IssueCertificate(issue_request())
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(issued.certificate.certificate_pem)
    verify = ["verify", "-CAfile", files["root"], "-untrusted", files["customer"], "-purpose", "sslclient"]

    code, output = await _openssl(*verify, leaf)
    assert code == 0, output
    assert output.strip().endswith(f"{leaf}: OK")

    stub = ca.stub("operator")
    before = await stub.GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER))
    (tmp_path / "before.crl").write_bytes(before.crl)
    code, output = await _openssl(*verify, "-crl_check", "-CRLfile", tmp_path / "before.crl", leaf)
    assert code == 0, output

    await stub.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id="revoke-1",
            serial_number=issued.certificate.serial_number,
            reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
        )
    )
    after = await stub.GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER))
    assert after.crl_number > before.crl_number
    crl_file = tmp_path / "after.crl"
    crl_file.write_bytes(after.crl)
    code, output = await _openssl(*verify, "-crl_check", "-CRLfile", crl_file, leaf)
    assert code != 0
    assert "certificate revoked" in output
    text = await run(["openssl", "crl", "-inform", "DER", "-in", str(crl_file), "-noout", "-text"])
    assert "Key Compromise" in text
    assert issued.certificate.serial_number.upper().lstrip("0") in text.replace(":", "").upper()


async def _ocsp_answer(ca: RunningCa, request: bytes) -> ca_pb2.AnswerOcspResponse:
    reply: ca_pb2.AnswerOcspResponse = await ca.stub("gateway").AnswerOcsp(
        ca_pb2.AnswerOcspRequest(ocsp_request=request)
    )
    return reply


async def _read(files: dict[str, Path], directory: Path, name: str, response: bytes, *subject: str | Path) -> str:
    """Have openssl verify a response against the bundle (request and nonce too) and print its summary."""
    respin = directory / f"{name}-resp.der"
    respin.write_bytes(response)
    code, first = await _openssl(
        "ocsp", "-reqin", directory / f"{name}-req.der", "-respin", respin, "-CAfile", files["bundle"], "-resp_text"
    )
    assert code == 0, first
    assert "Response verify OK" in first
    assert "Nonce Verify error" not in first
    code, second = await _openssl(
        "ocsp", "-issuer", files["customer"], *subject, "-respin", respin, "-CAfile", files["bundle"], "-no_nonce"
    )
    assert code == 0, second
    assert "Response verify OK" in second
    return first + second


async def test_openssl_ocsp_good_revoked_and_unknown(ca: RunningCa, tmp_path: Path) -> None:
    """openssl's own OCSP requests through AnswerOcsp: good, then revoked with keyCompromise after RevokeCertificate
    (the cached good answer is not served again), and unknown for a random serial; all verify with the bundle."""
    files = await _pki_files(ca, tmp_path)
    issued = await ca.stub("enrollment").IssueCertificate(issue_request())
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(issued.certificate.certificate_pem)

    async def request(name: str, *subject: str | Path, nonce: bool = True) -> bytes:
        path = tmp_path / f"{name}-req.der"
        extra = [] if nonce else ["-no_nonce"]
        code, output = await _openssl("ocsp", "-issuer", files["customer"], *subject, *extra, "-reqout", path)
        assert code == 0, output
        return path.read_bytes()

    good = await _ocsp_answer(ca, await request("good", "-cert", leaf, nonce=False))
    assert good.status == ca_pb2.GetCertificateStatusResponse.STATUS_GOOD
    assert good.HasField("next_update")
    output = await _read(files, tmp_path, "good", good.ocsp_response, "-cert", leaf)
    assert f"{leaf}: good" in output

    await ca.stub("operator").RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id="revoke-ocsp",
            serial_number=issued.certificate.serial_number,
            reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
        )
    )
    revoked = await _ocsp_answer(ca, await request("good", "-cert", leaf, nonce=False))  # the same, cacheable request
    assert revoked.status == ca_pb2.GetCertificateStatusResponse.STATUS_REVOKED
    output = await _read(files, tmp_path, "good", revoked.ocsp_response, "-cert", leaf)
    assert f"{leaf}: revoked" in output
    assert "Revocation Reason: keyCompromise (0x1)" in output

    with_nonce = await _ocsp_answer(ca, await request("nonce", "-cert", leaf))
    output = await _read(files, tmp_path, "nonce", with_nonce.ocsp_response, "-cert", leaf)
    assert "OCSP Nonce" in output
    assert f"{leaf}: revoked" in output

    serial = f"0x{new_serial():X}"
    unknown = await _ocsp_answer(ca, await request("unknown", "-serial", serial))
    assert unknown.status == ca_pb2.GetCertificateStatusResponse.STATUS_UNKNOWN
    output = await _read(files, tmp_path, "unknown", unknown.ocsp_response, "-serial", serial)
    assert f"{serial}: unknown" in output
