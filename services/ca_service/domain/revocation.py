"""Revocation: RFC 5280 reason codes, a certificate's status record, and the revoke transition."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from enum import IntEnum

from cryptography import x509

from services.ca_service.domain.errors import AlreadyRevoked, InvalidRevocationReason
from services.ca_service.domain.serials import check_serial, serial_hex
from services.ca_service.domain.settings import CaKind


class RevocationReason(IntEnum):
    """An RFC 5280 CRLReason code (section 5.3.1); value 7 is unassigned."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    @property
    def rfc_name(self) -> str:
        """Return the name RFC 5280 gives the reason, e.g. "keyCompromise"."""
        return _RFC_NAMES[self]

    @property
    def flag(self) -> x509.ReasonFlags:
        """Return the reason as `cryptography`'s ReasonFlags."""
        return _FLAGS[self]


_RFC_NAMES = {
    RevocationReason.UNSPECIFIED: "unspecified",
    RevocationReason.KEY_COMPROMISE: "keyCompromise",
    RevocationReason.CA_COMPROMISE: "cACompromise",
    RevocationReason.AFFILIATION_CHANGED: "affiliationChanged",
    RevocationReason.SUPERSEDED: "superseded",
    RevocationReason.CESSATION_OF_OPERATION: "cessationOfOperation",
    RevocationReason.CERTIFICATE_HOLD: "certificateHold",
    RevocationReason.REMOVE_FROM_CRL: "removeFromCRL",
    RevocationReason.PRIVILEGE_WITHDRAWN: "privilegeWithdrawn",
    RevocationReason.AA_COMPROMISE: "aACompromise",
}
_FLAGS = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    RevocationReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}
# removeFromCRL only appears in delta CRLs to undo a hold; it is never a reason to revoke.
_REVOKE_REASONS = tuple(reason for reason in RevocationReason if reason is not RevocationReason.REMOVE_FROM_CRL)


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]", "", text).lower()


_BY_NAME = {_key(reason.name): reason for reason in _REVOKE_REASONS}


def parse_revocation_reason(value: str | int) -> RevocationReason:
    """Read a reason by RFC name ("keyCompromise"), enum name or number.

    removeFromCRL (8), the unassigned 7 and anything out of 0-10 raise InvalidRevocationReason naming the
    field "reason".
    """
    reason: RevocationReason | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        reason = RevocationReason(value) if value in RevocationReason._value2member_map_ else None
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) <= 3:
            number = int(text)
            reason = RevocationReason(number) if number in RevocationReason._value2member_map_ else None
        else:
            reason = _BY_NAME.get(_key(text))
    if reason is None or reason is RevocationReason.REMOVE_FROM_CRL:
        allowed = ", ".join(f"{r.rfc_name} ({r.value})" for r in _REVOKE_REASONS)
        raise InvalidRevocationReason(
            f"{str(value)[:64]!r} is not a revocation reason", fields={"reason": f"must be one of {allowed}"}
        )
    return reason


@dataclass(frozen=True, slots=True)
class Revocation:
    """When and why a certificate was revoked."""

    revoked_at: datetime
    reason: RevocationReason


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """What the CA knows of one certificate it issued, as status answers need it.

    `version` is the stored record's version; it changes with every status change, so it keys OCSP caches.
    """

    issuer: CaKind
    serial: int
    not_after: datetime
    revocation: Revocation | None = None
    version: int = 0

    def __post_init__(self) -> None:
        check_serial(self.serial)

    @property
    def serial_hex(self) -> str:
        """Return the serial in its canonical text form."""
        return serial_hex(self.serial)

    @property
    def is_revoked(self) -> bool:
        """Tell whether the certificate is revoked (or on hold)."""
        return self.revocation is not None


def revoke(status: CertificateStatus, reason: RevocationReason, at: datetime) -> CertificateStatus:
    """Return the status with the revocation recorded; the store write that follows is the use case's.

    A revoked certificate stays revoked; the one allowed change is from certificateHold to a final reason.
    """
    if reason is RevocationReason.REMOVE_FROM_CRL:
        raise InvalidRevocationReason(
            "removeFromCRL is not a revocation reason", fields={"reason": "removeFromCRL cannot revoke"}
        )
    current = status.revocation
    if current is not None and not (
        current.reason is RevocationReason.CERTIFICATE_HOLD and reason is not RevocationReason.CERTIFICATE_HOLD
    ):
        raise AlreadyRevoked(
            f"certificate {status.serial_hex} is already revoked ({current.reason.rfc_name})",
            metadata={"serial": status.serial_hex, "reason": current.reason.rfc_name},
        )
    return replace(status, revocation=Revocation(revoked_at=at.replace(microsecond=0), reason=reason))
