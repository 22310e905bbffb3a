"""Key algorithms the CA uses for itself, their generation, and the policy on keys it certifies."""

from __future__ import annotations

from enum import Enum

from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from services.ca_service.domain.errors import (
    InvalidPkiSettings,
    KeyTooWeak,
    UnsupportedCurve,
    UnsupportedKeyType,
)

CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""A private key type the CA may sign with."""

CaPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
"""A public key type the CA certifies (and signs with)."""

RSA_MIN_BITS = 2048
"""The smallest RSA modulus the CA certifies."""

# An upper bound keeps a hostile CSR from making every later signature check on it expensive.
RSA_MAX_BITS = 8192
"""The largest RSA modulus the CA certifies."""

RSA_EXPONENT = 65537
"""The only RSA public exponent the CA certifies."""

_ALLOWED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}


class KeyAlgorithm(Enum):
    """A key type and size the CA can generate for its own keys; P-256 is the default."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


def parse_key_algorithm(text: str) -> KeyAlgorithm:
    """Read a setting such as "ec-p256" or "rsa-3072" (case-insensitive)."""
    try:
        return KeyAlgorithm(text.strip().lower())
    except ValueError:
        allowed = ", ".join(a.value for a in KeyAlgorithm)
        raise InvalidPkiSettings(
            f"unknown key algorithm {text!r}", fields={"key_algorithm": f"must be one of {allowed}"}
        ) from None


def generate_private_key(algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> CaPrivateKey:
    """Make a fresh key of `algorithm` from the operating system's CSPRNG."""
    if algorithm is KeyAlgorithm.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm is KeyAlgorithm.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = 2048 if algorithm is KeyAlgorithm.RSA_2048 else 3072
    return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=bits)


def key_algorithm_of(public_key: CaPublicKey) -> KeyAlgorithm | None:
    """Name the KeyAlgorithm a public key belongs to, or None for other sizes."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": KeyAlgorithm.EC_P256, "secp384r1": KeyAlgorithm.EC_P384}.get(public_key.curve.name)
    return {2048: KeyAlgorithm.RSA_2048, 3072: KeyAlgorithm.RSA_3072}.get(public_key.key_size)


def describe_key(public_key: CaPublicKey) -> str:
    """Return a short human name for a key, such as "EC P-256" or "RSA 2048"."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {_ALLOWED_CURVES.get(public_key.curve.name, public_key.curve.name)}"
    return f"RSA {public_key.key_size}"


def check_subject_key(public_key: PublicKeyTypes, *, field: str = "csr") -> CaPublicKey:
    """Return the key if policy allows it, else raise naming the rule it breaks.

    Policy: RSA of 2048-8192 bits with exponent 65537, or EC on P-256 or P-384. Everything else (Ed25519,
    Ed448, DSA, P-521, secp256k1, ...) is refused: relying parties in the bank's estate do not all accept it.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        exponent = public_key.public_numbers().e
        if bits < RSA_MIN_BITS:
            raise KeyTooWeak(
                f"RSA key of {bits} bits is too weak",
                fields={field: f"RSA keys must be at least {RSA_MIN_BITS} bits (got {bits})"},
            )
        if bits > RSA_MAX_BITS:
            raise UnsupportedKeyType(
                f"RSA key of {bits} bits is too large",
                fields={field: f"RSA keys must be at most {RSA_MAX_BITS} bits (got {bits})"},
            )
        if exponent != RSA_EXPONENT:
            raise KeyTooWeak(
                f"RSA public exponent {exponent} is not allowed",
                fields={field: f"RSA public exponent must be {RSA_EXPONENT} (got {exponent})"},
            )
        return public_key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _ALLOWED_CURVES:
            raise UnsupportedCurve(
                f"elliptic curve {public_key.curve.name} is not supported",
                fields={field: f"EC keys must be on P-256 or P-384 (got {public_key.curve.name})"},
            )
        return public_key
    raise UnsupportedKeyType(
        f"{_key_type_name(public_key)} keys are not supported",
        fields={
            field: f"key must be RSA (>= {RSA_MIN_BITS} bits) or EC P-256/P-384 (got {_key_type_name(public_key)})"
        },
    )


def _key_type_name(public_key: PublicKeyTypes) -> str:
    names: list[tuple[type, str]] = [
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
        (dsa.DSAPublicKey, "DSA"),
        (x25519.X25519PublicKey, "X25519"),
        (x448.X448PublicKey, "X448"),
    ]
    for key_type, name in names:
        if isinstance(public_key, key_type):
            return name
    return type(public_key).__name__
