"""The Signer port: what the CA needs from a private key (sign, public key, algorithm), whatever holds it.

A file-backed signer lives in `adapters`; a PKCS#11 HSM can be added the same way. `signing_key` adapts any
Signer to the private-key interface `cryptography`'s certificate, CRL and OCSP builders call, so the CA logic
never touches key material.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NoReturn, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils

from services.ca_service.domain.keys import CaPrivateKey, CaPublicKey


class SignatureAlgorithm(Enum):
    """How a Signer signs: the key type, the padding for RSA, and the digest."""

    ECDSA_SHA256 = "ecdsa-with-SHA256"
    ECDSA_SHA384 = "ecdsa-with-SHA384"
    RSA_PKCS1_SHA256 = "sha256WithRSAEncryption"

    @property
    def hash(self) -> hashes.SHA256 | hashes.SHA384:
        """Return the digest the signature is computed over."""
        return hashes.SHA384() if self is SignatureAlgorithm.ECDSA_SHA384 else hashes.SHA256()


def signature_algorithm_for(public_key: CaPublicKey) -> SignatureAlgorithm:
    """Pick the signature a CA key makes: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name == "secp384r1":
            return SignatureAlgorithm.ECDSA_SHA384
        return SignatureAlgorithm.ECDSA_SHA256
    return SignatureAlgorithm.RSA_PKCS1_SHA256


class Signer(Protocol):
    """A CA private key, kept wherever it is kept: it signs bytes and shows its public half."""

    @property
    def algorithm(self) -> SignatureAlgorithm:
        """Return the one signature algorithm this signer produces."""
        ...

    def public_key(self) -> CaPublicKey:
        """Return the public half of the signing key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the signature over `data` (DER ECDSA-Sig-Value, or PKCS#1 v1.5 for RSA)."""
        ...


def signing_key(signer: Signer) -> CaPrivateKey:
    """Wrap a Signer as the private-key object `cryptography`'s builders accept."""
    if isinstance(signer.public_key(), ec.EllipticCurvePublicKey):
        return _EcSignerKey(signer)
    return _RsaSignerKey(signer)


def _refuse() -> NoReturn:
    # The facade exists only to sign; anything that would reveal or use the key otherwise is refused.
    raise TypeError("a CA signer only signs; its private key cannot be read or used for anything else")


class _EcSignerKey(ec.EllipticCurvePrivateKey):
    """_EcSignerKey lets an EC Signer stand where `cryptography` expects an EC private key."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        public_key = signer.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise TypeError("not an EC signer")
        self._public_key = public_key

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        algorithm = getattr(signature_algorithm, "algorithm", None)
        if not isinstance(signature_algorithm, ec.ECDSA) or isinstance(algorithm, asym_utils.Prehashed):
            _refuse()
        _check_hash(self._signer, algorithm)
        return self._signer.sign(bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def __copy__(self) -> _EcSignerKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _EcSignerKey:
        return self

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _refuse()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _refuse()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _refuse()


class _RsaSignerKey(rsa.RSAPrivateKey):
    """_RsaSignerKey lets an RSA Signer stand where `cryptography` expects an RSA private key."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        public_key = signer.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise TypeError("not an RSA signer")
        self._public_key = public_key

    def sign(
        self,
        data: bytes,
        padding: rsa_padding.AsymmetricPadding,
        algorithm: asym_utils.Prehashed | hashes.HashAlgorithm | asym_utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding, rsa_padding.PKCS1v15):
            _refuse()
        _check_hash(self._signer, algorithm)
        return self._signer.sign(bytes(data))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def __copy__(self) -> _RsaSignerKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _RsaSignerKey:
        return self

    def decrypt(self, ciphertext: bytes, padding: rsa_padding.AsymmetricPadding) -> bytes:
        _refuse()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _refuse()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _refuse()


def _check_hash(signer: Signer, algorithm: object) -> None:
    # A builder asking for another digest than the signer makes would produce a certificate whose
    # signatureAlgorithm field lies about its signature; refuse rather than emit it.
    expected = signer.algorithm.hash
    if not isinstance(algorithm, hashes.HashAlgorithm) or algorithm.name != expected.name:
        raise ValueError(f"signer {signer.algorithm.value} cannot sign with {algorithm!r}")
