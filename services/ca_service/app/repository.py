"""Where the CA's state lives in the key-value store: collection names, keys, and typed reads.

Collections (namespace "ca"):

    certificates            <serial hex>          CertificateRecord JSON (reserved, then issued, then revoked)
    by-subject/<subject>    <serial hex>          issuer: the certificates of one user id or service role
    by-state/active         <serial hex>          issuer: issued and not revoked (expired ones too, by time)
    revoked/<issuer>        <serial hex>          "notAfter,revokedAt,reason": what the CRL is built from
    requests                issue:<request_id>    serial hex (TTL one day): issuance by request id, crash-safe
    revocation-events       p<position:020>       JSON: the feed WatchRevocations reads by cursor, pruned after a day
    audit                   <sequence:016>        AuditRecord JSON, hash-chained
    audit-head              head                  {"sequence", "hash", "feed"}: the chain's tip and the last
                                                  feed position, the CAS point
    crl                     <issuer>              CRL metadata: number, times, parts, sha256
    crl-parts/<issuer>      <number:020>.<part:04>  the CRL's DER in parts of at most 1 MiB
    crl-numbers             <issuer>              counter: CRL numbers, allocated with increment
    locks                   <name>                TTL entries: one replica at a time renews an OCSP signer
"""

from __future__ import annotations

import re

from kagi.errors import InvalidArgument
from kagi.store.base import Entry, KeyValueStore
from services.ca_service.app.records import CertificateRecord
from services.ca_service.domain.settings import CaKind

CERTIFICATES = "certificates"
ACTIVE = "by-state/active"
REQUESTS = "requests"
REVOCATION_EVENTS = "revocation-events"
CRL = "crl"
CRL_NUMBERS = "crl-numbers"
LOCKS = "locks"

REQUEST_TTL = 24 * 3600.0
"""REQUEST_TTL is how long an issuance stays findable by its request id (the idempotency ledger's own TTL)."""

_SUBJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")


def check_subject_id(subject_id: str, *, field: str = "subject_id") -> str:
    """check_subject_id returns a subject id (user id or role) or raises InvalidArgument naming `field`."""
    if not isinstance(subject_id, str) or not _SUBJECT_RE.fullmatch(subject_id):
        raise InvalidArgument(
            "invalid subject id",
            reason="INVALID_SUBJECT_ID",
            fields={field: "must be a user id or service role: 1-64 characters of A-Z a-z 0-9 . _ -"},
        )
    return subject_id


def by_subject(subject_id: str) -> str:
    """by_subject is the collection indexing one subject's certificates."""
    return f"by-subject/{subject_id}"


def revoked_collection(issuer: CaKind) -> str:
    """revoked_collection is the collection of one issuing CA's revoked certificates (the CRL's source)."""
    return f"revoked/{issuer.value}"


def crl_parts(issuer: CaKind) -> str:
    """crl_parts is the collection holding the DER parts of one issuing CA's CRLs."""
    return f"crl-parts/{issuer.value}"


def request_key(kind: str, request_id: str) -> str:
    """request_key names an issuance (or renewal) by the caller's request id."""
    return f"{kind}:{request_id}"


class CertificateRepository:
    """CertificateRepository reads certificate records with the versions a compare-and-swap must name."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def get(self, serial_text: str) -> tuple[CertificateRecord, int] | None:
        """Get returns the record under a canonical serial with its version, or None."""
        entry = await self.store.get(CERTIFICATES, serial_text)
        return None if entry is None else (CertificateRecord.from_json(entry.value), entry.version)

    async def entry(self, serial_text: str) -> Entry | None:
        """Entry returns the raw stored record."""
        return await self.store.get(CERTIFICATES, serial_text)
