"""The CA's use cases that sign: prepare and issue, renew, OCSP signer issuance, and recording a certificate signed
before the store knew it.

Issuance reserves the serial (create-if-absent) before anything is signed, then replaces the reservation with
the signed record in one journal change with its audit record; a certificate the CA has no record of cannot
exist, and two certificates can never share a serial. With a request id, a retry (also after a crash that lost
the idempotency ledger's answer) finds the certificate issued for it instead of signing another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kagi.clock import Clock, utc_datetime
from kagi.errors import FailedPrecondition, InvalidArgument, Unavailable
from kagi.journal import AuditEvent, Change, FeedEvent, Journal
from kagi.store.base import KeyExists
from kagi.store.races import retry_lost_races
from services.ca_service.app.access import ISSUE_ROLES, MANAGE_ROLES, Actor, parse_serial_field
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.records import OCSP_SIGNER_PROFILE, CertificateRecord, RecordState, subject_id_of
from services.ca_service.app.repository import CaRepository
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
"""MAX_SERVICE_LIFETIME: the longest lifetime TLS certificates were ever allowed in the Web PKI."""

_SERIAL_ATTEMPTS = 5


class Issuance:
    """Issuance signs certificates and records them: issue, renew, OCSP signers, certificates made offline."""

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

    async def issue(self, prepared: PreparedIssuance, *, request_id: str, actor: Actor) -> CertificateRecord:
        """Reserve the serial, sign, and record the certificate with its audit record.

        With a `request_id`, a certificate already issued for it is returned instead (also after a crash that
        lost the idempotency ledger's answer).
        """
        if request_id:
            existing = await self._repository.by_request("issue", request_id)
            if existing is not None:
                return existing
        record, version = await self._reserve(prepared, request_id)
        ca = self._authorities.issuing(prepared.issuer)
        signed = sign_certificate(ca, record_prepared(prepared, record.serial), settings=self._settings)
        issued = _issued(record, signed.certificate)
        operations = self._repository.issuance_operations(issued, version, request_id=request_id, kind="issue")
        try:
            await self._journal.submit(Change(operations, [_issue_event(issued, actor)]))
        except KeyExists:
            # A concurrent call with the same request id recorded its certificate first: that one stands.
            existing = await self._repository.by_request("issue", request_id) if request_id else None
            if existing is None:
                raise
            return existing
        return issued

    async def renew(
        self, serial_text: str, csr: bytes, *, revoke_previous: bool, request_id: str, actor: Actor
    ) -> CertificateRecord:
        """Issue a new certificate for the identity and profile of an existing one, from a new CSR.

        With `revoke_previous` the old certificate is revoked (superseded) in the same atomic write.
        """
        serial = parse_serial_field(serial_text)
        if request_id:
            existing = await self._repository.by_request("renew", request_id)
            if existing is not None:
                return existing
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
        record, version = await self._reserve(prepared, request_id, replaces=old.serial_hex)
        signed = sign_certificate(ca, record_prepared(prepared, record.serial), settings=self._settings)
        issued = _issued(record, signed.certificate)
        # The first attempt decides on the read above; one after a lost race reads the old certificate again.
        read: tuple[CertificateRecord, int] | None = (old, old_version)

        async def attempt() -> CertificateRecord:
            nonlocal read
            previous, previous_version = read or await self._revocation.issued_record(old.serial_hex)
            read = None
            operations = self._repository.issuance_operations(issued, version, request_id=request_id, kind="renew")
            audit = [_issue_event(issued, actor, action="renew")]
            feed: list[FeedEvent] = []
            if revoke_previous and not previous.revoked:
                planned = await self._revocation.plan(previous, previous_version, RevocationReason.SUPERSEDED, actor)
                operations += planned.operations
                audit.append(planned.audit)
                feed.append(planned.feed)
            try:
                await self._journal.submit(Change(operations, audit, feed))
            except KeyExists:
                existing = await self._repository.by_request("renew", request_id) if request_id else None
                if existing is None:
                    raise
                return existing
            if feed:
                self._revocation.revoked_here(previous)
            return issued

        return await retry_lost_races(attempt, what=f"certificate {old.serial_hex}")

    async def issue_ocsp_delegate(self, issuer: CaKind, signer: Signer, *, actor: Actor) -> DelegatedOcspSigner:
        """Certify SIGNER as ISSUER's new OCSP signer, reserved and recorded like any certificate."""
        ca = self._authorities.issuing(issuer)
        now = int(self._clock.now())
        for _ in range(_SERIAL_ATTEMPTS):
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
            version = await self._repository.reserve(reservation)
            if version is None:
                continue
            delegate = issue_ocsp_signer(
                ca, signer, settings=self._settings, clock=self._clock, random_bytes=_fixed(serial)
            )
            issued = _issued(reservation, delegate.certificate)
            await self._journal.submit(
                Change(self._repository.issuance_operations(issued, version), [_issue_event(issued, actor)])
            )
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
        operations = self._repository.recording_operations(issued)
        try:
            await self._journal.submit(Change(operations, [_issue_event(issued, actor, action="record")]))
        except KeyExists:
            return False
        return True

    async def _reserve(
        self, prepared: PreparedIssuance, request_id: str, *, replaces: str = ""
    ) -> tuple[CertificateRecord, int]:
        identity = prepared.identity
        now = int(self._clock.now())
        serial = prepared.serial
        for _ in range(_SERIAL_ATTEMPTS):
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
            version = await self._repository.reserve(record)
            if version is not None:
                return record, version
            serial = new_serial()  # 2^-159 odds, but a collision must never share a serial
        raise Unavailable("no free serial number found; retry", reason="SERIAL_EXHAUSTED")


def record_prepared(prepared: PreparedIssuance, serial: int) -> PreparedIssuance:
    """Return PREPARED with the serial actually reserved (it differs after a collision)."""
    return prepared if prepared.serial == serial else dataclasses.replace(prepared, serial=serial)


def _issued(record: CertificateRecord, certificate: x509.Certificate) -> CertificateRecord:
    return dataclasses.replace(
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
