"""Signers backed by a software key: in memory, or loaded from a passphrase-encrypted PKCS#8 PEM file.

Keys are only ever written encrypted (PKCS#8 with the best encryption `cryptography` offers), and loading
refuses an unencrypted key. No repr, str or error message shows key material or the passphrase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kagi.errors import AlreadyExists
from kagi.files import write_file
from services.ca_service.domain.errors import CaKeyUnreadable
from services.ca_service.domain.keys import (
    CaPrivateKey,
    CaPublicKey,
    KeyAlgorithm,
    generate_private_key,
    key_algorithm_of,
)
from services.ca_service.domain.signer import SignatureAlgorithm, signature_algorithm_for

_ENCRYPTED_PEM_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


class Revealable(Protocol):
    """A wrapped secret (such as kagi's Secret) that hands out its bytes only when asked."""

    def reveal(self) -> bytes:
        """Return the secret bytes."""
        ...


Passphrase = bytes | Revealable
"""A key passphrase: raw bytes, or a secret wrapper whose repr hides it."""


def _passphrase_bytes(passphrase: Passphrase) -> bytes:
    value = passphrase if isinstance(passphrase, bytes) else passphrase.reveal()
    if not value:
        raise CaKeyUnreadable("a CA key passphrase must not be empty", fields={"passphrase": "must not be empty"})
    return value


class PrivateKeySigner:
    """Signs with a `cryptography` private key held in this process's memory."""

    __slots__ = ("_algorithm", "_key", "_public_key")

    def __init__(self, key: CaPrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TypeError("a CA key must be EC or RSA")
        public_key = key.public_key()
        if key_algorithm_of(public_key) is None:
            raise TypeError("a CA key must be EC P-256/P-384 or RSA 2048/3072")
        self._key = key
        self._public_key: CaPublicKey = public_key
        self._algorithm = signature_algorithm_for(public_key)

    @classmethod
    def generate(cls, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> PrivateKeySigner:
        """Make a signer with a fresh key of `algorithm`."""
        return cls(generate_private_key(algorithm))

    @property
    def algorithm(self) -> SignatureAlgorithm:
        """Return the signature algorithm this key produces."""
        return self._algorithm

    def public_key(self) -> CaPublicKey:
        """Return the public half of the key."""
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """Sign `data` with ECDSA or RSA PKCS#1 v1.5 over the algorithm's digest."""
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(self._algorithm.hash))
        return self._key.sign(data, padding.PKCS1v15(), self._algorithm.hash)

    def encrypted_pkcs8(self, passphrase: Passphrase) -> bytes:
        """Return the key as an ENCRYPTED PRIVATE KEY PEM under `passphrase`."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(_passphrase_bytes(passphrase)),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._algorithm.value})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a signer cannot be pickled: its key would leave the process in the clear")


def load_encrypted_pkcs8(pem: bytes, passphrase: Passphrase) -> PrivateKeySigner:
    """Decrypt an ENCRYPTED PRIVATE KEY PEM; a clear key or wrong passphrase is refused."""
    if _ENCRYPTED_PEM_HEADER not in pem:
        raise CaKeyUnreadable("CA keys must be stored as encrypted PKCS#8 (ENCRYPTED PRIVATE KEY)")
    try:
        key = serialization.load_pem_private_key(pem, password=_passphrase_bytes(passphrase))
    except (ValueError, TypeError):
        # Do not chain the exception: its text may quote parts of the file.
        raise CaKeyUnreadable("the CA key cannot be decrypted (wrong passphrase or damaged file)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaKeyUnreadable("the CA key is neither EC nor RSA")
    try:
        return PrivateKeySigner(key)
    except TypeError as exc:
        raise CaKeyUnreadable(str(exc)) from None


class FileSigner(PrivateKeySigner):
    """A CA key kept in an encrypted PKCS#8 file and decrypted into memory when opened."""

    __slots__ = ("_path",)

    def __init__(self, key: CaPrivateKey, path: Path) -> None:
        super().__init__(key)
        self._path = path

    @property
    def path(self) -> Path:
        """Return the key file."""
        return self._path

    @classmethod
    def open(cls, path: Path, passphrase: Passphrase) -> FileSigner:
        """Load and decrypt the key file at `path`."""
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise CaKeyUnreadable(f"the CA key file {path} cannot be read ({exc.strerror})") from None
        loaded = load_encrypted_pkcs8(pem, passphrase)
        return cls(loaded._key, Path(path))

    @classmethod
    def create(cls, path: Path, passphrase: Passphrase, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> FileSigner:
        """Generate a key, writes it encrypted to `path` (mode 0600, never over an existing file)."""
        signer = cls(generate_private_key(algorithm), Path(path))
        write_key_file(Path(path), signer.encrypted_pkcs8(passphrase))
        return signer

    def __repr__(self) -> str:
        return f"FileSigner({self._algorithm.value}, {str(self._path)!r})"


def write_key_file(path: Path, encrypted_pem: bytes) -> None:
    """Write an encrypted key atomically with mode 0600, refusing to replace an existing key."""
    if _ENCRYPTED_PEM_HEADER not in encrypted_pem:
        raise CaKeyUnreadable("refusing to write a CA key that is not encrypted PKCS#8")
    # Never replaced: two initialisations racing cannot overwrite a CA key.
    try:
        write_file(path, encrypted_pem, 0o600, replace=False)
    except FileExistsError:
        raise AlreadyExists(f"a CA key file already exists at {path}", reason="CA_KEY_EXISTS") from None
