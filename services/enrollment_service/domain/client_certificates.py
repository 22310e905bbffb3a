"""Customer client certificates as the enrollment sees them: relayed by the gateway, or passed in by a bank
front-end as PEM and checked here against the customer CA (chain, validity, client-auth usage)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from kagi.errors import InvalidArgument, Unauthenticated

MAX_CERTIFICATE_PEM_BYTES = 16 * 1024
MSG_CERTIFICATE_INVALID = (
    "この電子証明書はご利用いただけません"  # the procedure's wording, then English
    " / the client certificate is not a valid customer certificate of this bank"
)


class CertificateInvalid(Unauthenticated):
    """Not from the customer CA, outside its validity, not for client auth, or not GOOD."""

    reason = "CERTIFICATE_INVALID"


@dataclass(frozen=True)
class ClientCertificate:
    """A customer certificate whose possession was proven in a TLS handshake."""

    serial_number: str
    fingerprint_sha256: str


def check_customer_certificate(pem: str, customer_ca_pem: bytes, now: float) -> ClientCertificate:
    """Return the certificate's identity if it is a customer certificate valid at `now`, else raise.

    Revocation is the CA's answer and is asked separately.
    """
    if len(pem.encode("utf-8", "replace")) > MAX_CERTIFICATE_PEM_BYTES:
        raise InvalidArgument(
            "the client certificate is too large",
            fields={"client_certificate_pem": f"one PEM certificate of at most {MAX_CERTIFICATE_PEM_BYTES} bytes"},
        )
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise InvalidArgument(
            "the client certificate cannot be read",
            fields={"client_certificate_pem": "must be one X.509 certificate in PEM"},
        ) from None
    issuer = x509.load_pem_x509_certificate(customer_ca_pem)
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, Exception):  # any failure means: not signed by the customer CA
        raise CertificateInvalid(MSG_CERTIFICATE_INVALID) from None
    if not (certificate.not_valid_before_utc.timestamp() <= now < certificate.not_valid_after_utc.timestamp()):
        raise CertificateInvalid(MSG_CERTIFICATE_INVALID)
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificateInvalid(MSG_CERTIFICATE_INVALID) from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise CertificateInvalid(MSG_CERTIFICATE_INVALID)
    return ClientCertificate(f"{certificate.serial_number:x}", certificate.fingerprint(hashes.SHA256()).hex())


def not_after(certificate_pem: str) -> float:
    """Return when a certificate expires (POSIX seconds)."""
    return x509.load_pem_x509_certificate(certificate_pem.encode()).not_valid_after_utc.timestamp()


def check_new_key(csr_pem: str, old_certificate_pem: str) -> None:
    """Raise InvalidArgument unless the CSR is for another key than the certificate's (a renewal's rule)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise InvalidArgument(
            "the CSR cannot be read", reason="CSR_MALFORMED", fields={"csr_pem": "must be one PKCS#10 CSR in PEM"}
        ) from None
    old = x509.load_pem_x509_certificate(old_certificate_pem.encode())
    if csr.public_key() == old.public_key():
        raise InvalidArgument(
            "a renewal needs a new key",
            reason="KEY_REUSED",
            fields={"csr_pem": "must be for a new key pair, not the current certificate's key"},
        )
