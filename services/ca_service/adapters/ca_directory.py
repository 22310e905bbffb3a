"""The CA directory: the three CAs' and the OCSP signers' keys (encrypted PKCS#8) and certificates (PEM) on disk.

Layout of the directory (mode 0700; keys 0600, certificates 0644):

    root.pem, root.crl                      the root CA's certificate and its CRL (signed offline)
    customer.pem, customer-key.pem          the customer CA
    internal.pem, internal-key.pem          the internal CA
    <kind>-ocsp-<id>.pem, <kind>-ocsp-<id>-key.pem
                                            delegated OCSP signers of the customer and internal CAs; the one
                                            with the latest notAfter is used, older ones may be deleted

The root's key is not here: `create` writes it to a path outside this directory, under a passphrase of its own
(an `OfflineRootKey`), and only `open_root` (the offline ceremonies: signing the root's CRL) ever opens it. A
directory made before that rule still holds root-key.pem: the service keeps working without opening it and warns,
and `move_root_key` moves it out (`kagi admin move-root-key`).

Nothing here ever writes over an existing file: initialising twice fails instead of replacing a CA key.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kagi.clock import Clock
from kagi.errors import AlreadyExists, InvalidArgument
from kagi.files import write_file
from services.ca_service.adapters.file_signer import FileSigner, Passphrase, write_key_file
from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.crl import SignedCrl, build_crl
from services.ca_service.domain.errors import CaKeyUnreadable
from services.ca_service.domain.hierarchy import (
    ISSUING_KINDS,
    DelegatedOcspSigner,
    Hierarchy,
    build_intermediate,
    build_root,
    issue_ocsp_signer,
)
from services.ca_service.domain.keys import CaPublicKey, KeyAlgorithm
from services.ca_service.domain.settings import CaKind, PkiSettings
from services.ca_service.domain.signer import SignatureAlgorithm, signature_algorithm_for


class OfflineKeySigner:
    """Stands for a CA whose key stays closed (the root, in the running service): it refuses
    to sign, but lets the CA's certificate be paired and checked."""

    def __init__(self, public_key: CaPublicKey) -> None:
        self._public_key = public_key
        self._algorithm = signature_algorithm_for(public_key)

    @property
    def algorithm(self) -> SignatureAlgorithm:
        """Return the signature algorithm of the key."""
        return self._algorithm

    def public_key(self) -> CaPublicKey:
        """Return the public half of the key."""
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """Alway refuses: this key is offline."""
        raise CaKeyUnreadable("this CA's key is offline; it signs nothing in the running service")


@dataclass(frozen=True)
class OfflineRootKey:
    """Where the root's encrypted key lives, outside the CA directory, and its own passphrase."""

    path: Path
    passphrase: Passphrase

    def __repr__(self) -> str:
        return f"OfflineRootKey({str(self.path)!r})"


def _passphrase_bytes(passphrase: Passphrase) -> bytes:
    return passphrase if isinstance(passphrase, bytes) else passphrase.reveal()


@dataclass(frozen=True)
class LoadedCa:
    """The hierarchy and the current OCSP signers read from a CA directory."""

    hierarchy: Hierarchy
    delegates: dict[CaKind, DelegatedOcspSigner]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        write_file(path, data, mode, replace=False)
    except FileExistsError:
        raise AlreadyExists(f"{path} exists already; refusing to overwrite it", reason="CA_FILE_EXISTS") from None


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


class CaDirectory:
    """Creates and reads the CA files under one directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def cert_path(self, name: str) -> Path:
        """Return the certificate file of `name` (root, customer, internal, <kind>-ocsp-<id>)."""
        return self.path / f"{name}.pem"

    def key_path(self, name: str) -> Path:
        """Return the encrypted key file of `name`."""
        return self.path / f"{name}-key.pem"

    def initialized(self) -> bool:
        """Tell whether a CA already lives here (any of the CA files exists)."""
        return any(self.cert_path(k.value).exists() or self.key_path(k.value).exists() for k in CaKind)

    @property
    def root_key_path(self) -> Path:
        """Return where a CA directory made before the root went offline kept the root's key."""
        return self.key_path(CaKind.ROOT.value)

    def holds_root_key(self) -> bool:
        """Tell whether the root's key is (still) in this directory, which it must not be."""
        return self.root_key_path.exists()

    def create(
        self,
        passphrase: Passphrase,
        *,
        root_key: OfflineRootKey,
        settings: PkiSettings,
        clock: Clock,
        algorithm: KeyAlgorithm | None = None,
    ) -> LoadedCa:
        """Make the root, the customer and internal CAs and an OCSP signer for each, once.

        The root's key goes to `root_key.path` (outside this directory) under `root_key.passphrase`, which must
        differ from `passphrase` (the online keys'). Raises AlreadyExists when a CA is already here or a file is
        at `root_key.path`; nothing existing is touched.
        """
        algorithm = algorithm or settings.key_algorithm
        if self.initialized():
            raise AlreadyExists(f"a CA already exists in {self.path}; refusing to overwrite it", reason="CA_EXISTS")
        self._check_offline(root_key, passphrase)
        if root_key.path.exists():
            raise AlreadyExists(f"{root_key.path} exists already; refusing to overwrite it", reason="CA_KEY_EXISTS")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.chmod(0o700)
        signers = {kind: FileSigner.create(self.key_path(kind.value), passphrase, algorithm) for kind in ISSUING_KINDS}
        _make_private_parent(root_key.path)
        signers[CaKind.ROOT] = FileSigner.create(root_key.path, root_key.passphrase, algorithm)
        root = build_root(signers[CaKind.ROOT], settings=settings, clock=clock)
        _write_new(self.cert_path("root"), root.pem, 0o644)
        self.sign_root_crl(root, settings=settings, clock=clock)
        issuing: dict[CaKind, CertificateAuthority] = {}
        for kind in ISSUING_KINDS:
            issuing[kind] = build_intermediate(root, kind, signers[kind], settings=settings, clock=clock)
            _write_new(self.cert_path(kind.value), issuing[kind].pem, 0o644)
        hierarchy = Hierarchy(root=root, customer=issuing[CaKind.CUSTOMER], internal=issuing[CaKind.INTERNAL])
        delegates = {}
        for kind in ISSUING_KINDS:
            signer, name = self.new_ocsp_signer(kind, passphrase, algorithm, clock)
            delegate = issue_ocsp_signer(issuing[kind], signer, settings=settings, clock=clock)
            self.write_ocsp_certificate(name, delegate.certificate)
            delegates[kind] = delegate
        return LoadedCa(hierarchy, delegates)

    def load(self, passphrase: Passphrase) -> LoadedCa:
        """Read the hierarchy and the newest OCSP signer of each issuing CA, checking every pairing.

        The root's key is never opened (nor looked for): the root signs nothing in the running service.
        """
        if not self.initialized():
            raise CaKeyUnreadable(f"no CA in {self.path}: run `kagi admin init-ca` first", reason="CA_NOT_INITIALIZED")
        root_cert = self._certificate(self.cert_path("root"))
        root = CertificateAuthority(CaKind.ROOT, root_cert, OfflineKeySigner(_ca_public_key(root_cert)))
        issuing: dict[CaKind, CertificateAuthority] = {}
        for kind in ISSUING_KINDS:
            certificate = self._certificate(self.cert_path(kind.value))
            _check_issued_by(certificate, root.certificate, f"the {kind.value} CA certificate")
            issuing[kind] = CertificateAuthority(
                kind, certificate, FileSigner.open(self.key_path(kind.value), passphrase)
            )
        hierarchy = Hierarchy(root=root, customer=issuing[CaKind.CUSTOMER], internal=issuing[CaKind.INTERNAL])
        delegates = {kind: self.load_ocsp_signer(issuing[kind], passphrase) for kind in ISSUING_KINDS}
        return LoadedCa(hierarchy, delegates)

    def open_root(self, root_key: OfflineRootKey) -> CertificateAuthority:
        """Pair this directory's root certificate with its offline key (a ceremony: sign-root-crl).

        A key inside this directory is refused: move it out first (`move_root_key`).
        """
        if _inside(root_key.path, self.path):
            raise InvalidArgument(
                f"the root key must be kept outside the CA directory {self.path}; move it with "
                "`kagi admin move-root-key` first",
                reason="ROOT_KEY_IN_CA_DIR",
                fields={"root_key": "must be outside the CA directory"},
            )
        certificate = self._certificate(self.cert_path("root"))
        return CertificateAuthority(CaKind.ROOT, certificate, FileSigner.open(root_key.path, root_key.passphrase))

    def move_root_key(self, passphrase: Passphrase, root_key: OfflineRootKey) -> Path:
        """Take the root's key out of a directory made before the root went offline.

        The key (under the online `passphrase`) is re-encrypted under `root_key.passphrase` (which must differ)
        and written to `root_key.path` (outside this directory, never over a file); once that copy opens and
        pairs with root.pem, the one here is deleted. Returns the new path.
        """
        self._check_offline(root_key, passphrase)
        if not self.holds_root_key():
            raise CaKeyUnreadable(f"no root key in {self.path} to move", reason="ROOT_KEY_NOT_HERE")
        certificate = self._certificate(self.cert_path("root"))
        signer = FileSigner.open(self.root_key_path, passphrase)
        CertificateAuthority(CaKind.ROOT, certificate, signer)  # raises unless the key is root.pem's
        _make_private_parent(root_key.path)
        write_key_file(root_key.path, signer.encrypted_pkcs8(root_key.passphrase))
        self.open_root(root_key)  # the new copy opens and pairs before the old one goes
        self.root_key_path.unlink()
        _sync_directory(self.path)
        return root_key.path

    def _check_offline(self, root_key: OfflineRootKey, passphrase: Passphrase) -> None:
        if _inside(root_key.path, self.path):
            raise InvalidArgument(
                f"the root key must be written outside the CA directory {self.path}",
                reason="ROOT_KEY_IN_CA_DIR",
                fields={"root_key_out": "must be outside the CA directory"},
            )
        if hmac.compare_digest(_passphrase_bytes(root_key.passphrase), _passphrase_bytes(passphrase)):
            raise InvalidArgument(
                "the root key needs a passphrase of its own, not the online CA keys' passphrase",
                reason="ROOT_PASSPHRASE_NOT_SEPARATE",
                fields={"root_passphrase": "must differ from the CA key passphrase"},
            )

    @property
    def root_crl_path(self) -> Path:
        """Return the root's CRL (DER), signed offline and served as it is."""
        return self.path / "root.crl"

    def root_crl(self) -> bytes | None:
        """Return the root's current CRL (DER), or None when none was ever signed."""
        try:
            return self.root_crl_path.read_bytes()
        except FileNotFoundError:
            return None

    def sign_root_crl(self, root: CertificateAuthority, *, settings: PkiSettings, clock: Clock) -> SignedCrl:
        """Sign the root's next CRL with its open key; it lists nothing, as no intermediate is
        revoked, and is valid for `root_crl_validity`, since the root key is opened only at a ceremony."""
        previous = self.root_crl()
        number = 1
        if previous is not None:
            extension = x509.load_der_x509_crl(previous).extensions.get_extension_for_class(x509.CRLNumber)
            number = extension.value.crl_number + 1
        offline = dataclasses.replace(settings, crl_validity=settings.root_crl_validity)
        signed = build_crl(root, [], crl_number=number, settings=offline, clock=clock)
        temporary = self.root_crl_path.with_suffix(".crl.tmp")
        temporary.write_bytes(signed.der)
        temporary.chmod(0o644)
        temporary.replace(self.root_crl_path)
        return signed

    def load_ocsp_signer(self, issuer: CertificateAuthority, passphrase: Passphrase) -> DelegatedOcspSigner:
        """Return the OCSP signer of `issuer` with the latest notAfter whose key opens."""
        candidates: list[tuple[datetime, Path, x509.Certificate]] = []
        for path in self.path.glob(f"{issuer.kind.value}-ocsp-*.pem"):
            if path.name.endswith("-key.pem") or not path.with_name(path.stem + "-key.pem").exists():
                continue
            certificate = self._certificate(path)
            try:
                _check_issued_by(certificate, issuer.certificate, "an OCSP signer")
            except CaKeyUnreadable:
                continue  # signed by an earlier key of this CA: not usable any more
            candidates.append((certificate.not_valid_after_utc, path, certificate))
        if not candidates:
            raise CaKeyUnreadable(f"no OCSP signer for the {issuer.kind.value} CA in {self.path}")
        _, path, certificate = max(candidates, key=lambda item: item[0])
        signer = FileSigner.open(path.with_name(path.stem + "-key.pem"), passphrase)
        return DelegatedOcspSigner(issuer=issuer, certificate=certificate, signer=signer)

    def new_ocsp_signer(
        self, kind: CaKind, passphrase: Passphrase, algorithm: KeyAlgorithm, clock: Clock
    ) -> tuple[FileSigner, str]:
        """Write a fresh encrypted key for an OCSP signer of `kind`; return it and its name."""
        stamp = datetime.fromtimestamp(clock.now(), tz=UTC).strftime("%Y%m%d%H%M%S")
        name = f"{kind.value}-ocsp-{stamp}-{secrets.token_hex(3)}"
        return FileSigner.create(self.key_path(name), passphrase, algorithm), name

    def write_ocsp_certificate(self, name: str, certificate: x509.Certificate) -> Path:
        """Store an OCSP signer's certificate beside its key."""
        path = self.cert_path(name)
        _write_new(path, _pem(certificate), 0o644)
        return path

    def _certificate(self, path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except OSError as exc:
            raise CaKeyUnreadable(f"cannot read {path} ({exc.strerror})") from None
        except ValueError:
            raise CaKeyUnreadable(f"{path} is not a PEM certificate") from None


def _inside(path: Path, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(directory).resolve())


def _make_private_parent(path: Path) -> None:
    parent = Path(path).parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)


def _sync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _ca_public_key(certificate: x509.Certificate) -> CaPublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CaKeyUnreadable("the CA certificate's key is neither EC nor RSA")
    return key


def _check_issued_by(certificate: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise CaKeyUnreadable(f"{what} was not issued by {issuer.subject.rfc4514_string()}") from None
