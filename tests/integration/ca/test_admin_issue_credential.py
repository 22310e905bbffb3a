"""`kagi admin issue-credential`: an internal mTLS credential issued by the running CA to the operator over gRPC,
or offline from the CA's key files into the CA's own store (before the CA runs), and refused on bad input.

Every command runs as the real `kagi` program; the credentials are checked with openssl and used with grpcurl
against a real CA service with mTLS on a free port, over SQLite and Redis."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kagi.ca.v1 import ca_pb2
from kagi.cli.main import cli
from kagi.journal import audit_records
from services.ca_service.creation import DevPki, ensure_dev_pki, ensure_dev_pki_async
from tests.integration.ca.ca_service_harness import RunningCa, StoreTarget, running_ca, snapshot, verify_audit
from tests.support.cli import ISOLATED, admin_argv, isolated_env
from tests.support.tools import run, tool

SERVICE = "kagi.ca.v1.CertificateAuthorityService"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _san(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _assert_credential(out: Path, name: str, role: str, summary: dict[str, object], root: bytes, ca_dir: Path) -> None:
    """The three files exist with their modes; the chain is leaf + internal CA; the leaf is for the key on disk,
    carries the role's SPIFFE ID; ca.pem is the root; the summary names them; no key material is in it."""
    cert_file, key_file, ca_file = out / f"{name}.pem", out / f"{name}-key.pem", out / "ca.pem"
    assert _mode(key_file) == 0o600
    assert _mode(cert_file) == 0o644
    assert ca_file.read_bytes() == root
    chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    assert len(chain) == 2
    assert chain[1] == x509.load_pem_x509_certificate((ca_dir / "internal.pem").read_bytes())
    leaf = chain[0]
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert leaf.public_key() == key.public_key()
    assert _san(leaf).get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://kagi.internal/{role}"]
    assert summary["spiffe_id"] == f"spiffe://kagi.internal/{role}"
    assert summary["serial_number"] == format(leaf.serial_number, "x")
    assert summary["not_after"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (summary["certificate_file"], summary["key_file"], summary["ca_file"]) == (
        str(cert_file),
        str(key_file),
        str(ca_file),
    )
    text = json.dumps(summary)
    body = "".join(key_file.read_text().splitlines()[1:-1])
    assert "PRIVATE KEY" not in text
    assert body[:32] not in text


async def _openssl_verifies(out: Path, name: str) -> None:
    chain = str(out / f"{name}.pem")
    verdict = await run(
        [tool("openssl"), "verify", "-purpose", "sslclient", "-CAfile", str(out / "ca.pem"), "-untrusted", chain, chain]
    )
    assert verdict.strip() == f"{chain}: OK"


async def _listed(state_dir: Path, address: str, role: str) -> dict[str, dict[str, object]]:
    out = await run(
        admin_argv(state_dir, "list-certificates", "--subject", role, "--json"),
        env=isolated_env(KAGI_CA_TARGET=address),
    )
    rows: list[dict[str, object]] = json.loads(out)
    return {str(row["serial_number"]): row for row in rows}


async def _audit_of(target: StoreTarget, serial: str) -> list[tuple[str, str, dict[str, str]]]:
    store = target.open()
    try:
        return [(r.actor, r.action, dict(r.details)) async for r in audit_records(store) if r.subject == serial]
    finally:
        await store.close()


async def test_online_credential_is_recorded_verifies_and_authenticates_as_its_role(
    ca: RunningCa, tmp_path: Path
) -> None:
    """Online, the running CA issues a `frontend` credential to the operator: NAME.pem (leaf + internal CA, 0644),
    NAME-key.pem (EC P-256, 0600), ca.pem (the root); the leaf carries spiffe://kagi.internal/frontend and the
    DNS and IP names asked for, lives 90 days (30 with --days 30), and openssl verifies its chain for client
    auth; the CA lists it as an active service certificate and audits it with the credential's name. With it
    grpcurl calls GetCaCertificates over mTLS, while IssueCertificate is PERMISSION_DENIED to a front-end."""
    out = tmp_path / "creds"
    reply = await run(
        admin_argv(ca.dev.state_dir, "issue-credential", "--role", "frontend", "--name", "web01",
               "--dns", "web01.bank.example", "--ip", "10.0.0.5", "--out", str(out), "--json"),
        env=isolated_env(KAGI_CA_TARGET=ca.address),
    )  # fmt: skip
    summary = json.loads(reply)
    _assert_credential(out, "web01", "frontend", summary, ca.dev.root.read_bytes(), ca.dev.ca_dir)
    assert summary["mode"] == "online"
    leaf = x509.load_pem_x509_certificates((out / "web01.pem").read_bytes())[0]
    assert _san(leaf).get_values_for_type(x509.DNSName) == ["web01.bank.example"]
    assert [str(ip) for ip in _san(leaf).get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=90) <= lifetime <= timedelta(days=90, minutes=5)
    await _openssl_verifies(out, "web01")

    shorter = json.loads(
        await run(
            admin_argv(ca.dev.state_dir, "issue-credential", "--role", "frontend", "--name", "web02", "--days", "30",
                   "--out", str(out), "--json"),
            env=isolated_env(KAGI_CA_TARGET=ca.address),
        )
    )  # fmt: skip
    assert shorter["mode"] == "online"
    leaf = x509.load_pem_x509_certificates((out / "web02.pem").read_bytes())[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=5)

    serial = str(summary["serial_number"])
    listed = await _listed(ca.dev.state_dir, ca.address, "frontend")
    assert (listed[serial]["state"], listed[serial]["profile"], listed[serial]["issuer"]) == (
        "active",
        "service",
        "internal",
    )
    [(actor, action, details)] = await _audit_of(ca.target, serial)
    assert (actor, action) == ("spiffe://kagi.internal/operator", "issue")
    assert details["request_id"].startswith("issue-credential/web01/")

    grpcurl = [tool("grpcurl"), "-cacert", str(out / "ca.pem"), "-cert", str(out / "web01.pem"),
               "-key", str(out / "web01-key.pem")]  # fmt: skip
    cas = json.loads(await run([*grpcurl, ca.address, f"{SERVICE}/GetCaCertificates"]))
    assert cas["root_pem"] == (out / "ca.pem").read_text()
    with pytest.raises(AssertionError, match="PermissionDenied"):
        await run([*grpcurl, "-d", '{"profile": "service", "service": {"role": "frontend"}}', ca.address,
                   f"{SERVICE}/IssueCertificate"])  # fmt: skip


@pytest.fixture(params=["sqlite", "redis"])
def offline_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreTarget]:
    """The CA's store for the offline test: `kagi dev`'s own (<state>/ca.db), or a fresh Redis namespace."""
    state_dir = tmp_path / "kagi"
    if request.param == "sqlite":
        yield StoreTarget("sqlite", "sqlite:", state_dir, "ca")
    else:
        yield StoreTarget("redis", request.getfixturevalue("redis_server"), state_dir, f"ca{uuid.uuid4().hex[:12]}")


async def test_offline_credential_is_recorded_before_the_ca_runs_then_listed_and_revoked(
    offline_store: StoreTarget, tmp_path: Path
) -> None:
    """With the CA stopped, `--offline` signs a `gateway` credential (30 days) from the CA's key files: against
    `kagi dev`'s state dir with nothing but --state-dir (CA dir, passphrase file and SQLite store all found
    there), or against a named CA dir, KAGI_CA_KEY_PASSPHRASE_FILE and a Redis store. Once the CA starts on that
    store it lists the certificate as active and revokes it through `kagi admin revoke`; the audit chain
    verifies and names the offline operator. A second issue with --force replaces the files with a new key."""
    state_dir = offline_store.state_dir
    dev = await ensure_dev_pki_async(state_dir)  # what `kagi dev` makes on its first start
    out = tmp_path / "creds"
    args = ["issue-credential", "--offline", "--role", "gateway", "--name", "gw-1", "--dns", "gateway.bank.example",
            "--days", "30", "--out", str(out), "--json"]  # fmt: skip
    if offline_store.kind == "sqlite":
        env = isolated_env()
    else:
        env = isolated_env(KAGI_STORE_URL=offline_store.url, KAGI_CA_KEY_PASSPHRASE_FILE=str(dev.passphrase_file))
        args += ["--ca-dir", str(dev.ca_dir), "--namespace", offline_store.namespace]
    summary = json.loads(await run(admin_argv(state_dir, *args), env=env))
    _assert_credential(out, "gw-1", "gateway", summary, dev.root.read_bytes(), dev.ca_dir)
    assert summary["mode"] == "offline"
    leaf = x509.load_pem_x509_certificates((out / "gw-1.pem").read_bytes())[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=5)
    await _openssl_verifies(out, "gw-1")
    serial = str(summary["serial_number"])

    async with running_ca(dev, offline_store) as ca:
        listed = await _listed(state_dir, ca.address, "gateway")
        assert listed[serial]["state"] == "active"
        revoked = await run(
            admin_argv(state_dir, "revoke", "--serial", serial, "--reason", "superseded", "--yes", "--json"),
            env=isolated_env(KAGI_CA_TARGET=ca.address),
        )
        assert json.loads(revoked)["state"] == "revoked"
        status = await ca.stub("gateway").GetCertificateStatus(
            ca_pb2.GetCertificateStatusRequest(serial_number=serial, issuer=ca_pb2.ISSUER_INTERNAL)
        )
        assert status.status == ca_pb2.GetCertificateStatusResponse.STATUS_REVOKED
    assert (await verify_audit(offline_store)).ok
    actions = await _audit_of(offline_store, serial)
    assert [action for _, action, _ in actions] == ["issue", "revoke"]
    assert actions[0][0].startswith("kagi-admin-offline:")
    assert actions[0][2]["request_id"].startswith("issue-credential/gw-1/")

    old_key = (out / "gw-1-key.pem").read_bytes()
    again = json.loads(await run(admin_argv(state_dir, *args, "--force"), env=env))
    assert again["serial_number"] != serial
    assert (out / "gw-1-key.pem").read_bytes() != old_key
    _assert_credential(out, "gw-1", "gateway", again, dev.root.read_bytes(), dev.ca_dir)


@pytest.fixture(scope="module")
def dev_state(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A `kagi dev` state dir (CA, passphrase, recorded store), made once for the bad-input cases."""
    return ensure_dev_pki(tmp_path_factory.mktemp("issue-credential-bad"))


_GOOD = ["--role", "frontend", "--name", "web01", "--offline"]


def _with(*changes: str) -> list[str]:
    """The good arguments with some options replaced (pairs of option and value) or added (flags)."""
    args = list(_GOOD)
    pending = list(changes)
    while pending:
        option = pending.pop(0)
        value = pending.pop(0) if pending and not pending[0].startswith("--") else None
        if option in args and value is not None:
            args[args.index(option) + 1] = value
        elif option == "--online":
            args.remove("--offline")
        else:
            args += [option] if value is None else [option, value]
    return args


@pytest.mark.parametrize(
    ("args", "option", "rule", "existing"),
    [
        (_with("--role", "admin"), "--role", "'admin' is not one of", {}),
        (_with("--name", "../evil"), "--name", "A-Z a-z 0-9 . _ -", {}),
        (_with("--name", ".hidden"), "--name", "starting with a letter or digit", {}),
        (_with("--name", "ca"), "--name", "collide with ca.pem", {}),
        (_with("--days", "0"), "--days", "1<=x<=825", {}),
        (_with("--days", "826"), "--days", "1<=x<=825", {}),
        (_with("--online", "--ca-dir", "some-ca"), "--ca-dir", "only used with --offline", {}),
        (_with("--dns", "bad_host!"), "--dns", "is not a DNS host name", {}),
        (_with("--ip", "999.1.1.1"), "--ip", "is not an IP address", {}),
        (_with(), "--name", "pass --force to replace it", {"web01-key.pem": b"an existing key\n"}),
        (_with(), "--name", "pass --force to replace it", {"web01.pem": b"an existing certificate\n"}),
        (_with(), "--out", "holds another root certificate", {"ca.pem": b"another root\n"}),
    ],
    ids=[
        "unknown-role",
        "name-with-slash",
        "name-with-leading-dot",
        "name-ca",
        "days-0",
        "days-826",
        "ca-dir-online",
        "bad-dns",
        "bad-ip",
        "existing-key",
        "existing-certificate",
        "other-root",
    ],
)
def test_bad_input_is_refused_naming_the_option_and_nothing_is_written(
    dev_state: DevPki, tmp_path: Path, args: list[str], option: str, rule: str, existing: dict[str, bytes]
) -> None:
    """Each bad input fails with a usage error naming the option and its rule, before any issuance: the --out
    directory holds exactly what it held (or does not exist), and the CA's store has no new certificate and no
    new audit record. An existing key or certificate is never replaced without --force; a ca.pem holding another
    root is never replaced."""
    out = tmp_path / "creds"
    if existing:
        out.mkdir()
        for name, data in existing.items():
            (out / name).write_bytes(data)
    target = StoreTarget("sqlite", "sqlite:", dev_state.state_dir, "ca")
    before = asyncio.run(snapshot(target))
    runner = CliRunner(env=dict.fromkeys(ISOLATED))
    result = runner.invoke(
        cli, ["admin", "--state-dir", str(dev_state.state_dir), "issue-credential", *args, "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert rule in " ".join(result.output.split())
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == existing
    else:
        assert not out.exists()
    assert asyncio.run(snapshot(target)) == before
