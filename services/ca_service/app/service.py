"""The CA's use cases over the store: issue, get, list, revoke, renew, status, CRL, OCSP and the revocation feed.

Every state change goes through the journal, so it lands together with its audit record. Issuance reserves the
serial (create-if-absent) before anything is signed, then replaces the reservation with the signed record; a
certificate the CA has no record of cannot exist, and two certificates can never share a serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from kagi.clock import Clock, utc_datetime
from kagi.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from kagi.journal import AuditEvent, Change, FeedEvent, Journal
from kagi.runtime.identity import Role, allow
from kagi.store.base import (
    Create,
    Delete,
    KeyExists,
    KeyValueStore,
    Operation,
    Replace,
    StoreUnavailable,
    VersionMismatch,
)
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.crls import CrlPublisher, PublishedCrl
from services.ca_service.app.feed import RevocationFeed, RevocationNotice
from services.ca_service.app.records import (
    OCSP_SIGNER_PROFILE,
    CertificateRecord,
    CertificateState,
    RecordState,
    crl_entry,
    subject_id_of,
)
from services.ca_service.app.repository import (
    ACTIVE,
    CERTIFICATES,
    REQUEST_TTL,
    REQUESTS,
    CertificateRepository,
    by_subject,
    check_subject_id,
    request_key,
    revoked_collection,
)
from services.ca_service.domain.csr import ValidatedCsr, parse_csr
from services.ca_service.domain.errors import AlreadyRevoked, InvalidSerial, MalformedOcspRequest
from services.ca_service.domain.hierarchy import DelegatedOcspSigner, issue_ocsp_signer
from services.ca_service.domain.identity import Identity
from services.ca_service.domain.issuance import PreparedIssuance, prepare_issuance, sign_certificate
from services.ca_service.domain.ocsp import (
    OCSP_MALFORMED_REQUEST,
    OCSP_TRY_LATER,
    OCSP_UNAUTHORIZED,
    OcspResponseCache,
    answer_ocsp,
    parse_ocsp_request,
    select_responder,
)
from services.ca_service.domain.profiles import get_profile
from services.ca_service.domain.revocation import RevocationReason, revoke
from services.ca_service.domain.serials import MAX_SERIAL, new_serial, parse_serial, serial_hex
from services.ca_service.domain.settings import CaKind, PkiSettings
from services.ca_service.domain.signer import Signer

ISSUE_ROLES: Mapping[str, frozenset[Role]] = {
    "customer": allow(Role.ENROLLMENT, Role.OPERATOR),
    "service": allow(Role.OPERATOR),
}
"""ISSUE_ROLES says who may have a certificate of each profile issued: service identities only the operator."""

MANAGE_ROLES: Mapping[str, frozenset[Role]] = {
    "customer": allow(Role.ENROLLMENT, Role.OPERATOR),
    "service": allow(Role.OPERATOR),
    OCSP_SIGNER_PROFILE: allow(Role.OPERATOR),
}
"""MANAGE_ROLES says who may renew or revoke a certificate of each profile: kagi's own ones only the operator."""

MAX_LIST_PAGE = 1000
MIN_SERVICE_LIFETIME = timedelta(days=1)
MAX_SERVICE_LIFETIME = timedelta(days=825)
"""MAX_SERVICE_LIFETIME: the longest lifetime TLS certificates were ever allowed in the Web PKI."""
_SCAN_PAGES = 5


@dataclass(frozen=True, slots=True)
class Actor:
    """Actor is who asks for a change: named in the audit trail, authorised by role.

    `unrestricted` is for the bootstrap and for loopback plaintext development, where no certificate exists.
    """

    name: str
    role: Role | None
    unrestricted: bool = False

    def require(self, roles: frozenset[Role], what: str) -> None:
        """Require raises PermissionDenied unless the actor's role is in `roles`."""
        if self.unrestricted or (self.role is not None and self.role in roles):
            return
        names = ", ".join(sorted(r.value for r in roles))
        raise PermissionDenied(
            f"{self.role.value if self.role else 'this caller'} may not {what} (allowed: {names})",
            reason="CALLER_NOT_ALLOWED",
            metadata={"role": self.role.value if self.role else ""},
        )

    def may(self, roles: frozenset[Role]) -> bool:
        """May tells whether `require` would pass."""
        return self.unrestricted or (self.role is not None and self.role in roles)


BOOTSTRAP = Actor("bootstrap", None, unrestricted=True)
"""BOOTSTRAP is the actor of certificates the CA issues to itself (dev service certificates, OCSP signers)."""


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """StatusAnswer is good, revoked (with the record) or unknown (record None) for a serial."""

    record: CertificateRecord | None

    @property
    def known(self) -> bool:
        """Known tells whether the CA issued the serial."""
        return self.record is not None


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """OcspAnswer is a DER OCSP response with its certificate status and nextUpdate (None for errors)."""

    der: bytes
    status: str
    next_update: datetime | None


def parse_serial_field(text: str, field: str = "serial_number") -> int:
    """parse_serial_field reads a serial from a request, naming the request's field when it is not one."""
    try:
        return parse_serial(text)
    except InvalidSerial as exc:
        raise InvalidSerial(
            exc.message, fields={field: next(iter(exc.fields.values()), "must be a serial number")}
        ) from None


class CertificateAuthorityService:
    """CertificateAuthorityService is the CA's service layer; the gRPC API and the bootstrap call it."""

    def __init__(
        self,
        store: KeyValueStore,
        authorities: Authorities,
        settings: PkiSettings,
        clock: Clock,
        *,
        journal: Journal,
        crls: CrlPublisher,
        feed: RevocationFeed,
        ocsp_cache_size: int = 100_000,
    ) -> None:
        self._store = store
        self._repo = CertificateRepository(store)
        self.authorities = authorities
        self._settings = settings
        self._clock = clock
        self._journal = journal
        self.crls = crls
        self.feed = feed
        self._ocsp_cache = OcspResponseCache(ocsp_cache_size)
        feed.add_listener(self._on_revocation)

    @property
    def settings(self) -> PkiSettings:
        """Settings are the PKI settings certificates are issued under."""
        return self._settings

    # -- issuance ---------------------------------------------------------------------------------------------

    def check_csr(self, csr: bytes) -> ValidatedCsr:
        """Check_csr validates a CSR without touching the store (field "csr" on failure)."""
        return parse_csr(csr)

    def prepare(
        self,
        *,
        csr: bytes,
        identity: Identity | None,
        profile: str,
        actor: Actor,
        lifetime: timedelta | None = None,
    ) -> PreparedIssuance:
        """Prepare validates and authorises an issuance and draws its serial; nothing is stored or signed.

        `lifetime` replaces the profile's for service certificates (1-825 days), inside the CA's own validity.
        """
        chosen = get_profile(profile)
        actor.require(ISSUE_ROLES.get(chosen.name, frozenset()), f"have {chosen.name} certificates issued")
        ca = self.authorities.issuing(chosen.issuer)
        prepared = prepare_issuance(ca, csr, identity, chosen.name, settings=self._settings, clock=self._clock)
        if lifetime is None:
            return prepared
        if chosen.name != "service" or not MIN_SERVICE_LIFETIME <= lifetime <= MAX_SERVICE_LIFETIME:
            raise InvalidArgument(
                "invalid lifetime",
                fields={"validity_days": "1-825 days, and only for the service profile"},
            )
        now = utc_datetime(self._clock).replace(microsecond=0)
        not_before, not_after = ca.validity_for(now, lifetime, self._settings.backdate)
        return dataclasses.replace(prepared, not_before=not_before, not_after=not_after)

    async def issue(self, prepared: PreparedIssuance, *, request_id: str, actor: Actor) -> CertificateRecord:
        """Issue reserves the serial, signs, and records the certificate with its audit record.

        With a `request_id`, a certificate already issued for it is returned instead (also after a crash that
        lost the idempotency ledger's answer).
        """
        if request_id:
            existing = await self._by_request("issue", request_id)
            if existing is not None:
                return existing
        record, version = await self._reserve(prepared, request_id)
        ca = self.authorities.issuing(prepared.issuer)
        signed = sign_certificate(ca, record_prepared(prepared, record.serial), settings=self._settings)
        issued = _issued(record, signed.certificate)
        operations = self._issue_operations(issued, version, request_id, "issue")
        audit = [_issue_event(issued, actor)]
        try:
            await self._journal.submit(Change(operations, audit))
        except KeyExists:
            # A concurrent call with the same request id recorded its certificate first: that one stands.
            existing = await self._by_request("issue", request_id) if request_id else None
            if existing is None:
                raise
            return existing
        return issued

    async def renew(
        self, serial_text: str, csr: bytes, *, revoke_previous: bool, request_id: str, actor: Actor
    ) -> CertificateRecord:
        """Renew issues a new certificate for the identity and profile of an existing one, from a new CSR.

        With `revoke_previous` the old certificate is revoked (superseded) in the same atomic write.
        """
        serial = parse_serial_field(serial_text)
        if request_id:
            existing = await self._by_request("renew", request_id)
            if existing is not None:
                return existing
        old, old_version = await self._issued_record(serial_hex(serial))
        actor.require(MANAGE_ROLES.get(old.profile, frozenset()), f"renew {old.profile} certificates")
        if old.revoked:
            raise FailedPrecondition(
                f"certificate {old.serial_hex} is revoked and cannot be renewed",
                reason="CERTIFICATE_REVOKED",
                metadata={"serial_number": old.serial_hex},
            )
        if old.identity is None or old.profile not in ISSUE_ROLES:
            raise FailedPrecondition(f"{old.profile} certificates are not renewed this way", reason="NOT_RENEWABLE")
        ca = self.authorities.issuing(old.issuer)
        prepared = prepare_issuance(ca, csr, old.identity, old.profile, settings=self._settings, clock=self._clock)
        record, version = await self._reserve(prepared, request_id, replaces=old.serial_hex)
        signed = sign_certificate(ca, record_prepared(prepared, record.serial), settings=self._settings)
        issued = _issued(record, signed.certificate)
        for _ in range(10):
            operations = self._issue_operations(issued, version, request_id, "renew")
            audit = [_issue_event(issued, actor, action="renew")]
            feed: list[FeedEvent] = []
            if revoke_previous and not old.revoked:
                revoked_ops, event, notice = await self._revocation(
                    old, old_version, RevocationReason.SUPERSEDED, actor
                )
                operations += revoked_ops
                audit.append(event)
                feed.append(notice)
            try:
                await self._journal.submit(Change(operations, audit, feed))
            except VersionMismatch:
                old, old_version = await self._issued_record(old.serial_hex)  # revoked meanwhile: look again
                continue
            except KeyExists:
                existing = await self._by_request("renew", request_id) if request_id else None
                if existing is None:
                    raise
                return existing
            if feed:
                self._revoked_locally(old)
            return issued
        raise Unavailable("the certificate kept changing during renewal; retry", reason="CONCURRENT_CHANGE")

    async def _reserve(
        self, prepared: PreparedIssuance, request_id: str, *, replaces: str = ""
    ) -> tuple[CertificateRecord, int]:
        identity = prepared.identity
        now = int(self._clock.now())
        serial = prepared.serial
        for _ in range(5):
            record = CertificateRecord(
                serial=serial,
                issuer=prepared.issuer,
                profile=prepared.profile.name,
                state=RecordState.RESERVED,
                subject_id=subject_id_of(identity),
                identity=identity,
                not_before=int(prepared.not_before.timestamp()),
                not_after=int(prepared.not_after.timestamp()),
                created_at=now,
                request_id=request_id,
                replaces=replaces,
            )
            try:
                entry = await self._store.create(CERTIFICATES, record.serial_hex, record.to_json())
            except KeyExists:
                serial = new_serial()  # 2^-159 odds, but a collision must never share a serial
                continue
            return record, entry.version
        raise Unavailable("no free serial number found; retry", reason="SERIAL_EXHAUSTED")

    def _issue_operations(self, issued: CertificateRecord, version: int, request_id: str, kind: str) -> list[Operation]:
        key = issued.serial_hex
        operations: list[Operation] = [
            Replace(CERTIFICATES, key, issued.to_json(), version),
            Create(by_subject(issued.subject_id), key, issued.issuer.value.encode()),
            Create(ACTIVE, key, issued.issuer.value.encode()),
        ]
        if request_id:
            operations.append(Create(REQUESTS, request_key(kind, request_id), key.encode(), ttl=REQUEST_TTL))
        return operations

    async def _by_request(self, kind: str, request_id: str) -> CertificateRecord | None:
        entry = await self._store.get(REQUESTS, request_key(kind, request_id))
        if entry is None:
            return None
        found = await self._repo.get(entry.value.decode())
        return found[0] if found is not None and found[0].issued else None

    # -- OCSP signers ------------------------------------------------------------------------------------------

    async def issue_ocsp_delegate(self, issuer: CaKind, signer: Signer, *, actor: Actor) -> DelegatedOcspSigner:
        """Issue_ocsp_delegate certifies `signer` as `issuer`'s new OCSP signer, reserved and recorded like any."""
        ca = self.authorities.issuing(issuer)
        now = int(self._clock.now())
        for _ in range(5):
            serial = new_serial()
            reservation = CertificateRecord(
                serial=serial,
                issuer=issuer,
                profile=OCSP_SIGNER_PROFILE,
                state=RecordState.RESERVED,
                subject_id=f"ocsp-{issuer.value}",
                identity=None,
                not_before=now,
                not_after=now,
                created_at=now,
            )
            try:
                entry = await self._store.create(CERTIFICATES, reservation.serial_hex, reservation.to_json())
            except KeyExists:
                continue
            delegate = issue_ocsp_signer(
                ca, signer, settings=self._settings, clock=self._clock, random_bytes=_fixed(serial)
            )
            issued = _issued(reservation, delegate.certificate)
            await self._journal.submit(
                Change(self._issue_operations(issued, entry.version, "", "issue"), [_issue_event(issued, actor)])
            )
            return delegate
        raise Unavailable("no free serial number found; retry", reason="SERIAL_EXHAUSTED")

    async def record_certificate(
        self, certificate: x509.Certificate, issuer: CaKind, profile: str, subject_id: str, *, actor: Actor
    ) -> bool:
        """Record_certificate records a certificate the CA signed before the store knew it (an OCSP signer
        made by `init-ca`); returns False when it is recorded already."""
        key = serial_hex(certificate.serial_number)
        if await self._store.get(CERTIFICATES, key) is not None:
            return False
        now = int(self._clock.now())
        base = CertificateRecord(
            serial=certificate.serial_number,
            issuer=issuer,
            profile=profile,
            state=RecordState.RESERVED,
            subject_id=subject_id,
            identity=None,
            not_before=now,
            not_after=now,
            created_at=now,
        )
        issued = _issued(base, certificate)
        operations: list[Operation] = [
            Create(CERTIFICATES, key, issued.to_json()),
            Create(by_subject(subject_id), key, issuer.value.encode()),
            Create(ACTIVE, key, issuer.value.encode()),
        ]
        try:
            await self._journal.submit(Change(operations, [_issue_event(issued, actor, action="record")]))
        except KeyExists:
            return False
        return True

    # -- reading ---------------------------------------------------------------------------------------------

    async def get(self, serial_text: str) -> CertificateRecord:
        """Get returns an issued certificate by serial, or raises NotFound."""
        serial = parse_serial_field(serial_text)
        record, _ = await self._issued_record(serial_hex(serial))
        return record

    async def list_certificates(
        self, *, subject_id: str, state: CertificateState | None, page_size: int, page_token: str
    ) -> tuple[list[CertificateRecord], str]:
        """List_certificates pages through certificates, of one subject and/or in one state.

        Pages may hold fewer than `page_size` certificates when many are filtered out; only an empty token
        means the end.
        """
        if page_size == 0:
            page_size = 100
        if not 1 <= page_size <= MAX_LIST_PAGE:
            raise InvalidArgument("invalid page size", fields={"page_size": f"must be between 1 and {MAX_LIST_PAGE}"})
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
        now = self._clock.now()
        found: list[CertificateRecord] = []
        for _ in range(_SCAN_PAGES):
            page = await self._store.list(
                collections[segment], page_size=page_size - len(found), page_token=store_token
            )
            if inline:
                records = [CertificateRecord.from_json(entry.value) for entry in page.entries]
            else:
                fetched = await asyncio.gather(*(self._repo.get(entry.key) for entry in page.entries))
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

    async def status(self, serial_text: str, issuer: CaKind | None) -> StatusAnswer:
        """Status answers good or revoked for an issued serial, unknown for anything else (never good)."""
        serial = parse_serial_field(serial_text)
        found = await self._repo.get(serial_hex(serial))
        if found is None:
            return StatusAnswer(None)
        record = found[0]
        if not record.issued or (issuer is not None and record.issuer is not issuer):
            return StatusAnswer(None)
        return StatusAnswer(record)

    async def _issued_record(self, key: str) -> tuple[CertificateRecord, int]:
        found = await self._repo.get(key)
        if found is None or not found[0].issued:
            raise NotFound(f"no certificate with serial number {key}", reason="CERTIFICATE_NOT_FOUND")
        return found

    # -- revocation ------------------------------------------------------------------------------------------

    async def revoke(
        self, serial_text: str, reason: RevocationReason, *, actor: Actor
    ) -> tuple[CertificateRecord, bool]:
        """Revoke revokes a certificate; returns it and whether this call changed it.

        Revoking a revoked certificate again changes nothing (idempotent), except that a certificateHold may
        become a final reason.
        """
        serial = parse_serial_field(serial_text)
        for _ in range(10):
            record, version = await self._issued_record(serial_hex(serial))
            actor.require(MANAGE_ROLES.get(record.profile, frozenset()), f"revoke {record.profile} certificates")
            try:
                operations, event, notice = await self._revocation(record, version, reason, actor)
            except AlreadyRevoked:
                return record, False
            try:
                await self._journal.submit(Change(operations, [event], [notice]))
            except VersionMismatch:
                continue  # changed under us: decide again on the new state
            revoked = CertificateRecord.from_json(_replace_value(operations[0]))
            self._revoked_locally(revoked)
            return revoked, True
        raise Unavailable("the certificate kept changing; retry", reason="CONCURRENT_CHANGE")

    async def revoke_subject(
        self, subject_id: str, reason: RevocationReason, *, actor: Actor
    ) -> list[CertificateRecord]:
        """Revoke_subject revokes every unexpired certificate of a subject the actor may manage.

        Returns the certificates this call revoked; ones revoked already are not repeated.
        """
        collection = by_subject(check_subject_id(subject_id))
        serials: list[str] = []
        token = ""
        while True:
            page = await self._store.list(collection, page_size=MAX_LIST_PAGE, page_token=token)
            serials += [entry.key for entry in page.entries]
            token = page.next_page_token
            if not token:
                break
        now = self._clock.now()
        records = [found[0] for found in await asyncio.gather(*(self._repo.get(s) for s in serials)) if found]
        targets = [
            r
            for r in records
            if r.issued
            and r.not_after > now
            and actor.may(MANAGE_ROLES.get(r.profile, frozenset()))
            and (not r.revoked or (r.reason is RevocationReason.CERTIFICATE_HOLD and reason is not r.reason))
        ]
        results = await asyncio.gather(
            *(self.revoke(r.serial_hex, reason, actor=actor) for r in targets), return_exceptions=True
        )
        revoked: list[CertificateRecord] = []
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, NotFound):
                    continue
                raise result
            if result[1]:
                revoked.append(result[0])
        return revoked

    async def _revocation(
        self, record: CertificateRecord, version: int, reason: RevocationReason, actor: Actor
    ) -> tuple[list[Operation], AuditEvent, FeedEvent]:
        """The operations, audit event and feed event of revoking `record` (raises AlreadyRevoked)."""
        status = revoke(record.status(version), reason, datetime.fromtimestamp(self._clock.now(), tz=UTC))
        revoked = record.with_revocation(status)
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
        reason_code = revoked.reason or RevocationReason.UNSPECIFIED
        event = AuditEvent(
            actor.name,
            "revoke",
            key,
            {
                "issuer": record.issuer.value,
                "profile": record.profile,
                "subject_id": record.subject_id,
                "reason": reason_code.rfc_name,
            },
        )
        notice = FeedEvent(
            key,
            {
                "serial": key,
                "issuer": record.issuer.value,
                "revoked_at": revoked.revoked_at,
                "reason": int(reason_code),
            },
        )
        return operations, event, notice

    def _revoked_locally(self, record: CertificateRecord) -> None:
        self._ocsp_cache.invalidate(record.issuer, record.serial)
        self.crls.request_rebuild(record.issuer)

    def _on_revocation(self, notice: RevocationNotice) -> None:
        # Another replica's revocation: free the stale OCSP answer now (the version key would skip it anyway)
        # and make sure some CRL covers it.
        with contextlib.suppress(ValueError):
            self._ocsp_cache.invalidate(notice.issuer, int(notice.serial_hex, 16))
        self.crls.on_revocation(notice)

    async def watch(self, issuer: CaKind | None) -> AsyncIterator[RevocationNotice]:
        """Watch yields every revocation (of `issuer`, or all) made on any replica from now on."""
        async with self.feed.subscribe() as queue:
            while True:
                notice = await queue.get()
                if notice is None:
                    raise Unavailable("the revocation feed stopped; reconnect", reason="FEED_STOPPED")
                if issuer is None or notice.issuer is issuer:
                    yield notice

    # -- publication -----------------------------------------------------------------------------------------

    async def crl(self, issuer: CaKind) -> PublishedCrl:
        """Crl returns the current published CRL of an issuing CA."""
        return await self.crls.current(issuer)

    async def answer_ocsp(self, request_der: bytes) -> OcspAnswer:
        """Answer_ocsp answers an RFC 6960 request from the store's status, signed by the delegated signer."""
        try:
            query = parse_ocsp_request(request_der)
        except MalformedOcspRequest:
            return OcspAnswer(OCSP_MALFORMED_REQUEST, "error", None)
        responder = select_responder(query, self.authorities.responders)
        if responder is None:
            return OcspAnswer(OCSP_UNAUTHORIZED, "error", None)
        status = None
        if 0 < query.serial <= MAX_SERIAL:
            try:
                found = await self._repo.get(serial_hex(query.serial))
            except StoreUnavailable:
                return OcspAnswer(OCSP_TRY_LATER, "error", None)
            if found is not None and found[0].issued and found[0].issuer is responder.issuer:
                status = found[0].status(found[1])
        der = answer_ocsp(responder, query, status, settings=self._settings, clock=self._clock, cache=self._ocsp_cache)
        if status is None:
            return OcspAnswer(der, "unknown", None)
        response = ocsp.load_der_ocsp_response(der)
        return OcspAnswer(der, "revoked" if status.is_revoked else "good", response.next_update_utc)

    def ca_certificates(self) -> tuple[bytes, bytes, bytes]:
        """Ca_certificates are the root, customer CA and internal CA certificates in PEM."""
        hierarchy = self.authorities.hierarchy
        return hierarchy.root.pem, hierarchy.customer.pem, hierarchy.internal.pem

    def chain_pem(self, issuer: CaKind) -> bytes:
        """Chain_pem is the issuing CA certificate then the root, PEM."""
        return self.authorities.hierarchy.bundle_pem(issuer)


def record_prepared(prepared: PreparedIssuance, serial: int) -> PreparedIssuance:
    """record_prepared is `prepared` with the serial actually reserved (it differs after a collision)."""
    return prepared if prepared.serial == serial else replace(prepared, serial=serial)


def _issued(record: CertificateRecord, certificate: x509.Certificate) -> CertificateRecord:
    return replace(
        record,
        state=RecordState.ISSUED,
        not_before=int(certificate.not_valid_before_utc.timestamp()),
        not_after=int(certificate.not_valid_after_utc.timestamp()),
        subject=certificate.subject.rfc4514_string(),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def _issue_event(record: CertificateRecord, actor: Actor, *, action: str = "issue") -> AuditEvent:
    details = {
        "issuer": record.issuer.value,
        "profile": record.profile,
        "subject_id": record.subject_id,
        "subject": record.subject,
        "sha256": record.fingerprint_sha256,
        "not_after": str(record.not_after),
    }
    if record.request_id:
        details["request_id"] = record.request_id
    if record.replaces:
        details["replaces"] = record.replaces
    return AuditEvent(actor.name, action, record.serial_hex, details)


def _fixed(serial: int) -> Callable[[int], bytes]:
    def random_bytes(size: int) -> bytes:
        return serial.to_bytes(size, "big")

    return random_bytes


def _replace_value(operation: Operation) -> bytes:
    if not isinstance(operation, Replace | Create):
        raise TypeError("not a write")
    return operation.value


def _split_token(token: str, segments: int) -> tuple[int, str]:
    if not token:
        return 0, ""
    head, _, rest = token.partition(".")
    if not head.isdigit() or not 0 <= int(head) < segments:
        raise InvalidArgument("invalid page token", fields={"page_token": "not a token this listing issued"})
    return int(head), rest
