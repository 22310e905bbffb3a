"""The CA's storage in one place: every collection, key and record the CA writes, with typed reads and writes.

Collections (namespace "ca"):

    certificates            <serial hex>          CertificateRecord JSON: created issued (signed first), then
                                                  replaced when revoked
    by-subject/<subject>    <serial hex>          issuer: the certificates of one user id or service role
    by-state/active         <serial hex>          issuer: issued and not revoked (expired ones too, by time)
    revoked/<issuer>        <serial hex>          "notAfter,revokedAt,reason": what the CRL is built from
    requests                issue/<scope>/<id>    {"serial", "fp"} (TTL one day): an issuance by the caller's
                                                  request id, scoped by caller and subject; IssueCertificate's
                                                  idempotency
                            renew:<request_id>    {"serial", "fp"} (TTL one day): a renewal by request id
    revocation-events       p<position:020>       RevocationEvent JSON: the feed WatchRevocations reads by cursor,
                                                  pruned after a day
    audit                   <sequence:016>        AuditRecord JSON, hash-chained (kagi.journal writes it)
    audit-head              head                  {"sequence", "hash", "feed"}: the chain's tip and the last
                                                  feed position, the CAS point (kagi.journal writes it)
    crl                     <issuer>              CrlMeta JSON: number, times, parts, sha256
    crl-parts/<issuer>      <number:020>.<part:04>  the CRL's DER in parts of at most 1 MiB
    crl-numbers             <issuer>              counter: CRL numbers, allocated with increment
    locks                   ocsp-renewal/<issuer> TTL entries: one replica at a time renews an OCSP signer

On Redis every one of these keys carries the namespace's hash tag (`kagi:{ca}:...`, see kagi.store.redis), so
they all live in one Cluster slot and any of them may share a commit: an issuance's certificate, indexes,
request-id entry, audit record and chain head go in one.

Reads, CRL publications, feed pruning and locks go to the store from here. A certificate's state change is
returned as operations instead: the journal commits them together with the change's audit record (and numbers
its feed events), so nothing here writes a certificate on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass

from kagi.errors import InvalidArgument, Unavailable
from kagi.idempotency import scope_of
from kagi.journal import FeedEvent, feed_key, feed_position, last_feed_position
from kagi.store.base import (
    Create,
    Delete,
    KeyExists,
    KeyValueStore,
    Operation,
    Replace,
    VersionMismatch,
    encode_page_token,
)
from services.ca_service.app.records import (
    CertificateRecord,
    CertificateState,
    CrlMeta,
    PublishedCrl,
    RevocationEvent,
    crl_entry,
    revocation_event_body,
    revocation_event_from_json,
    status_from_crl_entry,
)
from services.ca_service.domain.revocation import CertificateStatus
from services.ca_service.domain.settings import CaKind

CERTIFICATES = "certificates"
ACTIVE = "by-state/active"
REQUESTS = "requests"
REVOCATION_EVENTS = "revocation-events"
CRL = "crl"
CRL_NUMBERS = "crl-numbers"
LOCKS = "locks"

REQUEST_TTL = 24 * 3600.0
"""How long an issuance stays findable by its request id (the idempotency ledger's own TTL)."""

PART_BYTES = 1024 * 1024
"""The size of the parts a CRL's DER is stored in (a store value is at most 4 MiB)."""

_SUBJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
_SCAN_PAGES = 5
_INDEX_PAGE = 1000
_FEED_PAGE = 1000
_PRUNE_PAGE = 500


def check_subject_id(subject_id: str, *, field: str = "subject_id") -> str:
    """Return a subject id (user id or role), or raise InvalidArgument naming FIELD."""
    if not isinstance(subject_id, str) or not _SUBJECT_RE.fullmatch(subject_id):
        raise InvalidArgument(
            "invalid subject id",
            reason="INVALID_SUBJECT_ID",
            fields={field: "must be a user id or service role: 1-64 characters of A-Z a-z 0-9 . _ -"},
        )
    return subject_id


def by_subject(subject_id: str) -> str:
    """Return the collection indexing one subject's certificates."""
    return f"by-subject/{subject_id}"


def revoked_collection(issuer: CaKind) -> str:
    """Return the collection of one issuing CA's revoked certificates (the CRL's source)."""
    return f"revoked/{issuer.value}"


def crl_parts(issuer: CaKind) -> str:
    """Return the collection holding the DER parts of one issuing CA's CRLs."""
    return f"crl-parts/{issuer.value}"


def ocsp_renewal_lock(issuer: CaKind) -> str:
    """Return the lock one replica holds while it renews ISSUER's OCSP signer."""
    return f"ocsp-renewal/{issuer.value}"


def issue_request_key(caller: str, subject: str, request_id: str) -> str:
    """Return the key naming an issuance by REQUEST_ID, scoped by CALLER and SUBJECT as the idempotency ledger
    scopes its entries: another caller's or another subject's request id is another entry."""
    return f"{scope_of('issue', caller, subject)}/{request_id}"


def renew_request_key(request_id: str) -> str:
    """Return the key naming a renewal by REQUEST_ID (the idempotency ledger in front of it scopes the caller)."""
    return f"renew:{request_id}"


def serial_taken(error: KeyExists, serial: str) -> bool:
    """Tell whether an issuance commit failed because SERIAL is recorded already (drawn twice: 2^-159 odds)."""
    failed = error.failed
    return (
        failed is not None
        and failed.key == serial
        and (failed.collection in (CERTIFICATES, ACTIVE) or failed.collection.startswith("by-subject/"))
    )


def request_taken(error: KeyExists) -> bool:
    """Tell whether an issuance commit failed because another request with its request id was recorded first."""
    return error.failed is not None and error.failed.collection == REQUESTS


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """Names an issuance by the caller's request id: its key and the request's fingerprint.

    The entry is created with the certificate, in the same commit, only if absent: the first request with the
    id wins, and a later one finds the certificate under it (same fingerprint) or is another request reusing
    the id (another fingerprint).
    """

    key: str
    fingerprint: str = ""

    def value(self, serial: str) -> bytes:
        """Return the stored form naming the certificate SERIAL."""
        return json.dumps({"serial": serial, "fp": self.fingerprint}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One positioned event of the revocation feed; `event` is None when it cannot be read."""

    key: str
    position: int
    event: RevocationEvent | None


class CaRepository:
    """Everything the CA stores: certificates and their indexes, the request-id ledger, the
    revoked lists, the revocation feed, CRLs and locks.

    Methods returning operations build a state change for the journal; the others read or write directly.
    """

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    # -- certificates -----------------------------------------------------------------------------------------

    async def certificate(self, serial: str) -> tuple[CertificateRecord, int] | None:
        """Return the record under a canonical serial with the version a compare-and-swap must name, or None."""
        entry = await self._store.get(CERTIFICATES, serial)
        return None if entry is None else (CertificateRecord.from_json(entry.value), entry.version)

    async def has_certificate(self, serial: str) -> bool:
        """Tell whether anything is recorded under a canonical serial."""
        return await self._store.get(CERTIFICATES, serial) is not None

    def issuance_operations(self, issued: CertificateRecord, request: RequestEntry | None = None) -> list[Operation]:
        """Return the operations recording the signed certificate ISSUED, indexed and, with a REQUEST, findable
        by its request id.

        All are create-if-absent: a serial already taken fails the commit with KeyExists naming CERTIFICATES
        (or an index), a request id already used with KeyExists naming REQUESTS.
        """
        key = issued.serial_hex
        issuer = issued.issuer.value.encode()
        operations: list[Operation] = [
            Create(CERTIFICATES, key, issued.to_json()),
            Create(by_subject(issued.subject_id), key, issuer),
            Create(ACTIVE, key, issuer),
        ]
        if request is not None:
            operations.append(Create(REQUESTS, request.key, request.value(key), ttl=REQUEST_TTL))
        return operations

    async def revocation_operations(
        self, record: CertificateRecord, revoked: CertificateRecord, version: int
    ) -> list[Operation]:
        """Return the operations replacing RECORD (at VERSION) by REVOKED and moving it to the revoked list."""
        key = record.serial_hex
        operations: list[Operation] = [Replace(CERTIFICATES, key, revoked.to_json(), version)]
        index = revoked_collection(record.issuer)
        if record.revoked:  # a hold turned final: the CRL entry changes reason
            current = await self._store.get(index, key)
            if current is None:
                operations.append(Create(index, key, crl_entry(revoked)))
            else:
                operations.append(Replace(index, key, crl_entry(revoked), current.version))
        else:
            operations += [Delete(ACTIVE, key), Create(index, key, crl_entry(revoked))]
        return operations

    def revocation_event(self, revoked: CertificateRecord) -> FeedEvent:
        """Return the feed event announcing REVOKED to every replica."""
        return FeedEvent(revoked.serial_hex, revocation_event_body(revoked))

    # -- the request-id ledger --------------------------------------------------------------------------------

    async def by_request(self, key: str) -> tuple[CertificateRecord, str] | None:
        """Return the certificate issued under the request-id entry KEY with the request's fingerprint, or None."""
        entry = await self._store.get(REQUESTS, key)
        if entry is None:
            return None
        if entry.value.startswith(b"{"):
            stored = json.loads(entry.value)
            serial, request_fingerprint = str(stored["serial"]), str(stored.get("fp", ""))
        else:  # an entry written before fingerprints were kept: the serial alone
            serial, request_fingerprint = entry.value.decode(), ""
        found = await self.certificate(serial)
        return (found[0], request_fingerprint) if found is not None and found[0].issued else None

    # -- listings ---------------------------------------------------------------------------------------------

    async def list_certificates(
        self, *, subject_id: str, state: CertificateState | None, now: float, page_size: int, page_token: str
    ) -> tuple[list[CertificateRecord], str]:
        """Return a page of issued certificates, of one subject and/or in one state, and the next page's token.

        The narrowest index is scanned, a few store pages at most, so a page may hold fewer than PAGE_SIZE
        certificates when many are filtered out; only an empty token means the end.
        """
        inline = False
        if subject_id:
            collections = [by_subject(check_subject_id(subject_id))]
        elif state is CertificateState.REVOKED:
            collections = [revoked_collection(CaKind.CUSTOMER), revoked_collection(CaKind.INTERNAL)]
        elif state is not None:
            collections = [ACTIVE]
        else:
            collections, inline = [CERTIFICATES], True
        segment, store_token = _split_token(page_token, len(collections))
        found: list[CertificateRecord] = []
        for _ in range(_SCAN_PAGES):
            page = await self._store.list(
                collections[segment], page_size=page_size - len(found), page_token=store_token
            )
            if inline:
                records = [CertificateRecord.from_json(entry.value) for entry in page.entries]
            else:
                fetched = await asyncio.gather(*(self.certificate(entry.key) for entry in page.entries))
                records = [item[0] for item in fetched if item is not None]
            found += [r for r in records if r.issued and (state is None or r.current_state(now) is state)]
            store_token = page.next_page_token
            if not store_token:
                if segment + 1 >= len(collections):
                    return found, ""
                segment += 1
            if len(found) >= page_size:
                break
        return found, f"{segment}.{store_token}"

    async def subject_certificates(self, subject_id: str) -> list[CertificateRecord]:
        """Return every record indexed under a subject (reserved ones included)."""
        collection = by_subject(check_subject_id(subject_id))
        serials: list[str] = []
        token = ""
        while True:
            page = await self._store.list(collection, page_size=_INDEX_PAGE, page_token=token)
            serials += [entry.key for entry in page.entries]
            token = page.next_page_token
            if not token:
                break
        return [found[0] for found in await asyncio.gather(*(self.certificate(s) for s in serials)) if found]

    # -- revoked lists and CRLs -------------------------------------------------------------------------------

    async def revoked_statuses(self, issuer: CaKind) -> list[CertificateStatus]:
        """Return every revoked certificate of ISSUER from its revoked list."""
        collection = revoked_collection(issuer)
        statuses: list[CertificateStatus] = []
        token = ""
        while True:
            page = await self._store.list(collection, page_size=_INDEX_PAGE, page_token=token)
            statuses += [status_from_crl_entry(issuer, entry.key, entry.value) for entry in page.entries]
            token = page.next_page_token
            if not token:
                return statuses

    async def crl(self, issuer: CaKind) -> tuple[CrlMeta, int] | None:
        """Return the metadata of ISSUER's published CRL with its version, or None before the first."""
        entry = await self._store.get(CRL, issuer.value)
        return None if entry is None else (CrlMeta.from_json(entry.value), entry.version)

    async def next_crl_number(self, issuer: CaKind) -> int:
        """Allocate ISSUER's next CRL number (atomic across replicas)."""
        return await self._store.increment(CRL_NUMBERS, issuer.value)

    async def publish_crl(self, crl: PublishedCrl, *, replacing: tuple[CrlMeta, int] | None) -> int | None:
        """Publish CRL in place of REPLACING (the metadata and version read before); return the new metadata's
        version, or None when another CRL was published meanwhile."""
        der = crl.der
        meta = CrlMeta(
            number=crl.number,
            this_update=crl.this_update,
            next_update=crl.next_update,
            listed_at=crl.listed_at,
            parts=max(1, -(-len(der) // PART_BYTES)),
            sha256=hashlib.sha256(der).hexdigest(),
            entries=crl.entry_count,
        )
        key = crl.issuer.value
        collection = crl_parts(crl.issuer)
        operations: list[Operation] = [
            Create(CRL, key, meta.to_json()) if replacing is None else Replace(CRL, key, meta.to_json(), replacing[1])
        ]
        operations += [
            Create(collection, _part_key(meta.number, i), der[i * PART_BYTES : (i + 1) * PART_BYTES])
            for i in range(meta.parts)
        ]
        if replacing is not None:
            previous = replacing[0]
            operations += [Delete(collection, _part_key(previous.number, i)) for i in range(previous.parts)]
        try:
            results = await self._store.commit(operations)
        except (VersionMismatch, KeyExists):
            return None
        head = results[0]
        return None if head is None else head.version

    async def crl_der(self, issuer: CaKind, meta: CrlMeta) -> bytes:
        """Return the DER of the CRL META describes; raise Unavailable (CRL_BUSY) when it was replaced meanwhile."""
        collection = crl_parts(issuer)
        parts = []
        for index in range(meta.parts):
            part = await self._store.get(collection, _part_key(meta.number, index))
            if part is None:
                # Replaced between our two reads: the caller's next call sees the newer CRL.
                raise Unavailable("the CRL is being replaced; retry", reason="CRL_BUSY")
            parts.append(part.value)
        der = b"".join(parts)
        if hashlib.sha256(der).hexdigest() != meta.sha256:
            raise Unavailable("the stored CRL does not match its digest; retry", reason="CRL_BUSY")
        return der

    # -- the revocation feed ----------------------------------------------------------------------------------

    async def last_feed_position(self) -> int:
        """Return the position of the newest committed revocation event (0 when there is none)."""
        return await last_feed_position(self._store)

    async def feed_page(self, after: int, page_token: str = "") -> tuple[list[FeedEntry], str]:
        """Return the revocation events after position AFTER (or from PAGE_TOKEN), one page, and the next token."""
        page = await self._store.list(
            REVOCATION_EVENTS, page_size=_FEED_PAGE, page_token=page_token or encode_page_token(feed_key(after))
        )
        entries: list[FeedEntry] = []
        for entry in page.entries:
            position = feed_position(entry.key)
            if position is None:
                continue
            try:
                event: RevocationEvent | None = revocation_event_from_json(entry.value)
            except (ValueError, KeyError, TypeError):
                event = None
            entries.append(FeedEntry(entry.key, position, event))
        return entries, page.next_page_token

    async def prune_feed(self, cutoff_ns: int) -> int:
        """Delete the revocation events committed before CUTOFF_NS; return how many were deleted."""
        deleted = 0
        while True:
            page = await self._store.list(REVOCATION_EVENTS, page_size=_PRUNE_PAGE)
            old = [entry.key for entry in page.entries if _stamp_ns(entry.key, entry.value) < cutoff_ns]
            if old:
                await self._store.commit([Delete(REVOCATION_EVENTS, key) for key in old])
                deleted += len(old)
            if len(old) < len(page.entries) or not page.next_page_token:
                return deleted

    # -- locks ------------------------------------------------------------------------------------------------

    async def acquire_lock(self, name: str, ttl: float) -> bool:
        """Take the lock NAME for TTL seconds unless someone holds it; tell whether this call took it.

        A lock is a lease: it is never released, it lapses, so a holder that crashed blocks nobody for long.
        """
        try:
            await self._store.create(LOCKS, name, b"1", ttl=ttl)
        except KeyExists:
            return False
        return True


def _part_key(number: int, index: int) -> str:
    return f"{number:020d}.{index:04d}"


def _split_token(token: str, segments: int) -> tuple[int, str]:
    if not token:
        return 0, ""
    head, _, rest = token.partition(".")
    if not head.isdigit() or not 0 <= int(head) < segments:
        raise InvalidArgument("invalid page token", fields={"page_token": "not a token this listing issued"})
    return int(head), rest


def _stamp_ns(key: str, value: bytes) -> int:
    """Return when an event was committed, by its replica's clock (0 when unreadable: pruned first)."""
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return int(json.loads(value)["at_ns"])
    with contextlib.suppress(ValueError):
        return int(key.split("-", 1)[0])  # an older, clock-keyed event
    return 0
