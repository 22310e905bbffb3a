"""Certificate signing requests: size cap, PEM/DER parsing, proof of possession and the key policy.

Only the CSR's public key is used; its subject and requested extensions are ignored on purpose, because the
certificate's names come from the verified identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from services.ca_service.domain.errors import (
    BadPemType,
    CsrMalformed,
    CsrSignatureInvalid,
    CsrTooLarge,
    UnsupportedKeyType,
)
from services.ca_service.domain.keys import CaPublicKey, check_subject_key, describe_key

MAX_CSR_BYTES = 16 * 1024
"""Caps a CSR; a P-256 CSR is ~0.4 KiB and an RSA-8192 one ~2.5 KiB."""

_PEM_BEGIN_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")
_CSR_LABELS = (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
_ACCEPTED_CSR_HASHES = ("sha256", "sha384", "sha512")
_FIELD = "csr"


@dataclass(frozen=True, slots=True)
class ValidatedCsr:
    """A CSR whose signature verified and whose key passed the policy."""

    public_key: CaPublicKey
    key_description: str


def parse_csr(data: bytes | str) -> ValidatedCsr:
    """Read a PEM or DER CSR, checks its size, type, self-signature and key policy.

    Every failure raises an InvalidArgument subclass naming the field "csr" and the rule that failed.
    """
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_CSR_BYTES:
        raise CsrTooLarge(
            f"CSR of {len(raw)} bytes is too large",
            fields={_FIELD: f"must be at most {MAX_CSR_BYTES} bytes"},
        )
    if not raw.strip():
        raise CsrMalformed("CSR is empty", fields={_FIELD: "must not be empty"})
    csr = _load(raw)
    try:
        subject_key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError):
        raise UnsupportedKeyType(
            "the CSR's key algorithm is not supported",
            fields={_FIELD: "key must be RSA (>= 2048 bits) or EC P-256/P-384"},
        ) from None
    public_key = check_subject_key(subject_key, field=_FIELD)
    _check_proof_of_possession(csr)
    return ValidatedCsr(public_key=public_key, key_description=describe_key(public_key))


def _load(raw: bytes) -> x509.CertificateSigningRequest:
    stripped = raw.strip()
    if stripped.startswith(b"-----BEGIN"):
        labels = _PEM_BEGIN_RE.findall(stripped)
        if len(labels) != 1:
            raise CsrMalformed(
                "CSR PEM must hold exactly one block", fields={_FIELD: "must be one PEM CERTIFICATE REQUEST block"}
            )
        label = labels[0]
        if label not in _CSR_LABELS:
            raise BadPemType(
                f"PEM block is a {label.decode()}, not a CERTIFICATE REQUEST",
                fields={_FIELD: f"must be a PEM CERTIFICATE REQUEST (got {label.decode()})"},
            )
        try:
            return x509.load_pem_x509_csr(stripped)
        except ValueError:
            raise CsrMalformed("CSR PEM does not decode", fields={_FIELD: "must be a valid PKCS#10 request"}) from None
    try:
        return x509.load_der_x509_csr(raw)
    except ValueError:
        raise CsrMalformed(
            "CSR is neither PEM nor DER PKCS#10", fields={_FIELD: "must be a PKCS#10 request in PEM or DER"}
        ) from None


def _check_proof_of_possession(csr: x509.CertificateSigningRequest) -> None:
    try:
        hash_algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        hash_algorithm = None
    # Weak digests are refused by name first: a SHA-1 signature would otherwise just "not verify".
    if not isinstance(hash_algorithm, hashes.HashAlgorithm) or hash_algorithm.name not in _ACCEPTED_CSR_HASHES:
        name = hash_algorithm.name if isinstance(hash_algorithm, hashes.HashAlgorithm) else "an unknown digest"
        raise CsrSignatureInvalid(
            f"the CSR is signed with {name}",
            fields={_FIELD: "must be signed with SHA-256, SHA-384 or SHA-512"},
        )
    try:
        valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError):
        valid = False
    if not valid:
        raise CsrSignatureInvalid(
            "the CSR's signature does not verify",
            fields={_FIELD: "must be signed by the private key of the public key it carries"},
        )
