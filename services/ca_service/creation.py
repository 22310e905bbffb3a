"""Creating a CA once (`kagi admin init-ca`), and the development PKI `kagi dev` runs on (`ensure_dev_pki`).

The root's key never lives in the CA directory the service reads: `init_ca` writes it where the operator says,
under its own passphrase, and `ensure_dev_pki` keeps the dev root key in <state-dir>/offline/ (root-key.pem and
root-passphrase), a directory the CA service never opens.

`ensure_dev_pki` issues the dev service certificates through the CA's own use case on the CA's store, so they
are reserved, recorded and audited like any other: the CA never signs a certificate it has no record of.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kagi.clock import Clock, SystemClock
from kagi.errors import KagiError
from kagi.files import write_file
from kagi.runtime.identity import Role
from kagi.runtime.settings import INTERNAL_SERVER_ROLES, Secret, TlsFiles, role_dns_name
from services.ca_service.adapters.ca_directory import CaDirectory, LoadedCa, OfflineRootKey
from services.ca_service.adapters.file_signer import Passphrase
from services.ca_service.app.access import BOOTSTRAP, Actor
from services.ca_service.app.ocsp_signers import record_ocsp_signers
from services.ca_service.app.records import CertificateRecord
from services.ca_service.domain.identity import ServiceIdentity
from services.ca_service.domain.keys import KeyAlgorithm
from services.ca_service.domain.revocation import RevocationReason
from services.ca_service.domain.serials import serial_hex
from services.ca_service.domain.settings import CaKind, PkiSettings
from services.ca_service.main import CaRuntime, open_runtime

DEV_SERVICE_ROLES = ("ca", "otp", "enrollment", "gateway")
"""The components `kagi dev` runs, each with its own mTLS certificate."""

DEV_RENEW_WITHIN = timedelta(days=7)
"""A dev certificate this close to expiry is replaced on the next start."""

# tls/ca.pem is the root (what every client trusts), so the CA service's own certificate needs another name.
_TLS_NAMES = {"ca": "ca-service", "operator": "developer"}

PASSPHRASE_FILE = "ca-passphrase"
"""The name of the dev CA passphrase file under <state-dir>/secrets/."""

OFFLINE_DIR = "offline"
"""Where, under the state dir, `kagi dev` keeps what stays offline in production: the root key."""

ROOT_KEY_FILE = "root-key.pem"
"""The dev root key (encrypted PKCS#8) under <state-dir>/offline/."""

ROOT_PASSPHRASE_FILE = "root-passphrase"
"""The dev root key's own passphrase under <state-dir>/offline/."""


def init_ca(
    ca_dir: Path,
    passphrase: Passphrase,
    *,
    root_key: OfflineRootKey,
    settings: PkiSettings | None = None,
    algorithm: KeyAlgorithm | None = None,
    clock: Clock | None = None,
) -> LoadedCa:
    """Create the root, customer and internal CAs and their OCSP signers in CA_DIR, once.

    The root's key is written to `root_key.path`, outside `ca_dir`, under its own passphrase. Raises
    AlreadyExists (and changes nothing) when a CA is there already or a file is at `root_key.path`.
    """
    settings = settings or PkiSettings()
    return CaDirectory(ca_dir).create(
        passphrase,
        root_key=root_key,
        settings=settings,
        clock=clock or SystemClock(),
        algorithm=algorithm or settings.key_algorithm,
    )


@dataclass(frozen=True)
class DevPki:
    """Where `ensure_dev_pki` put everything: the CA, its passphrase file, the offline root key and its
    own passphrase file (<state-dir>/offline/, never read by the CA service), and the mTLS files.

    `services` maps ca, otp, enrollment and gateway to their TlsFiles (leaf + internal CA chain, key, root):
    tls/<role>.pem and tls/<role>-key.pem, except the CA service's tls/ca-service.pem (tls/ca.pem is the
    root); `operator` is the developer's operator identity (tls/developer.pem).
    """

    state_dir: Path
    ca_dir: Path
    passphrase_file: Path
    root_file: Path
    services: Mapping[str, TlsFiles]
    operator: TlsFiles
    created: bool
    root_key_file: Path
    root_passphrase_file: Path

    @property
    def root_key(self) -> OfflineRootKey:
        """Return the dev root key with its passphrase (what `kagi admin sign-root-crl --root-key` takes)."""
        return OfflineRootKey(self.root_key_file, Secret(self.root_passphrase_file.read_bytes().strip()))

    def tls(self, role: str) -> TlsFiles:
        """Return the mTLS files of a dev service role (or "operator")."""
        return self.operator if role == "operator" else self.services[role]

    def certificate(self, role: str) -> Path:
        """Return the leaf + internal CA chain file of a role."""
        return self.tls(role).cert_file

    def key(self, role: str) -> Path:
        """Return the (unencrypted, 0600) private key file of a role."""
        return self.tls(role).key_file

    @property
    def root(self) -> Path:
        """Return tls/ca.pem, the root certificate every component trusts."""
        return self.root_file


def ensure_dev_pki(
    state_dir: Path,
    *,
    store_url: str = "sqlite:",
    algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256,
    settings: PkiSettings | None = None,
    clock: Clock | None = None,
) -> DevPki:
    """Create (first start) or reuse (later starts) the dev CA and mTLS certificates.

    Callable from synchronous code and from inside a running event loop alike: the store work runs on its
    own loop in a helper thread.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kagi-dev-pki") as pool:
        future = pool.submit(
            asyncio.run,
            ensure_dev_pki_async(state_dir, store_url=store_url, algorithm=algorithm, settings=settings, clock=clock),
        )
        return future.result()


async def ensure_dev_pki_async(
    state_dir: Path,
    *,
    store_url: str = "sqlite:",
    algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256,
    settings: PkiSettings | None = None,
    clock: Clock | None = None,
) -> DevPki:
    """Do what `ensure_dev_pki` does, for callers already on an event loop of their own."""
    state_dir = Path(state_dir)
    settings = settings or PkiSettings(key_algorithm=algorithm)
    clock = clock or SystemClock()
    passphrase_file = _ensure_passphrase(state_dir / "secrets", PASSPHRASE_FILE)
    passphrase = Secret(passphrase_file.read_bytes().strip())
    offline = state_dir / OFFLINE_DIR
    root_passphrase_file = _ensure_passphrase(offline, ROOT_PASSPHRASE_FILE)
    root_key = OfflineRootKey(offline / ROOT_KEY_FILE, Secret(root_passphrase_file.read_bytes().strip()))
    directory = CaDirectory(state_dir / "ca")
    created = not directory.initialized()
    if created:
        _set_aside_orphaned_root_key(root_key.path)
        loaded = directory.create(passphrase, root_key=root_key, settings=settings, clock=clock, algorithm=algorithm)
    else:
        if directory.holds_root_key():  # made before the root went offline: move its key out, once
            _move_root_key_out(directory, passphrase, root_key)
        loaded = directory.load(passphrase)
    tls_dir = state_dir / "tls"
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root_file = tls_dir / "ca.pem"
    _replace_file(root_file, loaded.hierarchy.root.pem, 0o644)
    runtime = open_runtime(store_url, state_dir=state_dir, loaded=loaded, pki=settings, clock=clock)
    try:
        await record_ocsp_signers(runtime.issuance, runtime.authorities)
        files = {}
        for role in (*DEV_SERVICE_ROLES, "operator"):
            name = _TLS_NAMES.get(role, role)
            files[role] = TlsFiles(tls_dir / f"{name}.pem", tls_dir / f"{name}-key.pem", root_file)
            await _ensure_leaf(runtime, role, files[role], clock)
    finally:
        await runtime.close()
    operator = files.pop("operator")
    return DevPki(
        state_dir=state_dir,
        ca_dir=directory.path,
        passphrase_file=passphrase_file,
        root_file=root_file,
        services=MappingProxyType(files),
        operator=operator,
        created=created,
        root_key_file=root_key.path,
        root_passphrase_file=root_passphrase_file,
    )


def _move_root_key_out(directory: CaDirectory, passphrase: Secret, root_key: OfflineRootKey) -> None:
    try:
        directory.move_root_key(passphrase, root_key)
    except KagiError:
        if directory.holds_root_key() or not root_key.path.exists():
            raise  # not a concurrent start that moved it a moment ago


def _set_aside_orphaned_root_key(path: Path) -> None:
    """A dev root key left from a CA directory since deleted belongs to no CA: keep it, under another name."""
    if path.exists():
        path.rename(path.with_name(f"{path.name}.orphaned-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"))


def _ensure_passphrase(secrets_dir: Path, name: str) -> Path:
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = secrets_dir / name
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another first start made it a moment ago
            write_file(path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600, replace=False)
    return path


def dev_dns_names(role: str) -> tuple[str, ...]:
    """Return the DNS names of a dev certificate: `localhost`, and the role name (`ca.kagi.internal`) of a server.

    Clients verify a server by its role name whatever address they dial; `localhost` lets a browser reach the
    gateway and a tool check a service by the address it dialled.
    """
    return ("localhost", role_dns_name(role)) if role in INTERNAL_SERVER_ROLES else ("localhost",)


async def _ensure_leaf(runtime: CaRuntime, role: str, files: TlsFiles, clock: Clock) -> None:
    internal = runtime.authorities.issuing(CaKind.INTERNAL)
    current = _read_leaf(files)
    dns_names = dev_dns_names(role)
    if current is not None and set(dns_names) <= set(_dns_names(current)):
        fresh = clock.now() + DEV_RENEW_WITHIN.total_seconds() < current.not_valid_after_utc.timestamp()
        ours = current.issuer == internal.name and _issued_by(current, internal.certificate)
        answer = await runtime.revocation.status(serial_hex(current.serial_number), CaKind.INTERNAL) if ours else None
        if fresh and answer is not None and answer.record is not None and not answer.record.revoked:
            return
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    identity = ServiceIdentity(role, dns_names=dns_names, ip_addresses=("127.0.0.1", "::1"))
    prepared = runtime.issuance.prepare(csr=csr, identity=identity, profile="service", actor=BOOTSTRAP)
    record = await runtime.issuance.issue(prepared, request_id="", actor=BOOTSTRAP)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _replace_file(files.key_file, key_pem, 0o600)
    _replace_file(files.cert_file, record.certificate_pem.encode() + internal.pem, 0o644)
    if current is not None:
        # The replaced certificate is done with: revoke it so it cannot be reused from an old copy.
        try:
            await runtime.revocation.revoke(
                serial_hex(current.serial_number), RevocationReason.SUPERSEDED, actor=BOOTSTRAP
            )
        except Exception:  # unknown to this store (a wiped store) or already revoked: nothing to do
            return


def _read_leaf(files: TlsFiles) -> x509.Certificate | None:
    if not files.cert_file.exists() or not files.key_file.exists():
        return None
    try:
        certificates = x509.load_pem_x509_certificates(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    except ValueError:
        return None
    leaf = certificates[0] if certificates else None
    if leaf is None or leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return None
    return leaf


def _dns_names(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.DNSName)


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except Exception:  # wrong key type, wrong signature, wrong issuer: all mean "not ours"
        return False
    return True


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically with `mode`, unless it holds exactly that already."""
    if path.exists() and path.read_bytes() == data:
        return
    write_file(path, data, mode)


async def issue_service_certificate(
    loaded: LoadedCa,
    csr: bytes,
    identity: ServiceIdentity,
    *,
    state_dir: Path,
    store_url: str = "sqlite:",
    namespace: str = "ca",
    settings: PkiSettings | None = None,
    lifetime: timedelta | None = None,
    request_id: str = "",
    actor_name: str = "operator-offline",
    clock: Clock | None = None,
) -> CertificateRecord:
    """Issue an internal (service profile) certificate from the CA's key files, the CA service not running.

    This is `kagi admin issue-credential --offline`.

    It opens the CA's own store (the same `store_url`, `state_dir` and `namespace` the CA uses) and goes through
    the CA's use case, so the certificate is reserved, recorded and audited exactly as an online issuance: the
    CA lists and revokes it as soon as it runs on that store. The audit record names `actor_name`, with the
    operator role. `lifetime` (default: the service profile's 90 days) is kept inside the internal CA's own
    validity.
    """
    settings = settings or PkiSettings()
    clock = clock or SystemClock()
    actor = Actor(actor_name, Role.OPERATOR)
    runtime = open_runtime(
        store_url, state_dir=state_dir, loaded=loaded, pki=settings, clock=clock, namespace=namespace
    )
    try:
        prepared = runtime.issuance.prepare(
            csr=csr, identity=identity, profile="service", actor=actor, lifetime=lifetime
        )
        return await runtime.issuance.issue(prepared, request_id=request_id, actor=actor)
    finally:
        await runtime.close()
