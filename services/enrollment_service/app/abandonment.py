"""Abandoned setups leave nothing alive: the expiry sweeper, the clean-up of cancelled and expired enrollments,
the erasure of their personal data after the retention period, and the operator's re-opening of an expired one.

A cancelled or expired enrollment is written in one commit together with two durable markers (repository
`abandonment_markers`): the clean-up still to finish, and the personal data to erase later. The clean-up:

1. claims the enrollment (cleanup PENDING -> REVOKING, compare-and-swap), so that a re-opening knows from then
   on that the certificate and the token may be gone;
2. revokes its certificate at the CA (cessationOfOperation) and, for a user this enrollment created, every
   other certificate still active for that user (one the CA signed before a crash lost the step's save); then
   its token(s) at the OTP service. The calls carry request ids derived from the enrollment id, and revoking a
   revoked credential again changes nothing, so a retry after any failure is harmless;
3. in one commit conditioned on the record's version: the user (the setup never completed), its login ID
   reservation and its index entries are deleted, the record says DONE and the marker goes.

The process may die anywhere in between: the marker stays and the next pass starts again at 1 or 2.

Expiry is found without scanning the enrollments: `enrollments-expiring` is listed in key order up to now.
Steps do not touch that index. An entry is filed when the enrollment is created (or put back in progress), and
a due entry whose enrollment has moved on is filed again under its new expiry, so an entry is never later than
the expiry it stands for (as long as the idle timeout is not shortened; reads apply expiry at once anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from kagi.clock import Clock
from kagi.errors import ConcurrentChange, FailedPrecondition, InvalidArgument, KagiError, NotFound, Unavailable
from kagi.store.base import Entry, KeyExists, Operation, StoreUnavailable, VersionMismatch
from services.enrollment_service.app.ports import CertificateAuthority, RevocationReason, TokenService
from services.enrollment_service.app.repository import (
    EnrollmentRepository,
    TimedEntry,
    abandonment_markers,
    cleanup_finished,
    delete_user,
    drop_abandonment_markers,
    drop_app_index,
    drop_certificate_owner,
    drop_stale_marker,
    drop_user_indexes,
    expiring_entry,
    put_enrollment,
    put_user,
    release_login_id,
    reserve_login_id,
    user_indexes,
)
from services.enrollment_service.domain.records import Cleanup, Enrollment, account_key
from services.enrollment_service.domain.states import IN_PROGRESS, Event, State
from services.enrollment_service.domain.users import User

log = structlog.get_logger("kagi.enrollment.sweeper")

ABANDONED_STATES = frozenset({State.CANCELLED, State.EXPIRED})
DEFAULT_RETENTION_SECONDS = 90 * 86400
# Bounds the clean-up a cancellation does before it answers; the sweeper finishes whatever is left.
INLINE_CLEANUP_SECONDS = 5.0


@dataclass(frozen=True)
class SweepReport:
    """Says what one pass of the sweeper did."""

    expired: int = 0
    cleaned: int = 0
    erased: int = 0
    # What the other periodic duties did (renewal reminders sent, superseded certificates revoked).
    maintained: int = 0


def revocation_request_id(enrollment_id: str, what: str, credential_id: str) -> str:
    """Return the idempotency key of revoking one credential of an abandoned enrollment: the same on every
    retry, by any replica, so a retry after a crash revokes nothing twice."""
    return f"abandon/{enrollment_id}/{what}/{credential_id}"


class AbandonedSetups:
    """Expires idle enrollments, cleans up abandoned ones, erases their personal data after the
    retention period, and re-opens an expired one for an operator. Any number of replicas may sweep at once:
    every write is conditioned on the version it read, and every call to the CA or OTP service is idempotent."""

    def __init__(
        self,
        repository: EnrollmentRepository,
        ca: CertificateAuthority,
        otp: TokenService,
        clock: Clock,
        *,
        idle_seconds: float,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self._repo = repository
        self._ca = ca
        self._otp = otp
        self._clock = clock
        self._idle = idle_seconds
        self._retention = retention_seconds
        self._duties: list[Callable[[], Awaitable[int]]] = []

    def add_duty(self, duty: Callable[[], Awaitable[int]]) -> None:
        """Add a periodic duty each pass runs after its own (it answers how many things it did)."""
        self._duties.append(duty)

    # -- the sweeper ------------------------------------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        """Run one pass: expire the idle, finish every pending clean-up, erase what the retention ended."""
        await self._repo.backfill_expiring_index()
        expired = await self.expire_due()
        cleaned = await self.clean_up_pending()
        erased = await self.erase_due()
        maintained = 0
        for duty in self._duties:
            maintained += await duty()
        if expired or cleaned or erased or maintained:
            log.info("sweep", expired=expired, cleaned=cleaned, erased=erased, maintained=maintained)
        return SweepReport(expired, cleaned, erased, maintained)

    async def run(self, stop: asyncio.Event, *, interval: float) -> None:
        """Sweep every `interval` seconds until `stop` is set; outages are waited out, errors logged."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Unavailable as exc:
                log.warning("sweep paused", error=exc.message)
            except Exception:
                # A background task must outlive one bad record; the next pass tries again.
                log.exception("sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def expire_due(self) -> int:
        """Write EXPIRED (and the clean-up markers) for every enrollment idle past its expiry."""
        now = self._clock.now()
        expired = 0
        async for entry in self._repo.expiring_due(now):
            try:
                expired += await self._expire(entry, now)
            except StoreUnavailable:
                raise
            except KagiError as exc:
                log.warning("expiry deferred", index_key=entry.key, error=exc.reason)
        return expired

    async def clean_up_pending(self) -> int:
        """Finish the clean-up of every abandoned enrollment that still has one."""
        cleaned = 0
        async for enrollment_id in self._repo.abandoned_enrollment_ids():
            try:
                cleaned += await self.clean_up(enrollment_id)
            except StoreUnavailable:
                raise
            except KagiError as exc:
                log.warning("clean-up deferred", enrollment_id=enrollment_id, error=exc.reason)
        return cleaned

    async def erase_due(self) -> int:
        """Erase the personal data of every enrollment abandoned longer ago than the retention."""
        now = self._clock.now()
        erased = 0
        async for entry in self._repo.retention_due(now - self._retention):
            try:
                erased += await self._erase(entry, now)
            except StoreUnavailable:
                raise
            except KagiError as exc:
                log.warning("erasure deferred", index_key=entry.key, error=exc.reason)
        return erased

    async def _expire(self, entry: TimedEntry, now: float) -> int:
        enrollment_id = entry.enrollment_id
        found = await self._repo.find_enrollment(enrollment_id)
        if found is None or found.record.state not in IN_PROGRESS | {State.LOCKED}:
            with contextlib.suppress(VersionMismatch):
                await self._repo.commit([entry.removal()])
            return 0
        record = found.record
        if record.state is State.LOCKED:
            # No expiry while locked; watch it again an idle period from now, when an unlock may have resumed it.
            await self._repo.refile_expiring(entry, now + self._idle)
            return 0
        if now < record.expires_at:
            await self._repo.refile_expiring(entry, record.expires_at)  # a step was taken since
            return 0
        expired = record.abandoned(Event.EXPIRE, now)
        try:
            await self._repo.commit(
                [put_enrollment(expired, found.version), entry.removal(), *abandonment_markers(expired)]
            )
        except (VersionMismatch, KeyExists):
            return 0  # a step, a cancellation or another sweeper got there first: the next pass decides again
        log.info("enrollment expired", enrollment_id=enrollment_id, expired_from=record.state.value)
        return 1

    # -- the clean-up -----------------------------------------------------------------------------------------

    async def clean_up(self, enrollment_id: str) -> int:
        """Finish the clean-up of one abandoned enrollment: 1 when it finished now, else 0.

        Idempotent: after any failure (the CA or OTP service down, a crash) calling it again carries on.
        """
        found = await self._repo.find_enrollment(enrollment_id)
        marker = await self._repo.cleanup_marker(enrollment_id)
        if found is None or not _cleaning(found.record):
            if marker is not None:  # nothing (left) to clean: the marker is stale
                with contextlib.suppress(VersionMismatch):
                    await self._repo.commit([drop_stale_marker(enrollment_id, marker)])
            return 0
        record, version = found.record, found.version
        if record.cleanup is Cleanup.PENDING:
            claimed = record.with_cleanup(Cleanup.REVOKING, self._clock.now())
            try:
                written = await self._repo.commit([put_enrollment(claimed, version)])
            except VersionMismatch:
                return 0  # re-opened, or claimed by another replica: the next pass looks again
            record, version = claimed, _version(written[0])
        await self._revoke_credentials(record)
        now = self._clock.now()
        operations: list[Operation] = [
            put_enrollment(record.with_cleanup(Cleanup.DONE, now), version),
            cleanup_finished(enrollment_id),
            *await self._release(record),
        ]
        try:
            await self._repo.commit(operations)
        except (VersionMismatch, KeyExists):
            return 0  # re-opened meanwhile (its credentials are revoked all the same) or another replica finished
        log.info("abandoned enrollment cleaned up", enrollment_id=enrollment_id, state=record.state.value)
        return 1

    async def clean_up_now(self, enrollment_id: str) -> None:
        """Try the clean-up at once (after a cancellation), within a bound; whatever fails or is
        left is finished by the sweeper, which the durable marker points at."""
        try:
            await asyncio.wait_for(self.clean_up(enrollment_id), INLINE_CLEANUP_SECONDS)
        except (KagiError, TimeoutError) as exc:
            log.warning(
                "clean-up left to the sweeper", enrollment_id=enrollment_id, error=getattr(exc, "reason", "TIMEOUT")
            )

    async def _revoke_credentials(self, record: Enrollment) -> None:
        """Revoke every certificate and token the enrollment created; raise the first failure after trying all."""
        results = await asyncio.gather(
            self._revoke_certificates(record), self._revoke_tokens(record), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _revoke_certificates(self, record: Enrollment) -> None:
        ours = bool(record.user_id) and await self._user_is_ours(record)
        serials = []
        if record.certificate_serial and (ours or await self._issued_here(record)):
            serials.append(record.certificate_serial)
        if ours:
            serials += [s.lower() for s in await self._ca.active_certificates(record.user_id)]
        for serial in dict.fromkeys(serials):
            await self._ca.revoke(
                serial_number=serial,
                reason=RevocationReason.CESSATION_OF_OPERATION,
                request_id=revocation_request_id(record.enrollment_id, "certificate", serial),
            )

    async def _revoke_tokens(self, record: Enrollment) -> None:
        ours = bool(record.user_id) and await self._user_is_ours(record)
        tokens = []
        if record.token_id and (ours or await self._requested_here(record)):
            tokens.append(record.token_id)
        if ours:
            tokens += await self._otp.live_token_ids(record.user_id)
        for token_id in dict.fromkeys(tokens):
            await self._otp.revoke_token(
                request_id=revocation_request_id(record.enrollment_id, "token", token_id), token_id=token_id
            )

    async def _user_is_ours(self, record: Enrollment) -> bool:
        """Whether the enrollment's user is one it created and that never completed a setup, so that every
        credential of that user is the abandoned setup's (a user released already was). A reissue enrollment's
        user is not: of that user's credentials only those this enrollment issued are revoked."""
        found = await self._repo.find_user(record.user_id)
        if found is None:
            return True
        user = found.record
        return user.enrollment_id == record.enrollment_id and not user.setup_complete

    async def _issued_here(self, record: Enrollment) -> bool:
        """Whether the enrollment's certificate was issued by its own step 4 (the owner index says so)."""
        owner = (
            await self._repo.certificate_owner(record.certificate_fingerprint)
            if record.certificate_fingerprint
            else None
        )
        return owner is not None and owner.enrollment_id == record.enrollment_id

    async def _requested_here(self, record: Enrollment) -> bool:
        """Whether the enrollment's token was created by its own step 7 (the app index says so)."""
        if not record.service_id:
            return False
        indexed = await self._repo.enrollment_id_for_app(record.service_id, record.app_user_id)
        return indexed == record.enrollment_id

    async def _release(self, record: Enrollment) -> list[Operation]:
        """The operations that release what the enrollment reserved: its index entries and, the setup having
        never completed, the user it created with the user's login ID and listing entries."""
        operations: list[Operation] = []
        if record.service_id:
            operations.append(drop_app_index(record.service_id, record.app_user_id))
        if record.certificate_fingerprint:
            owner = await self._repo.certificate_owner(record.certificate_fingerprint)
            if owner is not None and owner.enrollment_id == record.enrollment_id:
                operations.append(drop_certificate_owner(record.certificate_fingerprint))
        if not record.user_id:
            return operations
        found = await self._repo.find_user(record.user_id)
        if found is None:
            return operations
        user = found.record
        if user.enrollment_id != record.enrollment_id or user.setup_complete:
            return operations  # not this setup's to release
        operations.append(delete_user(user.user_id, found.version))
        operations += drop_user_indexes(user)
        login = await self._repo.login_id_holder(user.login_id)
        if login is not None and login.record == user.user_id:
            operations.append(release_login_id(user.login_id, login.version))
        return operations

    # -- the retention ----------------------------------------------------------------------------------------

    async def _erase(self, entry: TimedEntry, now: float) -> int:
        enrollment_id = entry.enrollment_id
        found = await self._repo.find_enrollment(enrollment_id)
        if found is None or found.record.state not in ABANDONED_STATES or found.record.personal_data_erased:
            with contextlib.suppress(VersionMismatch):
                await self._repo.commit([entry.removal()])
            return 0
        try:
            await self._repo.commit(
                [put_enrollment(found.record.without_personal_data(now), found.version), entry.removal()]
            )
        except VersionMismatch:
            return 0  # the clean-up moved it on meanwhile: the next pass erases it
        log.info("personal data erased", enrollment_id=enrollment_id)
        return 1

    # -- the operator -----------------------------------------------------------------------------------------

    async def reopen(self, enrollment_id: str) -> Enrollment:
        """Re-open an EXPIRED enrollment with a fresh idle timeout (the operator's decision).

        Before the clean-up began it resumes in the state it expired from, credentials and all. Once it began,
        the certificate and the token are (or are made) revoked and it resumes at REGISTERED, so that step 4
        issues a new certificate; the user and the login ID are kept or reserved again. FAILED_PRECONDITION
        says why when it cannot be: not EXPIRED, the login ID registered by someone else since, or the personal
        data erased after the retention period.
        """
        if not enrollment_id:
            raise InvalidArgument("enrollment_id is required", fields={"enrollment_id": "required"})
        current = await self._repo.enrollment(enrollment_id)
        stored = current.record
        now = self._clock.now()
        view = stored.current(now)
        revoked = view.cleanup in (Cleanup.REVOKING, Cleanup.DONE)
        resumed = view.reopened(now, self._idle, credentials_revoked=revoked)
        operations: list[Operation] = [put_enrollment(resumed, current.version), expiring_entry(resumed)]
        if stored.cleanup is not Cleanup.NONE:
            operations += drop_abandonment_markers(stored)
        reserving: list[Operation] = []
        if revoked:
            # Finish what the clean-up began, so that nothing of the old credentials survives the re-opening.
            await self._revoke_credentials(stored)
            operations += await self._release_old_credentials(stored)
            if stored.user_id:
                reserving = await self._reserve_user(stored, now)
        try:
            await self._repo.commit([*operations, *reserving])
        except KeyExists:
            if reserving and await self._repo.login_id_taken(stored.login_id):
                raise _login_id_taken(stored.login_id) from None
            raise ConcurrentChange("the enrollment changed concurrently; retry") from None
        except VersionMismatch:
            raise ConcurrentChange("the enrollment changed concurrently; retry") from None
        log.info("enrollment re-opened", enrollment_id=enrollment_id, state=resumed.state.value)
        return resumed

    async def _release_old_credentials(self, record: Enrollment) -> list[Operation]:
        operations: list[Operation] = []
        if record.service_id:
            operations.append(drop_app_index(record.service_id, record.app_user_id))
        if record.certificate_fingerprint:
            operations.append(drop_certificate_owner(record.certificate_fingerprint))
        return operations

    async def _reserve_user(self, record: Enrollment, now: float) -> list[Operation]:
        """Keep the enrollment's user, or create it again with its login ID if the clean-up released them."""
        if await self._repo.find_user(record.user_id) is not None:
            return []
        if await self._repo.login_id_taken(record.login_id):
            raise _login_id_taken(record.login_id)
        try:
            application = (await self._repo.application(record.application_id)).record
        except NotFound:
            raise FailedPrecondition(
                "the enrollment's application is gone: register a new application", reason="APPLICATION_GONE"
            ) from None
        user = User(
            user_id=record.user_id,
            login_id=record.login_id,
            user_name=record.user_name,
            email=record.email,
            company_name=application.company_name,
            application_id=application.application_id,
            enrollment_id=record.enrollment_id,
            login_password_hash=record.login_password_hash,
            confirmation_password_hash=record.confirmation_password_hash,
            account=account_key(application.branch_code, application.account_type, application.account_number),
            created_at=now,
        )
        return [reserve_login_id(user.login_id, user.user_id), put_user(user, None), *user_indexes(user)]


def _cleaning(record: Enrollment) -> bool:
    return record.state in ABANDONED_STATES and record.cleanup in (Cleanup.PENDING, Cleanup.REVOKING)


def _version(entry: Entry | None) -> int:
    if entry is None:
        raise ValueError("a put returns its entry")
    return entry.version


def _login_id_taken(login_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the login ID {login_id} was registered by another user after the clean-up released it:"
        " the enrollment cannot be re-opened",
        reason="LOGIN_ID_REREGISTERED",
        metadata={"login_id": login_id},
    )
