"""The CA's bootstrap and operator commands: `ensure_dev_pki` makes the dev PKI once with safe file modes and
records every certificate it has the CA sign, reuses it on later starts and renews leaves near expiry;
`init-ca` never overwrites a CA nor prints its passphrase; `revoke` and `list-certificates` work over gRPC."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from kagi.ca.v1 import ca_pb2
from kagi.cli.admin import AdminContext
from kagi.cli.admin_ca import init_ca_command, list_certificates_command, revoke_command
from kagi.clock import FakeClock
from kagi.journal import verify_stored_chain
from kagi.store import open_store
from services.ca_service.creation import DEV_SERVICE_ROLES, dev_dns_names, ensure_dev_pki
from services.ca_service.domain.settings import CaKind
from services.ca_service.main import start_ca
from tests.integration.ca.ca_service_harness import RunningCa, StoreTarget, ca_settings, issue_request


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


async def _stored(state_dir: Path) -> tuple[dict[str, dict[str, object]], bool]:
    store = open_store("sqlite:", namespace="ca", state_dir=state_dir)
    try:
        records: dict[str, dict[str, object]] = {}
        page = await store.list("certificates", page_size=1000)
        records = {entry.key: json.loads(entry.value) for entry in page.entries}
        return records, (await verify_stored_chain(store)).ok
    finally:
        await store.close()


def test_dev_pki_is_made_once_recorded_and_reused(tmp_path: Path) -> None:
    """First start: passphrase 0600 in secrets/, CA dir 0700 with 0600 keys, tls/ca.pem the root, each role a
    leaf with its SPIFFE ID, localhost (and a server's role name, ca.kagi.internal), 127.0.0.1 and ::1 chained
    by the internal CA, key 0600; every leaf and OCSP signer is recorded in the CA's store with a verifying
    audit chain. Second start changes nothing."""
    dev = ensure_dev_pki(tmp_path)
    assert dev.created
    assert _mode(dev.passphrase_file) == 0o600
    assert _mode(dev.ca_dir) == 0o700
    assert all(_mode(key) == 0o600 for key in dev.ca_dir.glob("*-key.pem"))
    root = x509.load_pem_x509_certificate(dev.root.read_bytes())
    assert root.subject == root.issuer
    internal = x509.load_pem_x509_certificate((dev.ca_dir / "internal.pem").read_bytes())
    serials = {}
    for role in (*DEV_SERVICE_ROLES, "operator"):
        files = dev.tls(role)
        chain = x509.load_pem_x509_certificates(files.cert_file.read_bytes())
        assert chain[1] == internal
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://kagi.internal/{role}"]
        assert san.get_values_for_type(x509.DNSName) == list(dev_dns_names(role))
        assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
        assert _mode(files.key_file) == 0o600
        serials[role] = format(chain[0].serial_number, "x")
    assert dev.operator.cert_file.name == "developer.pem"

    records, chain_ok = asyncio.run(_stored(tmp_path))
    assert chain_ok
    assert set(serials.values()) <= {k for k, r in records.items() if r["state"] == "issued"}
    assert {r["profile"] for r in records.values()} == {"service", "ocsp-signer"}

    again = ensure_dev_pki(tmp_path)
    assert not again.created
    assert {role: format(_leaf(again.tls(role).cert_file).serial_number, "x") for role in serials} == serials


def test_dev_leaves_near_expiry_are_renewed(tmp_path: Path) -> None:
    """A start within 7 days of the leaves' expiry issues new ones and revokes the old as superseded."""
    ensure_dev_pki(tmp_path)
    old = _leaf(tmp_path / "tls" / "gateway.pem")
    later = FakeClock(old.not_valid_after_utc.timestamp() - 3 * 86400)
    ensure_dev_pki(tmp_path, clock=later)
    new = _leaf(tmp_path / "tls" / "gateway.pem")
    assert new.serial_number != old.serial_number
    records, chain_ok = asyncio.run(_stored(tmp_path))
    assert chain_ok
    assert records[format(old.serial_number, "x")]["reason"] == 4  # superseded


def test_init_ca_refuses_to_overwrite_and_never_prints_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init-ca creates a CA (the root key outside it); run again it fails and leaves every file as it was; neither
    passphrase appears anywhere."""
    passphrase = "correct horse battery staple 42"
    root_passphrase = "a different one for the root 43"
    monkeypatch.setenv("KAGI_CA_KEY_PASSPHRASE", passphrase)
    (tmp_path / "root-passphrase").write_text(root_passphrase + "\n")
    root_args = ["--root-key-out", str(tmp_path / "offline" / "root-key.pem")]
    root_args += ["--root-passphrase-file", str(tmp_path / "root-passphrase")]
    ctx = AdminContext(tmp_path, ensure_dev_pki(tmp_path / "dev").operator, {})
    runner = CliRunner()
    first = runner.invoke(init_ca_command, ["--key-algorithm", "rsa-2048", *root_args], obj=ctx)
    assert first.exit_code == 0, first.output
    files = {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()}
    assert {"root.pem", "customer-key.pem", "internal.pem"} <= set(files)
    assert "root-key.pem" not in files
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "offline" / "root-key.pem").read_bytes()
    assert all(b"ENCRYPTED PRIVATE KEY" in data for name, data in files.items() if name.endswith("-key.pem"))
    second = runner.invoke(init_ca_command, root_args, obj=ctx)
    assert second.exit_code != 0
    assert "CA_EXISTS" in second.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()} == files
    assert passphrase not in first.output + second.output
    assert root_passphrase not in first.output + second.output


async def test_admin_revoke_and_list_over_grpc(ca: RunningCa, tmp_path: Path) -> None:
    """`revoke --serial --reason keyCompromise --yes` revokes as the operator and shows the certificate;
    `list-certificates --state revoked` then shows it in its table with its reason."""
    serial = (await ca.stub("enrollment").IssueCertificate(issue_request(user_id="u-cli"))).certificate.serial_number
    ctx = AdminContext(tmp_path, ca.dev.tls("operator"), {"ca": ca.address})
    runner = CliRunner()
    revoked = await asyncio.to_thread(
        runner.invoke, revoke_command, ["--serial", serial, "--reason", "keyCompromise", "--yes"], obj=ctx
    )
    assert revoked.exit_code == 0, revoked.output
    assert re.search(r"^state +revoked$", revoked.output, re.MULTILINE), revoked.output
    listed = await asyncio.to_thread(
        runner.invoke, list_certificates_command, ["--state", "revoked", "--subject", "u-cli"], obj=ctx
    )
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.output.splitlines() if line.startswith(serial)]
    assert [(r[0], r[-1]) for r in rows] == [(serial, "key_compromise")]
    status = await ca.stub("gateway").GetCertificateStatus(ca_pb2.GetCertificateStatusRequest(serial_number=serial))
    assert status.status == ca_pb2.GetCertificateStatusResponse.STATUS_REVOKED


async def test_ocsp_signers_due_for_renewal_are_renewed_on_start(tmp_path: Path) -> None:
    """A CA started within 10 days of its OCSP signers' expiry issues new ones (new key files beside the old,
    recorded in the store and the audit chain), and its OCSP answers carry the new signer."""
    dev = ensure_dev_pki(tmp_path)
    old = {p.name for p in dev.ca_dir.glob("*-ocsp-*.pem")}
    target = StoreTarget("sqlite", "sqlite:", tmp_path, "ca")
    later = FakeClock(time.time() + 25 * 86400)
    component = await start_ca(ca_settings(dev, target), clock=later)
    try:
        delegate = component.runtime.authorities.delegate(CaKind.CUSTOMER)
        assert delegate.certificate.not_valid_after_utc.timestamp() > later.now() + 20 * 86400
        new = {p.name for p in dev.ca_dir.glob("*-ocsp-*.pem")} - old
        assert len([name for name in new if name.endswith("-key.pem")]) == 2
        assert all(stat.S_IMODE((dev.ca_dir / name).stat().st_mode) == 0o600 for name in new if "-key" in name)
        status = await component.runtime.revocation.status(
            format(delegate.certificate.serial_number, "x"), CaKind.CUSTOMER
        )
        assert status.record is not None
        assert status.record.profile == "ocsp-signer"
    finally:
        await component.stop(0)
    _, chain_ok = await _stored(tmp_path)
    assert chain_ok
