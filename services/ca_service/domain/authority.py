"""A certificate authority as the domain sees it: its certificate paired with the Signer that holds its key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from services.ca_service.domain.errors import IssuerCannotIssue, SignerKeyMismatch
from services.ca_service.domain.keys import CaPrivateKey, CaPublicKey
from services.ca_service.domain.settings import CaKind
from services.ca_service.domain.signer import Signer, signing_key


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    """Tell whether two public keys are the same key (compared by SubjectPublicKeyInfo)."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def check_key_pair(certificate: x509.Certificate, signer: Signer, what: str) -> None:
    """Raise SignerKeyMismatch unless `signer` holds the key `certificate` certifies."""
    if not same_public_key(certificate.public_key(), signer.public_key()):
        raise SignerKeyMismatch(f"the {what} key does not match its certificate")


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """One of the three CAs: its kind, its certificate and its Signer (key pair checked)."""

    kind: CaKind
    certificate: x509.Certificate
    signer: Signer

    def __post_init__(self) -> None:
        check_key_pair(self.certificate, self.signer, f"{self.kind.value} CA")

    @property
    def name(self) -> x509.Name:
        """Return the CA's subject, the issuer name of everything it signs."""
        return self.certificate.subject

    @property
    def public_key(self) -> CaPublicKey:
        """Return the CA's public key."""
        return self.signer.public_key()

    @property
    def subject_key_identifier(self) -> x509.SubjectKeyIdentifier:
        """Return the SKI of the CA certificate (derived from the key if absent)."""
        try:
            return self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(self.public_key)

    @property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """Return the AKI every certificate and CRL this CA signs carries."""
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self.subject_key_identifier)

    @property
    def hash_algorithm(self) -> hashes.SHA256 | hashes.SHA384:
        """Return the digest this CA's signatures use."""
        return self.signer.algorithm.hash

    @property
    def private_key(self) -> CaPrivateKey:
        """Return the Signer seen as a `cryptography` private key, to pass to a builder's sign()."""
        return signing_key(self.signer)

    @property
    def pem(self) -> bytes:
        """Return the CA certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        """Return the CA certificate in DER (what AIA caIssuers URLs serve)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def validity_for(self, now: datetime, lifetime: timedelta, backdate: timedelta) -> tuple[datetime, datetime]:
        """Return (notBefore, notAfter) for a certificate signed now, kept inside the CA's own validity.

        notBefore is backdated by `backdate` to absorb clock skew but never before the CA's notBefore;
        notAfter is `lifetime` from now but never after the CA's notAfter.
        """
        ca_not_before = self.certificate.not_valid_before_utc
        ca_not_after = self.certificate.not_valid_after_utc
        if not ca_not_before <= now < ca_not_after:
            raise IssuerCannotIssue(
                f"the {self.kind.value} CA certificate is not valid now",
                metadata={"not_before": ca_not_before.isoformat(), "not_after": ca_not_after.isoformat()},
            )
        return max(now - backdate, ca_not_before), min(now + lifetime, ca_not_after)
