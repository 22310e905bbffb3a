"""The root key is kept apart from the online CA: `init-ca` writes it to a path the operator chooses, outside the
CA directory, under a passphrase of its own; `sign-root-crl --root-key` takes it from there; the CA service starts
and issues with no root key anywhere; `kagi dev` keeps its dev root key under <state>/offline/; a CA directory made
before this rule keeps working, warns, and is moved out by `move-root-key` (or by `kagi dev` itself)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.admin import AdminContext
from kagi.cli.admin_ca import init_ca_command, move_root_key_command, sign_root_crl_command
from kagi.errors import InvalidArgument, KagiError
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import Secret
from services.ca_service.adapters.ca_directory import CaDirectory, OfflineRootKey
from services.ca_service.adapters.file_signer import FileSigner, write_key_file
from services.ca_service.creation import DevPki, ensure_dev_pki, init_ca
from services.ca_service.domain.errors import CaKeyUnreadable
from services.ca_service.main import start_ca
from tests.integration.ca.ca_service_harness import StoreTarget, ca_settings, issue_request

CA_PASSPHRASE = "online keys' passphrase 1"
ROOT_PASSPHRASE = "the root's own passphrase 2"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AdminContext:
    """An admin context on tmp_path, the online passphrase in KAGI_CA_KEY_PASSPHRASE and the root's in a file."""
    monkeypatch.setenv("KAGI_CA_KEY_PASSPHRASE", CA_PASSPHRASE)
    monkeypatch.delenv("KAGI_CA_KEY_PASSPHRASE_FILE", raising=False)
    monkeypatch.delenv("KAGI_CA_ROOT_KEY_PASSPHRASE_FILE", raising=False)
    (tmp_path / "root-passphrase").write_text(ROOT_PASSPHRASE + "\n")
    return AdminContext(tmp_path, ensure_dev_pki(tmp_path / "dev").operator, {})


def _invoke(command: object, args: list[str], admin: AdminContext) -> Result:
    return CliRunner().invoke(command, args, obj=admin)  # type: ignore[arg-type]


def _init(admin: AdminContext, root_key_out: Path, *extra: str) -> Result:
    args = ["--root-key-out", str(root_key_out), "--root-passphrase-file", str(admin.state_dir / "root-passphrase")]
    return _invoke(init_ca_command, [*args, *extra], admin)


def test_init_ca_writes_the_root_key_outside_the_ca_directory_under_its_own_passphrase(admin: AdminContext) -> None:
    """init-ca leaves no root key in the CA directory; the key at --root-key-out is encrypted, 0600, pairs with
    root.pem and opens with the root passphrase only, not with the online keys' passphrase."""
    out = admin.state_dir / "usb" / "root-key.pem"
    result = _init(admin, out)
    assert result.exit_code == 0, result.output
    directory = CaDirectory(admin.state_dir / "ca")
    assert not directory.holds_root_key()
    assert not list(directory.path.glob("root-key*"))
    assert b"ENCRYPTED PRIVATE KEY" in out.read_bytes()
    assert _mode(out) == 0o600
    assert _mode(out.parent) == 0o700
    root = directory.open_root(OfflineRootKey(out, Secret(ROOT_PASSPHRASE)))
    assert root.certificate == x509.load_pem_x509_certificate(directory.cert_path("root").read_bytes())
    with pytest.raises(CaKeyUnreadable):
        directory.open_root(OfflineRootKey(out, Secret(CA_PASSPHRASE)))
    assert CA_PASSPHRASE not in result.output
    assert ROOT_PASSPHRASE not in result.output


def test_init_ca_refuses_a_root_key_inside_the_ca_directory_or_under_the_online_passphrase(
    admin: AdminContext,
) -> None:
    """--root-key-out inside the CA directory (ROOT_KEY_IN_CA_DIR) or a root passphrase equal to the online one
    (ROOT_PASSPHRASE_NOT_SEPARATE) is refused before anything is written; an existing file there is never
    overwritten (CA_KEY_EXISTS)."""
    inside = _init(admin, admin.state_dir / "ca" / "keys" / "root-key.pem")
    assert inside.exit_code != 0
    assert "ROOT_KEY_IN_CA_DIR" in inside.output
    assert not (admin.state_dir / "ca").exists()
    (admin.state_dir / "same").write_text(CA_PASSPHRASE + "\n")
    same = _invoke(
        init_ca_command,
        ["--root-key-out", str(admin.state_dir / "k.pem"), "--root-passphrase-file", str(admin.state_dir / "same")],
        admin,
    )
    assert same.exit_code != 0
    assert "ROOT_PASSPHRASE_NOT_SEPARATE" in same.output
    assert not (admin.state_dir / "k.pem").exists()
    assert not CaDirectory(admin.state_dir / "ca").initialized()
    taken = admin.state_dir / "taken.pem"
    taken.write_bytes(b"something else")
    refused = _init(admin, taken)
    assert "CA_KEY_EXISTS" in refused.output
    assert taken.read_bytes() == b"something else"
    assert not CaDirectory(admin.state_dir / "ca").initialized()


async def test_the_ca_starts_and_issues_with_the_root_key_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the root key nowhere on disk (the offline directory removed), the CA service starts, issues a
    customer certificate over gRPC and serves the root's CRL; it opens no key file outside its CA directory."""
    dev = ensure_dev_pki(tmp_path)
    shutil.rmtree(dev.root_key_file.parent)
    opened: list[Path] = []
    original = FileSigner.open.__func__  # type: ignore[attr-defined]

    def recording_open(cls: type[FileSigner], path: Path, passphrase: object) -> FileSigner:
        opened.append(Path(path))
        signer: FileSigner = original(cls, path, passphrase)
        return signer

    monkeypatch.setattr(FileSigner, "open", classmethod(recording_open))
    component = await start_ca(ca_settings(dev, StoreTarget("sqlite", "sqlite:", tmp_path, "ca")))
    try:
        async with open_channel(f"localhost:{component.port}", dev.tls("enrollment")) as channel:
            stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
            issued = await stub.IssueCertificate(issue_request())
            crl = await stub.GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_ROOT))
    finally:
        await component.stop(0)
    assert issued.certificate.state == ca_pb2.Certificate.STATE_ACTIVE
    assert crl.crl_number >= 1
    assert opened
    assert all(path.resolve().is_relative_to(dev.ca_dir.resolve()) for path in opened), opened
    assert not any(path.name.startswith("root") for path in opened)


def test_dev_pki_keeps_its_root_key_offline_under_its_own_passphrase(tmp_path: Path) -> None:
    """`kagi dev`'s PKI keeps the root key in <state>/offline/root-key.pem (0600, directory 0700) under
    <state>/offline/root-passphrase, which differs from the CA passphrase; the CA directory holds no root key."""
    dev = ensure_dev_pki(tmp_path)
    assert dev.root_key_file == tmp_path / "offline" / "root-key.pem"
    assert dev.root_passphrase_file == tmp_path / "offline" / "root-passphrase"
    assert _mode(tmp_path / "offline") == 0o700
    assert _mode(dev.root_key_file) == 0o600
    assert _mode(dev.root_passphrase_file) == 0o600
    assert dev.root_passphrase_file.read_bytes().strip() != dev.passphrase_file.read_bytes().strip()
    assert not CaDirectory(dev.ca_dir).holds_root_key()
    assert not dev.root_key_file.resolve().is_relative_to(dev.ca_dir.resolve())
    CaDirectory(dev.ca_dir).open_root(dev.root_key)


def test_sign_root_crl_takes_the_root_key_from_its_path_with_its_own_passphrase(admin: AdminContext) -> None:
    """sign-root-crl --root-key signs the next root CRL with the offline key and its passphrase; the online
    passphrase does not open it, and a root key inside the CA directory is refused (ROOT_KEY_IN_CA_DIR)."""
    out = admin.state_dir / "usb" / "root-key.pem"
    assert _init(admin, out).exit_code == 0
    directory = CaDirectory(admin.state_dir / "ca")
    before = x509.load_der_x509_crl(directory.root_crl() or b"").extensions.get_extension_for_class(x509.CRLNumber)
    (admin.state_dir / "online").write_text(CA_PASSPHRASE + "\n")

    def sign(root_key: Path, passphrase_file: str) -> Result:
        args = ["--root-key", str(root_key), "--root-passphrase-file", str(admin.state_dir / passphrase_file)]
        return _invoke(sign_root_crl_command, [*args, "--yes"], admin)

    wrong = sign(out, "online")
    assert wrong.exit_code != 0
    assert "cannot be decrypted" in wrong.output
    shutil.copy(out, directory.path / "copy-key.pem")
    inside = sign(directory.path / "copy-key.pem", "root-passphrase")
    assert "ROOT_KEY_IN_CA_DIR" in inside.output
    signed = sign(out, "root-passphrase")
    assert signed.exit_code == 0, signed.output
    assert f"root CRL {before.value.crl_number + 1} signed" in signed.output
    crl = x509.load_der_x509_crl(directory.root_crl() or b"")
    root = x509.load_pem_x509_certificate(directory.cert_path("root").read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]


def _make_legacy(dev: DevPki) -> None:
    """Put the dev root key back in the CA directory under the online passphrase, as before the root went offline."""
    signer = FileSigner.open(dev.root_key_file, dev.root_key.passphrase)
    passphrase = Secret(dev.passphrase_file.read_bytes().strip())
    write_key_file(CaDirectory(dev.ca_dir).root_key_path, signer.encrypted_pkcs8(passphrase))
    dev.root_key_file.unlink()


async def test_a_ca_directory_still_holding_the_root_key_keeps_working_warns_and_moves_it_out(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A CA directory made before the root went offline (root-key.pem inside, under the online passphrase): the
    CA still starts and issues, warning that the root key belongs offline; `move-root-key` re-encrypts it under
    the root's own passphrase at --root-key-out, deletes it from the CA directory, and sign-root-crl then works
    from the new path."""
    dev = ensure_dev_pki(tmp_path)
    _make_legacy(dev)
    directory = CaDirectory(dev.ca_dir)
    assert directory.holds_root_key()
    component = await start_ca(ca_settings(dev, StoreTarget("sqlite", "sqlite:", tmp_path, "ca")))
    try:
        async with open_channel(f"localhost:{component.port}", dev.tls("enrollment")) as channel:
            issued = await ca_pb2_grpc.CertificateAuthorityServiceStub(channel).IssueCertificate(issue_request())
    finally:
        await component.stop(0)
    assert issued.certificate.serial_number
    captured = capfd.readouterr()
    assert "the root CA key is in the CA directory" in captured.out + captured.err

    admin = AdminContext(tmp_path, dev.operator, {})
    (tmp_path / "new-root-passphrase").write_text(ROOT_PASSPHRASE + "\n")
    out = tmp_path / "vault" / "root-key.pem"
    env = {"KAGI_CA_KEY_PASSPHRASE_FILE": str(dev.passphrase_file)}
    moved = CliRunner(env=env).invoke(
        move_root_key_command,
        [
            "--ca-dir",
            str(dev.ca_dir),
            "--root-key-out",
            str(out),
            "--root-passphrase-file",
            str(tmp_path / "new-root-passphrase"),
            "--yes",
        ],
        obj=admin,
    )
    assert moved.exit_code == 0, moved.output
    assert not directory.holds_root_key()
    assert _mode(out) == 0o600
    directory.open_root(OfflineRootKey(out, Secret(ROOT_PASSPHRASE)))
    signed = _invoke(
        sign_root_crl_command,
        [
            "--ca-dir",
            str(dev.ca_dir),
            "--root-key",
            str(out),
            "--root-passphrase-file",
            str(tmp_path / "new-root-passphrase"),
            "--yes",
        ],
        admin,
    )
    assert signed.exit_code == 0, signed.output


def test_kagi_dev_moves_a_legacy_root_key_to_its_offline_directory(tmp_path: Path) -> None:
    """A dev state made before the root went offline is migrated on the next start: the root key leaves the CA
    directory for <state>/offline/root-key.pem under the dev root passphrase, and the dev PKI is otherwise the same."""
    first = ensure_dev_pki(tmp_path)
    _make_legacy(first)
    again = ensure_dev_pki(tmp_path)
    assert not again.created
    assert not CaDirectory(again.ca_dir).holds_root_key()
    assert again.root_key_file.exists()
    CaDirectory(again.ca_dir).open_root(again.root_key)
    assert again.root.read_bytes() == first.root.read_bytes()


def test_the_library_refuses_what_the_commands_refuse(tmp_path: Path) -> None:
    """init_ca itself (not only the command) refuses a root key path inside the CA directory and a shared
    passphrase, so no caller can put the root key back beside the online keys."""
    with pytest.raises(InvalidArgument) as inside:
        init_ca(tmp_path / "ca", Secret("a"), root_key=OfflineRootKey(tmp_path / "ca" / "root-key.pem", Secret("b")))
    assert inside.value.reason == "ROOT_KEY_IN_CA_DIR"
    with pytest.raises(KagiError) as shared:
        init_ca(tmp_path / "ca", Secret("a"), root_key=OfflineRootKey(tmp_path / "root-key.pem", Secret("a")))
    assert shared.value.reason == "ROOT_PASSPHRASE_NOT_SEPARATE"
    assert not CaDirectory(tmp_path / "ca").initialized()
