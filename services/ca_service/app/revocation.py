"""The CA's use cases over certificates it issued: get, list, status, revoke one, revoke a subject's.

A revocation replaces the certificate record (compare-and-swap on the version read), moves it from the active
index to its CA's revoked list, and announces it on the feed, all in one journal change with its audit
record. A lost race is decided again on the new state; a certificate revoked meanwhile is not revoked twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from kagi.clock import Clock
from kagi.errors import InvalidArgument, NotFound
from kagi.journal import AuditEvent, Change, FeedEvent, Journal
from kagi.store.base import Operation
from kagi.store.races import retry_lost_races
from services.ca_service.app.access import MANAGE_ROLES, Actor, parse_serial_field
from services.ca_service.app.publication import Publication
from services.ca_service.app.records import CertificateRecord, CertificateState
from services.ca_service.app.repository import CaRepository
from services.ca_service.domain.errors import AlreadyRevoked
from services.ca_service.domain.revocation import RevocationReason, revoke
from services.ca_service.domain.serials import serial_hex
from services.ca_service.domain.settings import CaKind

MAX_LIST_PAGE = 1000
"""The largest page ListCertificates serves."""


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """Good, revoked (with the record) or unknown (record None) for a serial."""

    record: CertificateRecord | None

    @property
    def known(self) -> bool:
        """Tell whether the CA issued the serial."""
        return self.record is not None


@dataclass(frozen=True, slots=True)
class PlannedRevocation:
    """A revocation ready to commit: its operations, audit and feed events, and the result."""

    operations: list[Operation]
    audit: AuditEvent
    feed: FeedEvent
    revoked: CertificateRecord


class Revocation:
    """Reads the CA's certificates and revokes them."""

    def __init__(self, repository: CaRepository, journal: Journal, clock: Clock, *, publication: Publication) -> None:
        self._repository = repository
        self._journal = journal
        self._clock = clock
        self._publication = publication

    async def get(self, serial_text: str) -> CertificateRecord:
        """Return an issued certificate by serial, or raise NotFound."""
        serial = parse_serial_field(serial_text)
        record, _ = await self.issued_record(serial_hex(serial))
        return record

    async def list_certificates(
        self, *, subject_id: str, state: CertificateState | None, page_size: int, page_token: str
    ) -> tuple[list[CertificateRecord], str]:
        """Page through certificates, of one subject and/or in one state.

        Pages may hold fewer than `page_size` certificates when many are filtered out; only an empty token
        means the end.
        """
        if page_size == 0:
            page_size = 100
        if not 1 <= page_size <= MAX_LIST_PAGE:
            raise InvalidArgument("invalid page size", fields={"page_size": f"must be between 1 and {MAX_LIST_PAGE}"})
        return await self._repository.list_certificates(
            subject_id=subject_id, state=state, now=self._clock.now(), page_size=page_size, page_token=page_token
        )

    async def status(self, serial_text: str, issuer: CaKind | None) -> StatusAnswer:
        """Answer good or revoked for an issued serial, unknown for anything else (never good)."""
        serial = parse_serial_field(serial_text)
        found = await self._repository.certificate(serial_hex(serial))
        if found is None:
            return StatusAnswer(None)
        record = found[0]
        if not record.issued or (issuer is not None and record.issuer is not issuer):
            return StatusAnswer(None)
        return StatusAnswer(record)

    async def issued_record(self, key: str) -> tuple[CertificateRecord, int]:
        """Return the issued certificate under a canonical serial with its version, or raise NotFound."""
        found = await self._repository.certificate(key)
        if found is None or not found[0].issued:
            raise NotFound(f"no certificate with serial number {key}", reason="CERTIFICATE_NOT_FOUND")
        return found

    async def revoke(
        self, serial_text: str, reason: RevocationReason, *, actor: Actor
    ) -> tuple[CertificateRecord, bool]:
        """Revoke a certificate; return it and whether this call changed it.

        Revoking a revoked certificate again changes nothing (idempotent), except that a certificateHold may
        become a final reason.
        """
        key = serial_hex(parse_serial_field(serial_text))

        async def attempt() -> tuple[CertificateRecord, bool]:
            record, version = await self.issued_record(key)
            actor.require(MANAGE_ROLES.get(record.profile, frozenset()), f"revoke {record.profile} certificates")
            try:
                planned = await self.plan(record, version, reason, actor)
            except AlreadyRevoked:
                return record, False
            await self._journal.submit(Change(planned.operations, [planned.audit], [planned.feed]))
            self.revoked_here(planned.revoked)
            return planned.revoked, True

        return await retry_lost_races(attempt, what=f"certificate {key}")

    async def revoke_subject(
        self, subject_id: str, reason: RevocationReason, *, actor: Actor
    ) -> list[CertificateRecord]:
        """Revoke every unexpired certificate of a subject the actor may manage.

        Returns the certificates this call revoked; ones revoked already are not repeated.
        """
        records = await self._repository.subject_certificates(subject_id)
        now = self._clock.now()
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

    async def plan(
        self, record: CertificateRecord, version: int, reason: RevocationReason, actor: Actor
    ) -> PlannedRevocation:
        """Plan revoking RECORD (read at VERSION) for REASON; raise AlreadyRevoked when nothing would change."""
        status = revoke(record.status(version), reason, datetime.fromtimestamp(self._clock.now(), tz=UTC))
        revoked = record.with_revocation(status)
        operations = await self._repository.revocation_operations(record, revoked, version)
        reason_code = revoked.reason or RevocationReason.UNSPECIFIED
        audit = AuditEvent(
            actor.name,
            "revoke",
            record.serial_hex,
            {
                "issuer": record.issuer.value,
                "profile": record.profile,
                "subject_id": record.subject_id,
                "reason": reason_code.rfc_name,
            },
        )
        return PlannedRevocation(operations, audit, self._repository.revocation_event(revoked), revoked)

    def revoked_here(self, record: CertificateRecord) -> None:
        """Bring this replica's CRL and OCSP answers up to a revocation it just committed."""
        self._publication.revoked(record)
