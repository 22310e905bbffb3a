"""CRLs: an X.509 v2 CRL per CA, with CRL number, AKI and reason codes, built in one pass for large lists.

`cryptography`'s CertificateRevocationListBuilder copies its entry list on every add_revoked_certificate
call, which makes adding entries one by one quadratic; here every entry is built first and handed to the
builder's constructor once, so 100k entries build and sign in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kagi.clock import Clock, utc_datetime
from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.errors import InvalidCrlNumber, IssuerCannotIssue
from services.ca_service.domain.revocation import CertificateStatus, RevocationReason
from services.ca_service.domain.settings import PkiSettings

MAX_CRL_NUMBER: int = 2**159 - 1
"""RFC 5280 section 5.2.3 caps CRL numbers at 20 octets."""

_REASON_EXTENSIONS: dict[RevocationReason, x509.Extension[x509.CRLReason]] = {
    reason: x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(reason.flag))
    for reason in RevocationReason
    if reason is not RevocationReason.UNSPECIFIED
}


@dataclass(frozen=True, slots=True)
class SignedCrl:
    """A signed CRL in DER with the facts a publisher needs about it."""

    der: bytes
    number: int
    this_update: datetime
    next_update: datetime
    entry_count: int

    @property
    def pem(self) -> bytes:
        """Return the CRL in PEM (X509 CRL)."""
        crl = x509.load_der_x509_crl(self.der)
        return crl.public_bytes(serialization.Encoding.PEM)


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[CertificateStatus],
    *,
    crl_number: int,
    settings: PkiSettings,
    clock: Clock,
) -> SignedCrl:
    """Sign the CRL of `ca` listing every revoked certificate in `revoked`.

    Statuses that are not revoked are skipped. An entry is dropped once its certificate expired more than
    one CRL period ago: RFC 5280 section 3.3 wants it on one scheduled CRL issued after expiry, and every
    CRL issued within a period of the expiry is such a one. Entries for unspecified reasons carry no reason
    code, as RFC 5280 section 5.3.1 recommends. `crl_number` comes from the store's counter.
    """
    if isinstance(crl_number, bool) or not isinstance(crl_number, int) or not 0 <= crl_number <= MAX_CRL_NUMBER:
        raise InvalidCrlNumber(
            "CRL number out of range", fields={"crl_number": "must be a non-negative integer of at most 20 octets"}
        )
    now = utc_datetime(clock).replace(microsecond=0)
    keep_after = now - settings.crl_validity
    entries: list[x509.RevokedCertificate] = []
    for status in revoked:
        revocation = status.revocation
        if revocation is None:
            continue
        if status.issuer is not ca.kind:
            raise IssuerCannotIssue(f"certificate {status.serial_hex} was not issued by the {ca.kind.value} CA")
        if status.not_after < keep_after:
            continue
        extension = _REASON_EXTENSIONS.get(revocation.reason)
        # The builder's constructor takes naive UTC and skips per-call validation that CertificateStatus
        # already did (positive 159-bit serial); this keeps 100k entries cheap.
        entries.append(
            x509.RevokedCertificateBuilder(
                serial_number=status.serial,
                revocation_date=revocation.revoked_at.astimezone(UTC).replace(tzinfo=None),
                extensions=[extension] if extension is not None else [],
            ).build()
        )
    next_update = now + settings.crl_validity
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=entries)
        .issuer_name(ca.name)
        .last_update(now)
        .next_update(next_update)
        .add_extension(ca.authority_key_identifier, critical=False)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    crl = builder.sign(ca.private_key, ca.hash_algorithm)
    return SignedCrl(
        der=crl.public_bytes(serialization.Encoding.DER),
        number=crl_number,
        this_update=now,
        next_update=next_update,
        entry_count=len(entries),
    )
