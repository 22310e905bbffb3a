"""The root's CRL (an authority revocation list): signed when the CA is created, re-signed offline with
`kagi admin sign-root-crl`, served by GetCrl(ISSUER_ROOT) so the intermediates' CRL distribution point resolves,
clean under pkilint, and what lets `openssl verify -crl_check_all` check the whole chain."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cryptography import x509

from kagi.ca.v1 import ca_pb2
from tests.integration.ca.ca_service_harness import RunningCa, issue_request
from tests.integration.ca.test_ca_pkilint import _findings
from tests.integration.ca.test_ca_service_openssl import _openssl
from tests.support.tools import run, tool


async def test_root_crl_is_served_and_lints_clean(ca: RunningCa, tmp_path: Path) -> None:
    """GetCrl(ISSUER_ROOT) returns a signed ARL with a CRL number, valid for a long time, lint-clean as ARL."""
    reply = await ca.stub("gateway").GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_ROOT))
    crl = x509.load_der_x509_crl(reply.crl)
    root = x509.load_pem_x509_certificate(ca.dev.root_file.read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert reply.crl_number >= 1
    assert crl.next_update_utc is not None
    assert (crl.next_update_utc - crl.last_update_utc).days >= 300
    (tmp_path / "root.crl").write_bytes(reply.crl)
    # pkilint runs in a thread: the CA under test shares this event loop
    assert await asyncio.to_thread(_findings, "lint_crl", "-t", "ARL", "-p", "PKIX", tmp_path / "root.crl") == []


async def test_crl_check_all_verifies_the_whole_chain_then_rejects_a_revoked_leaf(
    ca: RunningCa, tmp_path: Path
) -> None:
    """With the root's and the customer CA's CRLs, `openssl verify -crl_check_all` accepts an issued certificate
    and, once it is revoked, rejects it."""
    stub = ca.stub("operator")
    chain = await stub.GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    (tmp_path / "root.pem").write_text(chain.root_pem)
    (tmp_path / "customer-ca.pem").write_text(chain.customer_ca_pem)
    issued = await ca.stub("enrollment").IssueCertificate(issue_request())
    (tmp_path / "leaf.pem").write_text(issued.certificate.certificate_pem)

    async def verify() -> tuple[int, str]:
        for name, issuer in (("root", ca_pb2.ISSUER_ROOT), ("customer", ca_pb2.ISSUER_CUSTOMER)):
            reply = await stub.GetCrl(ca_pb2.GetCrlRequest(issuer=issuer))
            (tmp_path / f"{name}.crl").write_bytes(reply.crl)
        return await _openssl(
            "verify", "-crl_check_all", "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "customer-ca.pem",
            "-CRLfile", tmp_path / "root.crl", "-CRLfile", tmp_path / "customer.crl", tmp_path / "leaf.pem",
        )  # fmt: skip

    code, output = await verify()
    assert code == 0, output
    await stub.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id="revoke-root-crl-test",
            serial_number=issued.certificate.serial_number,
            reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
        )
    )
    for _ in range(50):
        code, output = await verify()
        if code != 0:
            break
    assert "certificate revoked" in output


async def test_sign_root_crl_issues_the_next_number_and_the_service_serves_it(ca: RunningCa) -> None:
    """`kagi admin sign-root-crl --root-key` opens the offline root key (with its own passphrase, not the online
    keys'), signs CRL number n+1, and GetCrl serves it at once."""
    stub = ca.stub("operator")
    before = await stub.GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_ROOT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGI_CA_")}
    out = await run(
        [
            tool("kagi"), "admin", "--state-dir", str(ca.dev.state_dir), "sign-root-crl",
            "--ca-dir", str(ca.dev.ca_dir), "--root-key", str(ca.dev.root_key_file),
            "--root-passphrase-file", str(ca.dev.root_passphrase_file), "--yes",
        ],
        env=env,
    )  # fmt: skip
    assert f"root CRL {before.crl_number + 1} signed" in out
    after = await stub.GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_ROOT))
    assert after.crl_number == before.crl_number + 1
