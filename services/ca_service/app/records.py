"""What the CA keeps: certificate records, the compact revoked entries CRLs are built from, CRL metadata and the
revocation feed's events (the repository says where each lives).

A certificate record is created once signed (state ISSUED), if absent under its serial, in the commit that
records the issuance. Revocation replaces it (compare-and-swap), so the record's store version changes with
every status change and keys the OCSP cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from kagi.errors import InvalidArgument
from services.ca_service.domain.identity import CustomerIdentity, Identity, ServiceIdentity
from services.ca_service.domain.revocation import CertificateStatus, Revocation, RevocationReason
from services.ca_service.domain.serials import serial_hex
from services.ca_service.domain.settings import CaKind

OCSP_SIGNER_PROFILE = "ocsp-signer"
"""Names the records of delegated OCSP signer certificates (not an issuance profile)."""


class RecordState(Enum):
    """How far a certificate got: a signed certificate, or (in stores written by earlier versions,
    which reserved the serial before signing) a reservation that was never signed, which counts as nothing."""

    RESERVED = "reserved"
    ISSUED = "issued"


class CertificateState(Enum):
    """What a caller sees: active, revoked (hold included) or expired."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


def _dt(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def identity_to_dict(identity: Identity) -> dict[str, Any]:
    """Return the stored form of an identity (enough to re-issue for it on renewal)."""
    if isinstance(identity, CustomerIdentity):
        return {
            "type": "customer",
            "user_id": identity.user_id,
            "login_id": identity.login_id,
            "user_name": identity.user_name,
            "company": identity.company,
        }
    return {
        "type": "service",
        "role": identity.role,
        "dns_names": list(identity.dns_names),
        "ip_addresses": list(identity.ip_addresses),
    }


def identity_from_dict(data: dict[str, Any]) -> Identity:
    """Rebuild an identity from its stored form."""
    if data.get("type") == "customer":
        return CustomerIdentity(
            user_id=data["user_id"], login_id=data["login_id"], user_name=data["user_name"], company=data["company"]
        )
    return ServiceIdentity(
        role=data["role"], dns_names=tuple(data.get("dns_names", ())), ip_addresses=tuple(data.get("ip_addresses", ()))
    )


def subject_id_of(identity: Identity) -> str:
    """Return the id certificates are listed by: the user id of a customer, the role of a service."""
    return identity.user_id if isinstance(identity, CustomerIdentity) else identity.role


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """One certificate the CA issued, with its revocation once revoked.

    Times are whole POSIX seconds. `identity` is None only for OCSP signer records.
    """

    serial: int
    issuer: CaKind
    profile: str
    state: RecordState
    subject_id: str
    identity: Identity | None
    not_before: int
    not_after: int
    created_at: int
    request_id: str = ""
    subject: str = ""
    certificate_pem: str = ""
    fingerprint_sha256: str = ""
    revoked_at: int | None = None
    reason: RevocationReason | None = None
    replaces: str = ""

    @property
    def serial_hex(self) -> str:
        """Return the serial's canonical text (the store key)."""
        return serial_hex(self.serial)

    @property
    def issued(self) -> bool:
        """Tell whether a certificate was signed and recorded under this serial."""
        return self.state is RecordState.ISSUED

    @property
    def revoked(self) -> bool:
        """Tell whether the certificate is revoked (or on hold)."""
        return self.revoked_at is not None

    def current_state(self, now: float) -> CertificateState:
        """Return revoked if revoked (even once expired), expired past notAfter, else active."""
        if self.revoked:
            return CertificateState.REVOKED
        if now >= self.not_after:
            return CertificateState.EXPIRED
        return CertificateState.ACTIVE

    def status(self, version: int) -> CertificateStatus:
        """Return the record as the domain's CRL and OCSP code need it, keyed by the store `version`."""
        revocation = None
        if self.revoked_at is not None:
            revocation = Revocation(_dt(self.revoked_at), self.reason or RevocationReason.UNSPECIFIED)
        return CertificateStatus(self.issuer, self.serial, _dt(self.not_after), revocation, version=version)

    def with_revocation(self, status: CertificateStatus) -> CertificateRecord:
        """Return a copy with the revocation of a status the domain's `revoke` returned."""
        if status.revocation is None:
            return replace(self, revoked_at=None, reason=None)
        return replace(self, revoked_at=_ts(status.revocation.revoked_at), reason=status.revocation.reason)

    def to_json(self) -> bytes:
        """Return the stored form."""
        body: dict[str, Any] = {
            "serial": self.serial_hex,
            "issuer": self.issuer.value,
            "profile": self.profile,
            "state": self.state.value,
            "subject_id": self.subject_id,
            "identity": identity_to_dict(self.identity) if self.identity is not None else None,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "created_at": self.created_at,
            "request_id": self.request_id,
            "subject": self.subject,
            "pem": self.certificate_pem,
            "sha256": self.fingerprint_sha256,
            "revoked_at": self.revoked_at,
            "reason": None if self.reason is None else int(self.reason),
            "replaces": self.replaces,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CertificateRecord:
        """Read a stored record."""
        try:
            raw = json.loads(data)
            identity = raw.get("identity")
            reason = raw.get("reason")
            return cls(
                serial=int(raw["serial"], 16),
                issuer=CaKind(raw["issuer"]),
                profile=str(raw["profile"]),
                state=RecordState(raw["state"]),
                subject_id=str(raw["subject_id"]),
                identity=identity_from_dict(identity) if identity else None,
                not_before=int(raw["not_before"]),
                not_after=int(raw["not_after"]),
                created_at=int(raw["created_at"]),
                request_id=str(raw.get("request_id", "")),
                subject=str(raw.get("subject", "")),
                certificate_pem=str(raw.get("pem", "")),
                fingerprint_sha256=str(raw.get("sha256", "")),
                revoked_at=raw.get("revoked_at"),
                reason=None if reason is None else RevocationReason(int(reason)),
                replaces=str(raw.get("replaces", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument("certificate record cannot be decoded", reason="RECORD_MALFORMED") from exc


def crl_entry(record: CertificateRecord) -> bytes:
    """Return the compact form of a revoked certificate kept for CRL building: "notAfter,revokedAt,reason".

    A CRL of 100k entries is built from 100k of these, so they are parsed with split, not JSON.
    """
    reason = int(record.reason or RevocationReason.UNSPECIFIED)
    return f"{record.not_after},{record.revoked_at},{reason}".encode("ascii")


def status_from_crl_entry(issuer: CaKind, serial_text: str, value: bytes) -> CertificateStatus:
    """Read a compact revoked entry back as a domain status."""
    not_after, revoked_at, reason = value.split(b",")
    return CertificateStatus(
        issuer,
        int(serial_text, 16),
        _dt(int(not_after)),
        Revocation(_dt(int(revoked_at)), RevocationReason(int(reason))),
    )


@dataclass(frozen=True, slots=True)
class PublishedCrl:
    """A signed CRL as published in the store."""

    issuer: CaKind
    der: bytes
    number: int
    this_update: int
    next_update: int
    listed_at: float
    entry_count: int


@dataclass(frozen=True, slots=True)
class CrlMeta:
    """What the store says of a published CRL: its number, times, size in parts and digest."""

    number: int
    this_update: int
    next_update: int
    listed_at: float
    parts: int
    sha256: str
    entries: int

    def to_json(self) -> bytes:
        """Return the stored form."""
        return json.dumps(
            {
                "number": self.number,
                "this_update": self.this_update,
                "next_update": self.next_update,
                "listed_at": self.listed_at,
                "parts": self.parts,
                "sha256": self.sha256,
                "entries": self.entries,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CrlMeta:
        """Read the stored form."""
        raw = json.loads(data)
        return cls(
            int(raw["number"]),
            int(raw["this_update"]),
            int(raw["next_update"]),
            float(raw["listed_at"]),
            int(raw["parts"]),
            str(raw["sha256"]),
            int(raw["entries"]),
        )


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    """One revocation as the feed stores it.

    `stamped_at` is when the revoking replica committed it, by that replica's clock (POSIX seconds).
    """

    serial_hex: str
    issuer: CaKind
    revoked_at: int
    reason: RevocationReason
    stamped_at: float


def revocation_event_body(record: CertificateRecord) -> dict[str, object]:
    """Return the feed body of a revoked record (the journal adds the commit stamp `at_ns`)."""
    return {
        "serial": record.serial_hex,
        "issuer": record.issuer.value,
        "revoked_at": record.revoked_at,
        "reason": int(record.reason or RevocationReason.UNSPECIFIED),
    }


def revocation_event_from_json(value: bytes) -> RevocationEvent:
    """Read a stored feed event; raises ValueError, KeyError or TypeError when it is malformed."""
    body = json.loads(value)
    return RevocationEvent(
        serial_hex=str(body["serial"]),
        issuer=CaKind(body["issuer"]),
        revoked_at=int(body["revoked_at"]),
        reason=RevocationReason(int(body["reason"])),
        stamped_at=int(body.get("at_ns", 0)) / 1e9,
    )
