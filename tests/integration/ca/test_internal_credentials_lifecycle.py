"""Internal credentials after their issuance: `kagi admin list-credentials` lists them with their role, serial,
not-after and state; `kagi admin revoke` revokes one; `kagi admin renew-credential` renews one with a new key
for the same role and names (online through the running CA, or offline from its key files), replacing the files
in place, optionally revoking the old serial; a file that is not a kagi internal credential is refused.

Every command runs as the real `kagi` program against a real CA service with mTLS on a free port."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kagi.ca.v1 import ca_pb2
from services.ca_service.creation import ensure_dev_pki_async
from tests.integration.ca.ca_service_harness import RunningCa, StoreTarget, running_ca
from tests.support.cli import admin_argv, isolated_env
from tests.support.tools import run, tool

SERVICE = "kagi.ca.v1.CertificateAuthorityService"


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _names(certificate: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


async def _credentials(ca: RunningCa, *args: str) -> dict[str, dict[str, object]]:
    out = await run(
        admin_argv(ca.dev.state_dir, "list-credentials", *args, "--json"), env=isolated_env(KAGI_CA_TARGET=ca.address)
    )
    rows: list[dict[str, object]] = json.loads(out)
    return {str(row["serial_number"]): row for row in rows}


async def _grpcurl_status(out: Path, name: str, address: str) -> str:
    """Call GetCaCertificates with the credential; return "ok" or grpcurl's error."""
    command = [tool("grpcurl"), "-cacert", str(out / "ca.pem"), "-cert", str(out / f"{name}.pem"),
               "-key", str(out / f"{name}-key.pem"), address, f"{SERVICE}/GetCaCertificates"]  # fmt: skip
    try:
        await run(command)
    except AssertionError as exc:
        return str(exc)
    return "ok"


async def test_credentials_are_listed_by_role_revoked_and_renewed_with_a_new_key(ca: RunningCa, tmp_path: Path) -> None:
    """Two `frontend` credentials and one `gateway` one are listed by `list-credentials` (role, serial, active,
    not-after, DNS and IP names; no customer certificate), filtered by --role and --state. `renew-credential`
    gives one a new key and serial with the same role and names, 90 days, replacing NAME.pem and NAME-key.pem in
    place (key 0600); the new pair authenticates with grpcurl. With --revoke-old the old serial is revoked
    (superseded) and listed so; `kagi admin revoke` revokes another with the reason given."""
    out = tmp_path / "creds"
    env = isolated_env(KAGI_CA_TARGET=ca.address)
    issued = {}
    for role, name, extra in (
        ("frontend", "web01", ["--dns", "web01.bank.example", "--ip", "10.0.0.5", "--days", "30"]),
        ("frontend", "web02", []),
        ("gateway", "gw-1", ["--dns", "gateway.bank.example"]),
    ):
        reply = await run(
            admin_argv(ca.dev.state_dir, "issue-credential", "--role", role, "--name", name, "--out", str(out),
                   "--json", *extra),
            env=env,
        )  # fmt: skip
        issued[name] = json.loads(reply)

    listed = await _credentials(ca)
    for name in ("web01", "web02", "gw-1"):
        row = listed[str(issued[name]["serial_number"])]
        assert (row["role"], row["state"], row["issuer"], row["profile"]) == (
            issued[name]["role"],
            "active",
            "internal",
            "service",
        )
        assert str(row["not_after"]).startswith(str(issued[name]["not_after"])[:16])
    web01 = listed[str(issued["web01"]["serial_number"])]
    assert (web01["dns_names"], web01["ip_addresses"]) == (["web01.bank.example"], ["10.0.0.5"])
    assert {row["issuer"] for row in listed.values()} == {"internal"}
    only_gateway = await _credentials(ca, "--role", "gateway")
    assert str(issued["gw-1"]["serial_number"]) in only_gateway
    assert {row["role"] for row in only_gateway.values()} == {"gateway"}

    old_key = (out / "web01-key.pem").read_bytes()
    old_leaf = _leaf(out / "web01.pem")
    renewed = json.loads(
        await run(
            admin_argv(ca.dev.state_dir, "renew-credential", "--name", "web01", "--out", str(out), "--revoke-old",
                   "--yes", "--json"),
            env=env,
        )
    )  # fmt: skip
    new_leaf = _leaf(out / "web01.pem")
    assert renewed["old_serial_number"] == issued["web01"]["serial_number"]
    assert renewed["serial_number"] == format(new_leaf.serial_number, "x") != renewed["old_serial_number"]
    assert renewed["old_revoked"] is True
    assert (out / "web01-key.pem").read_bytes() != old_key
    assert (out / "web01-key.pem").stat().st_mode & 0o777 == 0o600
    assert new_leaf.public_key() != old_leaf.public_key()
    assert _names(new_leaf) == _names(old_leaf)
    lifetime = new_leaf.not_valid_after_utc - new_leaf.not_valid_before_utc
    assert timedelta(days=90) <= lifetime <= timedelta(days=90, minutes=5)
    assert await _grpcurl_status(out, "web01", ca.address) == "ok"

    revoked = await run(
        admin_argv(ca.dev.state_dir, "revoke", "--serial", str(issued["web02"]["serial_number"]), "--reason",
               "keyCompromise", "--yes", "--json"),
        env=env,
    )  # fmt: skip
    assert json.loads(revoked)["revocation_reason"] == "key_compromise"

    after = await _credentials(ca, "--role", "frontend")
    assert after[renewed["old_serial_number"]]["state"] == "revoked"
    assert after[renewed["old_serial_number"]]["revocation_reason"] == "superseded"
    assert after[renewed["serial_number"]]["state"] == "active"
    assert after[str(issued["web02"]["serial_number"])]["state"] == "revoked"
    active = await _credentials(ca, "--role", "frontend", "--state", "active")
    assert renewed["serial_number"] in active
    assert renewed["old_serial_number"] not in active


async def test_offline_renewal_before_the_ca_runs_is_recorded(tmp_path: Path) -> None:
    """With the CA stopped, `renew-credential --offline` renews a `gateway` credential from `kagi dev`'s CA files
    (--days 10): a new key and serial, the same names; once the CA runs on that store it lists both the old and
    the new serial as active; --revoke-old with --offline is a usage error naming the online way."""
    state_dir = tmp_path / "kagi"
    await ensure_dev_pki_async(state_dir)
    out = tmp_path / "creds"
    issued = json.loads(
        await run(
            admin_argv(state_dir, "issue-credential", "--offline", "--role", "gateway", "--name", "gw-1",
                   "--dns", "gateway.bank.example", "--out", str(out), "--json"),
            env=isolated_env(),
        )
    )  # fmt: skip
    old_leaf = _leaf(out / "gw-1.pem")
    renewed = json.loads(
        await run(
            admin_argv(state_dir, "renew-credential", "--offline", "--name", "gw-1", "--out", str(out), "--days", "10",
                   "--yes", "--json"),
            env=isolated_env(),
        )
    )  # fmt: skip
    new_leaf = _leaf(out / "gw-1.pem")
    assert renewed["mode"] == "offline"
    assert renewed["old_serial_number"] == issued["serial_number"] != renewed["serial_number"]
    assert _names(new_leaf) == _names(old_leaf)
    assert new_leaf.public_key() != old_leaf.public_key()
    lifetime = new_leaf.not_valid_after_utc - new_leaf.not_valid_before_utc
    assert timedelta(days=10) <= lifetime <= timedelta(days=10, minutes=5)
    with pytest.raises(AssertionError, match="--revoke-old needs the running CA"):
        await run(
            admin_argv(state_dir, "renew-credential", "--offline", "--revoke-old", "--name", "gw-1", "--out", str(out)),
            env=isolated_env(),
        )  # fmt: skip

    dev = await ensure_dev_pki_async(state_dir)
    async with running_ca(dev, StoreTarget("sqlite", "sqlite:", state_dir, "ca")) as ca:
        listed = await _credentials(ca, "--role", "gateway")
        assert listed[str(issued["serial_number"])]["state"] == "active"
        assert listed[str(renewed["serial_number"])]["state"] == "active"
        status = await ca.stub("gateway").GetCertificateStatus(
            ca_pb2.GetCertificateStatusRequest(serial_number=renewed["serial_number"], issuer=ca_pb2.ISSUER_INTERNAL)
        )
        assert status.status == ca_pb2.GetCertificateStatusResponse.STATUS_GOOD


def _self_signed(path: Path, *, spiffe: str | None) -> None:
    """Write a self-signed certificate, with `spiffe` as its one URI SAN when given."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not kagi")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    if spiffe is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=False
        )
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("text", "holds no PEM certificate"),
        ("no-spiffe", "has no subject alternative names"),
        ("other-role", "'admin' is not a kagi role"),
        ("leaf-alone", "the internal CA certificate that issued it is not in the file"),
        ("other-root", "issued under another root than this CA's"),
    ],
)
async def test_a_file_that_is_not_a_kagi_credential_is_refused_and_nothing_is_issued(
    ca: RunningCa, tmp_path: Path, content: str, problem: str
) -> None:
    """`renew-credential` on a file that is not a kagi internal credential (text, a certificate without a kagi
    SPIFFE ID or of an unknown role, a kagi leaf without the internal CA after it, another deployment's
    credential) exits 1 naming the file and the problem, issues nothing (the CA lists no new credential) and
    leaves the files as they were."""
    out = tmp_path / "creds"
    out.mkdir()
    target = out / "thing.pem"
    if content == "text":
        target.write_text("hello\n")
    elif content == "no-spiffe":
        _self_signed(target, spiffe=None)
    elif content == "other-role":
        _self_signed(target, spiffe="spiffe://kagi.internal/admin")
    elif content == "leaf-alone":
        leaf = _leaf(ca.dev.certificate("gateway"))
        target.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    else:
        other = await ensure_dev_pki_async(tmp_path / "other")
        target.write_bytes(other.certificate("gateway").read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    listed_before = await _credentials(ca)
    with pytest.raises(AssertionError) as refused:
        await run(
            admin_argv(ca.dev.state_dir, "renew-credential", "--name", "thing", "--out", str(out), "--yes"),
            env=isolated_env(KAGI_CA_TARGET=ca.address),
        )
    message = " ".join(str(refused.value).split())
    assert "exited 1:" in message
    assert f"{target} is not a kagi internal credential" in message
    assert problem in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert await _credentials(ca) == listed_before
