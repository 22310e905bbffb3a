"""The CA's use cases that sign: prepare and issue, renew, OCSP signer issuance, and recording a certificate signed
before the store knew it.

An issuance is prepared and signed first, then recorded in ONE journal commit: the certificate record (created
if absent under its serial), its indexes, the request-id entry (created if absent) and the audit record with the
chain head. A serial drawn twice (2^-159 odds) fails that commit with KeyExists on the certificate: a new serial
is drawn and the certificate signed again, so two certificates never share a serial. The CA never hands out a
certificate it has no record of: a certificate signed whose commit failed is dropped, never returned nor
published (it was never seen outside this process).

The request-id entry is IssueCertificate's idempotency, with no separate ledger: scoped by caller and subject,
it holds the serial and the request's fingerprint. A retry with the same request id and fingerprint gets the
certificate recorded under it, rebuilt from the record (the answer carries no secret); another fingerprint is
REQUEST_ID_REUSED. Of two concurrent calls with one request id, one commit wins; the other's fails with KeyExists
on the request entry, and that call answers with the winner's certificate, its own dropped. A renewal records
its request id the same way, behind the idempotency ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kagi.clock import Clock, utc_datetime
from kagi.errors import Aborted, FailedPrecondition, InvalidArgument, Unavailable
from kagi.idempotency import check_request_id
from kagi.journal import AuditEvent, Change, FeedEvent, Journal
from kagi.store.base import KeyExists
from kagi.store.races import retry_lost_races
from services.ca_service.app.access import ISSUE_ROLES, MANAGE_ROLES, Actor, parse_serial_field
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.records import OCSP_SIGNER_PROFILE, CertificateRecord, RecordState, subject_id_of
from services.ca_service.app.repository import (
    CaRepository,
    RequestEntry,
    issue_request_key,
    renew_request_key,
    request_taken,
    serial_taken,
)
from services.ca_service.app.revocation import Revocation
from services.ca_service.domain.csr import ValidatedCsr, parse_csr
from services.ca_service.domain.hierarchy import DelegatedOcspSigner, issue_ocsp_signer
from services.ca_service.domain.identity import Identity
from services.ca_service.domain.issuance import PreparedIssuance, prepare_issuance, sign_certificate
from services.ca_service.domain.profiles import get_profile
from services.ca_service.domain.revocation import RevocationReason
from services.ca_service.domain.serials import new_serial, serial_hex
from services.ca_service.domain.settings import CaKind, PkiSettings
from services.ca_service.domain.signer import Signer

MIN_SERVICE_LIFETIME = timedelta(days=1)
MAX_SERVICE_LIFETIME = timedelta(days=825)
"""The longest lifetime TLS certificates were ever allowed in the Web PKI."""

_SERIAL_ATTEMPTS = 5


class Issuance:
    """Signs certificates and records them: issue, renew, OCSP signers, certificates made offline."""

    def __init__(
        self,
        repository: CaRepository,
        journal: Journal,
        authorities: Authorities,
        settings: PkiSettings,
        clock: Clock,
        *,
        revocation: Revocation,
    ) -> None:
        self._repository = repository
        self._journal = journal
        self._authorities = authorities
        self._settings = settings
        self._clock = clock
        self._revocation = revocation

    @property
    def settings(self) -> PkiSettings:
        """Return the PKI settings certificates are issued under."""
        return self._settings

    def check_csr(self, csr: bytes) -> ValidatedCsr:
        """Validate a CSR without touching the store (field "csr" on failure)."""
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
        """Validate and authorise an issuance and draw its serial; nothing is stored or signed.

        `lifetime` replaces the profile's for service certificates (1-825 days), inside the CA's own validity.
        """
        chosen = get_profile(profile)
        actor.require(ISSUE_ROLES.get(chosen.name, frozenset()), f"have {chosen.name} certificates issued")
        ca = self._authorities.issuing(chosen.issuer)
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

    async def issue(
        self, prepared: PreparedIssuance, *, request_id: str, actor: Actor, fingerprint: str = ""
    ) -> CertificateRecord:
        """Sign the certificate, then record it with its audit record (and REQUEST_ID) in one commit.

        With a `request_id`, the certificate recorded for it first (by this caller, for this subject) is
        returned when FINGERPRINT, the request's digest, is the one it was recorded with; another fingerprint
        is REQUEST_ID_REUSED.
        """
        request = None
        if check_request_id(request_id):
            subject = f"{prepared.profile.name}:{subject_id_of(prepared.identity)}"
            request = RequestEntry(issue_request_key(actor.name, subject, request_id), fingerprint)

        async def record(issued: CertificateRecord) -> CertificateRecord:
            change = Change(self._repository.issuance_operations(issued, request), [_issue_event(issued, actor)])
            try:
                await self._journal.submit(change)
            except KeyExists as exc:
                if request is None or not request_taken(exc):
                    raise
                # Another call with this request id committed first: its certificate stands, this one is dropped.
                return await self._recorded(request)
            return issued

        return await self._sign_and_record(prepared, record, request_id=request_id)

    async def renew(
        self, serial_text: str, csr: bytes, *, revoke_previous: bool, request_id: str, actor: Actor
    ) -> CertificateRecord:
        """Issue a new certificate for the identity and profile of an existing one, from a new CSR.

        With `revoke_previous` the old certificate is revoked (superseded) in the same atomic write.
        """
        serial = parse_serial_field(serial_text)
        request = RequestEntry(renew_request_key(request_id)) if request_id else None
        if request is not None:
            existing = await self._repository.by_request(request.key)
            if existing is not None:
                return existing[0]
        old, old_version = await self._revocation.issued_record(serial_hex(serial))
        actor.require(MANAGE_ROLES.get(old.profile, frozenset()), f"renew {old.profile} certificates")
        if old.revoked:
            raise FailedPrecondition(
                f"certificate {old.serial_hex} is revoked and cannot be renewed",
                reason="CERTIFICATE_REVOKED",
                metadata={"serial_number": old.serial_hex},
            )
        if old.identity is None or old.profile not in ISSUE_ROLES:
            raise FailedPrecondition(f"{old.profile} certificates are not renewed this way", reason="NOT_RENEWABLE")
        ca = self._authorities.issuing(old.issuer)
        prepared = prepare_issuance(ca, csr, old.identity, old.profile, settings=self._settings, clock=self._clock)
        # The first attempt decides on the read above; one after a lost race reads the old certificate again.
        read: tuple[CertificateRecord, int] | None = (old, old_version)

        async def record(issued: CertificateRecord) -> CertificateRecord:
            async def attempt() -> CertificateRecord:
                nonlocal read
                previous, previous_version = read or await self._revocation.issued_record(old.serial_hex)
                read = None
                operations = self._repository.issuance_operations(issued, request)
                audit = [_issue_event(issued, actor, action="renew")]
                feed: list[FeedEvent] = []
                if revoke_previous and not previous.revoked:
                    planned = await self._revocation.plan(
                        previous, previous_version, RevocationReason.SUPERSEDED, actor
                    )
                    operations += planned.operations
                    audit.append(planned.audit)
                    feed.append(planned.feed)
                try:
                    await self._journal.submit(Change(operations, audit, feed))
                except KeyExists as exc:
                    if request is None or not request_taken(exc):
                        raise
                    return await self._recorded(request)
                if feed:
                    self._revocation.revoked_here(previous)
                return issued

            return await retry_lost_races(attempt, what=f"certificate {old.serial_hex}")

        return await self._sign_and_record(prepared, record, request_id=request_id, replaces=old.serial_hex)

    async def issue_ocsp_delegate(self, issuer: CaKind, signer: Signer, *, actor: Actor) -> DelegatedOcspSigner:
        """Certify SIGNER as ISSUER's new OCSP signer, recorded and audited like any certificate."""
        ca = self._authorities.issuing(issuer)
        now = int(self._clock.now())
        for _ in range(_SERIAL_ATTEMPTS):
            delegate = issue_ocsp_signer(
                ca, signer, settings=self._settings, clock=self._clock, random_bytes=_fixed(new_serial())
            )
            issued = _certificate_record(
                delegate.certificate, issuer, OCSP_SIGNER_PROFILE, f"ocsp-{issuer.value}", None, created_at=now
            )
            change = Change(self._repository.issuance_operations(issued), [_issue_event(issued, actor)])
            try:
                await self._journal.submit(change)
            except KeyExists as exc:
                if serial_taken(exc, issued.serial_hex):
                    continue  # the delegate certificate is dropped: it was never recorded nor used
                raise
            return delegate
        raise Unavailable("no free serial number found; retry", reason="SERIAL_EXHAUSTED")

    async def record_certificate(
        self, certificate: x509.Certificate, issuer: CaKind, profile: str, subject_id: str, *, actor: Actor
    ) -> bool:
        """Record a certificate the CA signed before the store knew it (an OCSP signer made by `init-ca`).

        Returns False when it is recorded already.
        """
        key = serial_hex(certificate.serial_number)
        if await self._repository.has_certificate(key):
            return False
        issued = _certificate_record(certificate, issuer, profile, subject_id, None, created_at=int(self._clock.now()))
        operations = self._repository.issuance_operations(issued)
        try:
            await self._journal.submit(Change(operations, [_issue_event(issued, actor, action="record")]))
        except KeyExists:
            return False
        return True

    async def _sign_and_record(
        self,
        prepared: PreparedIssuance,
        record: Callable[[CertificateRecord], Awaitable[CertificateRecord]],
        *,
        request_id: str,
        replaces: str = "",
    ) -> CertificateRecord:
        """Sign PREPARED and RECORD it; when its serial turns out taken, sign again under a new serial."""
        ca = self._authorities.issuing(prepared.issuer)
        created_at = int(self._clock.now())
        for _ in range(_SERIAL_ATTEMPTS):
            signed = sign_certificate(ca, prepared, settings=self._settings)
            issued = _certificate_record(
                signed.certificate,
                prepared.issuer,
                prepared.profile.name,
                subject_id_of(prepared.identity),
                prepared.identity,
                created_at=created_at,
                request_id=request_id,
                replaces=replaces,
            )
            try:
                return await record(issued)
            except KeyExists as exc:
                if not serial_taken(exc, issued.serial_hex):
                    raise
            # The certificate just signed is dropped (never recorded, never returned): sign under a new serial.
            prepared = dataclasses.replace(prepared, serial=new_serial())
        raise Unavailable("no free serial number found; retry", reason="SERIAL_EXHAUSTED")

    async def _recorded(self, request: RequestEntry) -> CertificateRecord:
        """Return the certificate another call recorded under REQUEST's id, if it was the same request."""
        found = await self._repository.by_request(request.key)
        if found is None:
            raise Aborted("the first request with this request_id just ended; retry", reason="REQUEST_IN_PROGRESS")
        record, recorded_fingerprint = found
        if recorded_fingerprint != request.fingerprint:
            raise InvalidArgument(
                "request_id was already used for a different request",
                reason="REQUEST_ID_REUSED",
                fields={"request_id": "must be new for each different request"},
            )
        return record


def _certificate_record(
    certificate: x509.Certificate,
    issuer: CaKind,
    profile: str,
    subject_id: str,
    identity: Identity | None,
    *,
    created_at: int,
    request_id: str = "",
    replaces: str = "",
) -> CertificateRecord:
    return CertificateRecord(
        serial=certificate.serial_number,
        issuer=issuer,
        profile=profile,
        state=RecordState.ISSUED,
        subject_id=subject_id,
        identity=identity,
        not_before=int(certificate.not_valid_before_utc.timestamp()),
        not_after=int(certificate.not_valid_after_utc.timestamp()),
        created_at=created_at,
        request_id=request_id,
        subject=certificate.subject.rfc4514_string(),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        replaces=replaces,
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
