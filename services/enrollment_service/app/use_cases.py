"""The enrollment use cases: one method per step of the bank's procedure, plus the operator's tasks.

Each step reads the enrollment with its version, checks the caller's credential and that the state allows the
step (before calling the CA or the OTP service, so a wrong-state call has no side effect), does its work, and
writes everything it changed in one atomic commit conditioned on the version it read. That commit also writes
the request id's answer (kagi.idempotency.commit_answering with the step's result), so a step and its answer
land together or not at all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kagi.clock import Clock
from kagi.errors import (
    ConcurrentChange,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from kagi.idempotency import acting_request, commit_answering
from kagi.passwords import PasswordHasher, in_kdf_thread
from kagi.runtime.failpoints import failpoint
from kagi.store.base import KeyExists, Operation, VersionMismatch
from kagi.store.races import retry_lost_races
from services.enrollment_service.app.abandonment import DEFAULT_RETENTION_SECONDS, AbandonedSetups
from services.enrollment_service.app.ports import (
    AppActivation,
    CertificateAuthority,
    CertificateStatus,
    IssuedCertificate,
    RevocationReason,
    TokenService,
)
from services.enrollment_service.app.repository import (
    CertificateExpiry,
    CertificateOwner,
    EnrollmentRepository,
    Versioned,
    abandonment_markers,
    certificate_owner_record,
    expiring_entry,
    index_app,
    outbox_entry,
    point_account,
    put_application,
    put_certificate_expiry,
    put_enrollment,
    put_user,
    reserve_login_id,
    user_indexes,
)
from services.enrollment_service.domain.client_certificates import ClientCertificate, not_after
from services.enrollment_service.domain.credentials import (
    session_token,
    temporary_password,
    token_digest,
    token_matches,
)
from services.enrollment_service.domain.messages import DEFAULT_CONTACT_TEXT, completion_mail, token_mail
from services.enrollment_service.domain.records import (
    MAX_FAILURES,
    AccountType,
    Application,
    ApplicationState,
    Enrollment,
    account_key,
)
from services.enrollment_service.domain.rules import (
    MSG_TAKEN,
    validate_application,
    validate_notice_entry,
    validate_profile,
    validate_token_request,
)
from services.enrollment_service.domain.states import Event, Kind, State, Step, transition
from services.enrollment_service.domain.users import User

RevocationReasonName = str
"""An RFC 5280 reason by name (keyCompromise, superseded, ...), as the CA port takes it."""

NOTICE_MISMATCH = "口座情報または仮パスワードが正しくありません / the account or the temporary passwords do not match"
ACTIVATION_ALREADY_DELIVERED = (
    "このトークンのアプリ設定は完了済みで、シークレットは再表示できません。"  # the wording, then English
    "初期設定中はトークン発行（⑱）をやり直し、設定完了後はトークン再発行をお申し込みください"
    " / this token's secret was already delivered and is never shown again: ask for a new token (during the"
    " setup, request the token again at step 7; after it, reissue the token)"
)


@dataclass(frozen=True)
class EnrollmentPolicy:
    """Holds the service's time limits and the app link sent by mail."""

    idle_seconds: float = 60 * 60
    application_ttl_seconds: float = 30 * 24 * 3600
    app_url: str = "https://www.example.com/kagi-token-app"
    contact_text: str = DEFAULT_CONTACT_TEXT  # the bank's contact line at the foot of every mail
    # How long a cancelled or expired setup's personal data is kept before the sweeper erases it.
    abandoned_retention_seconds: float = DEFAULT_RETENTION_SECONDS
    # Step 1's throttle per client address (relayed by the gateway): after this many failures within the window
    # the address is refused (RESOURCE_EXHAUSTED) before its entries can count against any account; 0 = off.
    notice_failures_per_address: int = 20
    notice_address_window_seconds: float = 600.0


@dataclass(frozen=True)
class Notice:
    """What registering an application returns once: the record and its temporary passwords."""

    application: Application
    temporary_login_password: str
    temporary_confirmation_password: str


def activation_already_delivered() -> FailedPrecondition:
    """Return step 8's answer to a replay: the secret went out once; ask for a new token."""
    return FailedPrecondition(ACTIVATION_ALREADY_DELIVERED, reason="ACTIVATION_ALREADY_DELIVERED")


def _answered(current: Versioned[Enrollment]) -> bool:
    """Tell whether the running request already wrote this enrollment: its step is done and the call is a twin
    (a concurrent call with the same request id) or its stored answer is gone; the step answers from the record."""
    acting = acting_request.get()
    return bool(acting) and current.record.last_request == acting


class EnrollmentService:
    """Drives enrollments through the ten steps."""

    def __init__(
        self,
        repository: EnrollmentRepository,
        ca: CertificateAuthority,
        otp: TokenService,
        hasher: PasswordHasher,
        clock: Clock,
        policy: EnrollmentPolicy | None = None,
    ) -> None:
        self._repo = repository
        self._ca = ca
        self._otp = otp
        self._hasher = hasher
        self._clock = clock
        self._policy = policy or EnrollmentPolicy()
        # Cancelled and expired setups: their clean-up, the expiry sweeper and the operator's re-opening.
        self.setups = AbandonedSetups(
            repository,
            ca,
            otp,
            clock,
            idle_seconds=self._policy.idle_seconds,
            retention_seconds=self._policy.abandoned_retention_seconds,
        )

    # -- operator ---------------------------------------------------------------------------------------------

    async def register_application(
        self,
        *,
        company_name: str,
        branch_code: str,
        account_type: AccountType,
        account_number: str,
        reissue_for: str = "",
        extra: Sequence[Operation] = (),
    ) -> Notice:
        """Record an application and return its temporary passwords, this once.

        With `reissue_for` (a user id) it is a reissue notice: step 1 with it opens a reissue enrollment for that
        user. `extra` operations commit together with it.
        """
        company = validate_application(
            company_name=company_name, branch_code=branch_code, account_number=account_number
        )
        login, confirmation = temporary_password(), temporary_password()
        login_hash, confirmation_hash = await asyncio.gather(
            in_kdf_thread(self._hasher.hash, login), in_kdf_thread(self._hasher.hash, confirmation)
        )
        now = self._clock.now()
        application = Application(
            application_id=uuid.uuid4().hex,
            company_name=company,
            branch_code=branch_code,
            account_type=account_type,
            account_number=account_number,
            temporary_login_hash=login_hash,
            temporary_confirmation_hash=confirmation_hash,
            created_at=now,
            expires_at=now + self._policy.application_ttl_seconds,
            kind=Kind.REISSUE if reissue_for else Kind.SETUP,
            user_id=reissue_for,
        )
        account = account_key(branch_code, account_type, account_number)

        async def file() -> Notice:
            # The account's pointer moves to the newest application: a company that re-applies gets a new notice.
            index_version = await self._repo.account_index_version(account)
            pointer = point_account(account, application.application_id, index_version)
            await self._repo.commit([put_application(application, None), pointer, *extra])
            return Notice(application, login, confirmation)

        return await retry_lost_races(file, what="the account's application", on=(KeyExists, VersionMismatch))

    async def reissue_certificate(self, user_id: str, reason: RevocationReasonName) -> Notice:
        """Reissue after a lost PC: the user's certificates are revoked, every session ends, and a reissue
        notice (the setup's shape) opens a new enrollment through steps 1, 4, 5 and 6 with the same login ID."""
        user = await self._repo.user(user_id)
        if not user.record.setup_complete:
            raise FailedPrecondition(
                "the user's setup has not completed: cancel it or let it expire instead", reason="SETUP_INCOMPLETE"
            )
        original = (await self._repo.application(user.record.application_id)).record
        await self._ca.revoke_subject(
            request_id=f"reissue/{user_id}/{uuid.uuid4().hex}", user_id=user_id, reason=reason
        )
        return await self.register_application(
            company_name=original.company_name,
            branch_code=original.branch_code,
            account_type=original.account_type,
            account_number=original.account_number,
            reissue_for=user_id,
            extra=[put_user(user.record.sessions_ended(), user.version)],
        )

    async def list_applications(self, page_size: int, page_token: str) -> tuple[list[Application], str]:
        """List applications for operators."""
        return await self._repo.applications(page_size or 100, page_token)

    async def unlock_application(self, application_id: str) -> Application:
        """Lift the lockout of an application, or of the enrollment registered with it."""
        current = await self._repo.application(application_id)
        application = current.record
        if application.state is ApplicationState.LOCKED:
            unlocked = application.unlocked()
            await self._write([put_application(unlocked, current.version)])
            return unlocked
        if application.enrollment_id:
            enrollment = await self._repo.enrollment(application.enrollment_id)
            if enrollment.record.state is State.LOCKED:
                resumed = enrollment.record.unlocked(self._clock.now(), self._policy.idle_seconds)
                await self._write([put_enrollment(resumed, enrollment.version)])
                return application
        raise FailedPrecondition("neither the application nor its enrollment is locked", reason="NOTHING_LOCKED")

    # -- step 1 -----------------------------------------------------------------------------------------------

    async def verify_notice(
        self,
        *,
        branch_code: str,
        account_type: AccountType,
        account_number: str,
        temporary_login_password: str,
        temporary_confirmation_password: str,
        client_address: str = "",
    ) -> tuple[Enrollment, str]:
        """Step 1: return a new enrollment and its session token (returned this once).

        Every failure (unknown account, used, expired or locked notice, wrong passwords) answers the same
        UNAUTHENTICATED NOTICE_MISMATCH after the same work (two argon2id verifies, as a real check), so neither
        the answer nor its time tells which. Only the right passwords learn that the notice is locked, expired
        or used. The grant is a compare-and-swap on the application read before the hash check: a wrong entry
        that committed in between (and may have locked it) makes the grant re-read and decide again.
        """
        found = await self.check_notice(
            branch_code=branch_code,
            account_type=account_type,
            account_number=account_number,
            temporary_login_password=temporary_login_password,
            temporary_confirmation_password=temporary_confirmation_password,
            client_address=client_address,
        )
        now = self._clock.now()
        token = session_token()
        enrollment = Enrollment(
            enrollment_id=uuid.uuid4().hex,
            application_id=found.record.application_id,
            state=State.NOTICE_VERIFIED,
            created_at=now,
            updated_at=now,
            expires_at=now + self._policy.idle_seconds,
            session_digest=token_digest(token),
        )
        if found.record.kind is Kind.REISSUE:
            # The profile, the registration and the token are the user's already: carried over, not asked again.
            user = (await self._repo.user(found.record.user_id)).record
            enrollment = replace(
                enrollment,
                kind=Kind.REISSUE,
                user_id=user.user_id,
                user_name=user.user_name,
                email=user.email,
                login_id=user.login_id,
                login_password_hash=user.login_password_hash,
                confirmation_password_hash=user.confirmation_password_hash,
                token_id=user.token_id,
            )
        checked: Versioned[Application] | None = found

        async def grant() -> tuple[Enrollment, str]:
            nonlocal checked
            # The first grant is conditioned on the application as read before the hash check; a lost race
            # reads it again (a wrong entry may have locked it meanwhile).
            application = checked or await self._repo.application(found.record.application_id)
            checked = None
            self._check_application_open(application.record)  # the passwords were right: the precise reason
            granted = replace(application.record, failures=0, verifications=application.record.verifications + 1)
            operations = [
                put_enrollment(enrollment, None),
                expiring_entry(enrollment),
                put_application(granted, application.version),
            ]
            granted_step = (enrollment, token)
            try:
                await commit_answering(self._repo.commit, operations, granted_step)
            except KeyExists:
                # The new enrollment's own keys: nothing a retry could change.
                raise ConcurrentChange("the enrollment changed concurrently; retry") from None
            return granted_step

        return await retry_lost_races(grant, what="the application")

    async def check_notice(
        self,
        *,
        branch_code: str,
        account_type: AccountType,
        account_number: str,
        temporary_login_password: str,
        temporary_confirmation_password: str,
        client_address: str = "",
    ) -> Versioned[Application]:
        """Check step 1's credentials (also before a replay of step 1): return the account's application as read
        before the hash check, or raise the uniform NOTICE_MISMATCH, counted per client address and per account."""
        validate_notice_entry(
            branch_code=branch_code,
            account_number=account_number,
            temporary_login_password=temporary_login_password,
            temporary_confirmation_password=temporary_confirmation_password,
        )
        await self._check_address(client_address)
        found = await self._repo.application_for_account(account_key(branch_code, account_type, account_number))
        if found is None:
            # Cost the same as a real check (both passwords), and answer the same: accounts cannot be probed.
            await asyncio.gather(
                in_kdf_thread(self._hasher.verify_dummy, temporary_login_password),
                in_kdf_thread(self._hasher.verify_dummy, temporary_confirmation_password),
            )
            await self._notice_failed(None, client_address)
        assert found is not None  # _notice_failed always raises
        login_ok, confirmation_ok = await asyncio.gather(
            in_kdf_thread(self._hasher.verify, found.record.temporary_login_hash, temporary_login_password),
            in_kdf_thread(
                self._hasher.verify, found.record.temporary_confirmation_hash, temporary_confirmation_password
            ),
        )
        if not (login_ok and confirmation_ok):
            await self._notice_failed(found, client_address)
        return found

    def _check_application_open(self, application: Application) -> None:
        state = application.current_state(self._clock.now())
        if state is ApplicationState.LOCKED:
            raise ResourceExhausted(
                "仮パスワードの誤入力が続いたためロックされています。お取引店へご連絡ください"
                " / locked after too many wrong temporary passwords: contact your branch",
                reason="APPLICATION_LOCKED",
            )
        if state is ApplicationState.EXPIRED:
            raise FailedPrecondition(
                "通知書の有効期限が切れています / the notice has expired", reason="APPLICATION_EXPIRED"
            )
        if state is ApplicationState.USED:
            raise FailedPrecondition(
                "この通知書は使用済みです / this notice has already been used", reason="APPLICATION_USED"
            )

    async def _check_address(self, client_address: str) -> None:
        """Refuse an address over its failure budget before its entry can count against an account."""
        limit = self._policy.notice_failures_per_address
        if not client_address or limit <= 0:
            return
        if await self._repo.notice_failures(client_address) >= limit:
            raise ResourceExhausted(
                "誤入力が続いたため、しばらくしてからお試しください"
                " / too many failed attempts from this address: wait a few minutes and try again",
                reason="TOO_MANY_ATTEMPTS",
                metadata={"retry_after_seconds": str(int(self._policy.notice_address_window_seconds))},
            )

    async def _notice_failed(self, found: Versioned[Application] | None, client_address: str) -> None:
        """Count a failed step 1 against the client address and the account's application, then answer the
        uniform NOTICE_MISMATCH (the fifth counted failure locks the application, but says so only to the right
        passwords). A wrong entry that raced a grant (the application was read before it) is not counted."""
        if client_address and self._policy.notice_failures_per_address > 0:
            await self._repo.count_notice_failure(
                client_address, window_seconds=self._policy.notice_address_window_seconds
            )
        if found is not None:
            await self._count_notice_failure(found)
        # No count of attempts left: it would tell a known account from an unknown one.
        raise Unauthenticated(NOTICE_MISMATCH, reason="NOTICE_MISMATCH")

    async def _count_notice_failure(self, seen: Versioned[Application]) -> None:
        async def count() -> None:
            current = await self._repo.application(seen.record.application_id)
            record = current.record
            if record.verifications != seen.record.verifications:
                return  # a grant committed after this entry's read: the race goes to the right passwords
            if record.current_state(self._clock.now()) is not ApplicationState.OPEN:
                return  # locked, used or expired: nothing left to count
            await self._repo.commit([put_application(record.with_failure(), current.version)])

        await retry_lost_races(count, what="the application")

    # -- steps 2-4: the session token ------------------------------------------------------------------------

    async def submit_profile(self, enrollment_id: str, session: str, **entries: str) -> tuple[Enrollment, str]:
        """Step 2: return the enrollment and the company name for the summary."""
        current = await self._session_enrollment(enrollment_id, session)
        enrollment = current.record
        if _answered(current):
            return enrollment, (await self._repo.application(enrollment.application_id)).record.company_name
        transition(enrollment.state, Step.SUBMIT_PROFILE, enrollment.kind)
        profile = validate_profile(**entries)
        if await self._repo.login_id_taken(profile.login_id):
            raise InvalidArgument("入力内容に誤りがあります", reason="LOGIN_ID_TAKEN", fields={"login_id": MSG_TAKEN})
        login_hash, confirmation_hash = await asyncio.gather(
            in_kdf_thread(self._hasher.hash, profile.login_password),
            in_kdf_thread(self._hasher.hash, profile.confirmation_password),
        )
        advanced = enrollment.advanced(
            Step.SUBMIT_PROFILE,
            self._clock.now(),
            self._policy.idle_seconds,
            user_name=profile.user_name,
            email=profile.email,
            login_id=profile.login_id,
            login_password_hash=login_hash,
            confirmation_password_hash=confirmation_hash,
        )
        application = await self._repo.application(enrollment.application_id)
        answer = (advanced, application.record.company_name)
        await self._write_step([put_enrollment(advanced, current.version)], answer)
        return answer

    async def confirm_registration(self, enrollment_id: str, session: str) -> Enrollment:
        """Step 3: create the user, reserve the login ID and spend the notice."""
        current = await self._session_enrollment(enrollment_id, session)
        enrollment = current.record
        if _answered(current):
            return enrollment
        transition(enrollment.state, Step.CONFIRM_REGISTRATION, enrollment.kind)
        application = await self._repo.application(enrollment.application_id)
        self._check_application_open(application.record)
        now = self._clock.now()
        advanced = enrollment.advanced(
            Step.CONFIRM_REGISTRATION, now, self._policy.idle_seconds, user_id=uuid.uuid4().hex
        )
        record = application.record
        user = User(
            user_id=advanced.user_id,
            login_id=advanced.login_id,
            user_name=advanced.user_name,
            email=advanced.email,
            company_name=record.company_name,
            application_id=record.application_id,
            enrollment_id=advanced.enrollment_id,
            login_password_hash=advanced.login_password_hash,
            confirmation_password_hash=advanced.confirmation_password_hash,
            account=account_key(record.branch_code, record.account_type, record.account_number),
            created_at=now,
        )
        operations: list[Operation] = [
            reserve_login_id(advanced.login_id, advanced.user_id),
            put_user(user, None),
            *user_indexes(user),
            put_application(application.record.spent(enrollment.enrollment_id), application.version),
            put_enrollment(advanced, current.version),
        ]
        try:
            await commit_answering(self._repo.commit, operations, advanced)
        except KeyExists:
            raise InvalidArgument(
                "入力内容に誤りがあります", reason="LOGIN_ID_TAKEN", fields={"login_id": MSG_TAKEN}
            ) from None
        except VersionMismatch:
            raise ConcurrentChange("the enrollment changed concurrently; retry") from None
        return advanced

    async def issue_certificate(
        self, enrollment_id: str, session: str, csr_pem: str, request_id: str
    ) -> tuple[Enrollment, IssuedCertificate]:
        """Step 4: the CA signs the client's CSR for this user, and the session token of
        steps 1-4 is retired (it then answers only a replay of this request).

        The CA call's idempotency key is derived from the enrollment and the version this call read, never from
        the caller's request id: every call racing on the same enrollment, and every retry after a crash between
        the CA's answer and our save, gets the one certificate. A certificate whose enrollment write lost
        anyway (the enrollment moved on to another certificate) is revoked before the answer.
        """
        current = await self._session_enrollment(enrollment_id, session)
        enrollment = current.record
        if _answered(current) and enrollment.certificate_pem:
            return enrollment, IssuedCertificate(
                serial_number=enrollment.certificate_serial,
                fingerprint_sha256=enrollment.certificate_fingerprint,
                certificate_pem=enrollment.certificate_pem,
                chain_pem=enrollment.chain_pem,
            )
        transition(enrollment.state, Step.ISSUE_CERTIFICATE, enrollment.kind)
        if not csr_pem:
            raise InvalidArgument("a CSR is required", reason="CSR_REQUIRED", fields={"csr_pem": "required"})
        application = await self._repo.application(enrollment.application_id)
        if enrollment.kind is Kind.REISSUE:
            self._check_application_open(application.record)  # a reissue notice is spent by its certificate
        try:
            certificate = await self._ca.issue_customer_certificate(
                request_id=f"enrollment/{enrollment.enrollment_id}/certificate/{current.version}",
                csr_pem=csr_pem,
                user_id=enrollment.user_id,
                company_name=application.record.company_name,
                user_name=enrollment.user_name,
                login_id=enrollment.login_id,
            )
        except InvalidArgument as exc:
            if exc.reason != "REQUEST_ID_REUSED":
                raise
            # The CA signed another CSR for this enrollment (a racing or crashed step 4): one certificate only.
            raise FailedPrecondition(
                "この初期設定の証明書は別の証明書署名要求で発行中または発行済みです。同じ要求を再送してください"
                " / a certificate for this enrollment was requested with another CSR: resend that same request",
                reason="CERTIFICATE_ALREADY_REQUESTED",
            ) from None
        failpoint("enrollment.after_ca_issue")
        advanced = enrollment.advanced(
            Step.ISSUE_CERTIFICATE,
            self._clock.now(),
            self._policy.idle_seconds,
            certificate_serial=certificate.serial_number.lower(),
            certificate_fingerprint=certificate.fingerprint_sha256.lower(),
            certificate_pem=certificate.certificate_pem,
            chain_pem=certificate.chain_pem,
            session_digest="",
            retired_session_digest=enrollment.session_digest,
        )
        owner = CertificateOwner(enrollment.user_id, enrollment.enrollment_id, advanced.certificate_serial)
        expiry = CertificateExpiry(
            not_after(certificate.certificate_pem),
            advanced.certificate_fingerprint,
            enrollment.user_id,
            advanced.certificate_serial,
        )
        spent: list[Operation] = []
        if enrollment.kind is Kind.REISSUE:
            spent = [put_application(application.record.spent(enrollment.enrollment_id), application.version)]
        operations = [
            *spent,
            put_enrollment(advanced, current.version),
            certificate_owner_record(advanced.certificate_fingerprint, owner),
            put_certificate_expiry(expiry, None),
        ]
        try:
            await commit_answering(self._repo.commit, operations, (advanced, certificate))
        except (VersionMismatch, KeyExists):
            return await self._certificate_write_lost(enrollment_id, certificate)
        return advanced, certificate

    async def _certificate_write_lost(
        self, enrollment_id: str, certificate: IssuedCertificate
    ) -> tuple[Enrollment, IssuedCertificate]:
        """A racing step 4 saved first: the same certificate (the CA answered both the same) is this call's
        answer too; any other is revoked, so no certificate outlives an enrollment that does not hold it."""
        serial = certificate.serial_number.lower()
        saved = (await self._load(enrollment_id)).record
        if saved.certificate_serial == serial:
            return saved, certificate
        await self._ca.revoke(
            serial_number=serial,
            reason=RevocationReason.CESSATION_OF_OPERATION,
            request_id=f"enrollment/{enrollment_id}/orphan/{serial}",
        )
        raise ConcurrentChange("the enrollment changed concurrently; retry")

    # -- steps 5-7 and 10: the client certificate -------------------------------------------------------------

    async def certificate_login(self, enrollment_id: str, certificate: ClientCertificate) -> Enrollment:
        """Step 5: the certificate issued in step 4 was presented, and is not revoked."""
        current = await self._certificate_enrollment(enrollment_id, certificate)
        if _answered(current):
            return current.record
        transition(current.record.state, Step.CERTIFICATE_LOGIN, current.record.kind)
        status = await self._ca.status(current.record.certificate_serial)
        if status is not CertificateStatus.GOOD:
            raise PermissionDenied(f"the certificate is {status.value.lower()}", reason="CERTIFICATE_NOT_GOOD")
        advanced = current.record.advanced(Step.CERTIFICATE_LOGIN, self._clock.now(), self._policy.idle_seconds)
        await self._write_step([put_enrollment(advanced, current.version)], advanced)
        return advanced

    async def password_login(self, enrollment_id: str, certificate: ClientCertificate, password: str) -> Enrollment:
        """Step 6: the login password, in the certificate's session; five failures lock."""
        current = await self._certificate_enrollment(enrollment_id, certificate)
        enrollment = current.record
        if _answered(current) and enrollment.password_failures == 0:
            return enrollment
        transition(enrollment.state, Step.PASSWORD_LOGIN, enrollment.kind)
        if not password:
            raise InvalidArgument("the login password is required", fields={"login_password": "required"})
        if await in_kdf_thread(self._hasher.verify, enrollment.login_password_hash, password):
            now = self._clock.now()
            advanced = enrollment.advanced(Step.PASSWORD_LOGIN, now, self._policy.idle_seconds, password_failures=0)
            operations: list[Operation] = [put_enrollment(advanced, current.version)]
            if advanced.state is State.COMPLETED:  # a reissue ends here: the new certificate works
                mail = completion_mail(
                    to=enrollment.email,
                    user_name=enrollment.user_name,
                    login_id=enrollment.login_id,
                    at=now,
                    contact=self._policy.contact_text,
                )
                operations.append(outbox_entry(mail, now))
            await self._write_step(operations, advanced)
            return advanced
        failed = enrollment.with_password_failure(self._clock.now())
        await self._write([put_enrollment(failed, current.version)])
        if failed.state is State.LOCKED:
            raise ResourceExhausted(
                "ログインパスワードの誤入力が続いたためロックされました。お取引店へご連絡ください"
                " / locked after too many wrong login passwords: contact your branch",
                reason="USER_LOCKED",
            )
        raise Unauthenticated(
            "ログインパスワードが正しくありません / the login password is wrong",
            reason="WRONG_PASSWORD",
            metadata={"remaining_attempts": str(MAX_FAILURES - failed.password_failures)},
        )

    async def request_token(
        self, enrollment_id: str, certificate: ClientCertificate, request_id: str, **entries: str
    ) -> Enrollment:
        """Step 7: a pending token, and the mail with its IDs queued in the same commit."""
        current = await self._certificate_enrollment(enrollment_id, certificate)
        enrollment = current.record
        if _answered(current):
            return enrollment
        transition(enrollment.state, Step.REQUEST_TOKEN, enrollment.kind)
        request = validate_token_request(**entries)
        token_request_id = f"enrollment/{enrollment.enrollment_id}/{request_id or uuid.uuid4().hex}"
        if enrollment.token_id:
            # Step 7 again: the pending token is revoked and a new one takes its place (new IDs by mail).
            token = await self._otp.reissue(
                request_id=token_request_id,
                token_id=enrollment.token_id,
                delivery_email=request.mobile_email,
                usage_start_password=request.usage_start_password,
            )
        else:
            token = await self._otp.create_token(
                request_id=token_request_id,
                user_id=enrollment.user_id,
                delivery_email=request.mobile_email,
                usage_start_password=request.usage_start_password,
            )
        now = self._clock.now()
        advanced = enrollment.advanced(
            Step.REQUEST_TOKEN,
            now,
            self._policy.idle_seconds,
            mobile_email=request.mobile_email,
            token_id=token.token_id,
            service_id=token.service_id,
            app_user_id=token.app_user_id,
        )
        mail = token_mail(
            to=request.mobile_email,
            service_id=token.service_id,
            user_id=token.app_user_id,
            app_url=self._policy.app_url,
            at=now,
            contact=self._policy.contact_text,
        )
        operations = [
            put_enrollment(advanced, current.version),
            index_app(token.service_id, token.app_user_id, enrollment_id),
            outbox_entry(mail, now),
        ]
        await self._write_step(operations, advanced)
        return advanced

    # -- steps 8 and 9: the app -------------------------------------------------------------------------------

    async def activate_app(
        self, *, service_id: str, app_user_id: str, usage_start_password: str, agreed: bool, request_id: str
    ) -> AppActivation:
        """Step 8: the OTP service checks the app's entry and delivers the seed, once."""
        current = await self._repo.enrollment_for_app(service_id, app_user_id)
        if current is not None and _answered(current):
            # This very request activated the app (a concurrent call with its request id): the secret went out.
            raise activation_already_delivered()
        if current is not None:
            transition(current.record.current(self._clock.now()).state, Step.ACTIVATE_APP, current.record.kind)
        # With no enrollment the OTP service still answers (the same as for a wrong password).
        activation = await self._otp.activate(
            request_id=f"app/{service_id}/{request_id or uuid.uuid4().hex}",
            service_id=service_id,
            app_user_id=app_user_id,
            usage_start_password=usage_start_password,
            consent=agreed,
        )
        if not activation.secret:
            # The OTP service replayed an activation whose answer was lost: the secret is never shown twice.
            raise activation_already_delivered()
        if current is not None:
            advanced = current.record.advanced(Step.ACTIVATE_APP, self._clock.now(), self._policy.idle_seconds)
            await self._write_step([put_enrollment(advanced, current.version)], activation)
        return activation

    async def register_app(
        self, *, service_id: str, app_user_id: str, activation_id: str, request_id: str
    ) -> Enrollment | None:
        """Step 9: the app stored the seed."""
        current = await self._repo.enrollment_for_app(service_id, app_user_id)
        if current is not None and _answered(current):
            return current.record
        if current is not None:
            transition(current.record.current(self._clock.now()).state, Step.REGISTER_APP, current.record.kind)
        await self._otp.confirm_registration(
            request_id=f"app/{service_id}/{request_id or uuid.uuid4().hex}",
            service_id=service_id,
            app_user_id=app_user_id,
            activation_id=activation_id,
        )
        if current is None:
            return None
        advanced = current.record.advanced(Step.REGISTER_APP, self._clock.now(), self._policy.idle_seconds)
        await self._write_step([put_enrollment(advanced, current.version)], advanced)
        return advanced

    async def verify_first_code(
        self, enrollment_id: str, certificate: ClientCertificate, code: str, request_id: str
    ) -> Enrollment:
        """Step 10: the app's first code; the token becomes active and setup completes."""
        current = await self._certificate_enrollment(enrollment_id, certificate)
        enrollment = current.record
        if _answered(current):
            return enrollment
        transition(enrollment.state, Step.VERIFY_FIRST_CODE, enrollment.kind)
        await self._otp.verify(
            request_id=f"enrollment/{enrollment.enrollment_id}/{request_id or uuid.uuid4().hex}",
            token_id=enrollment.token_id,
            code=code,
        )
        now = self._clock.now()
        advanced = enrollment.advanced(Step.VERIFY_FIRST_CODE, now, self._policy.idle_seconds)
        user = await self._repo.user(enrollment.user_id)
        mail = completion_mail(
            to=enrollment.email,
            user_name=enrollment.user_name,
            login_id=enrollment.login_id,
            at=now,
            contact=self._policy.contact_text,
        )
        operations = [
            put_enrollment(advanced, current.version),
            put_user(user.record.completed(enrollment.token_id), user.version),
            outbox_entry(mail, now),
        ]
        await self._write_step(operations, advanced)
        return advanced

    # -- reading and cancelling -------------------------------------------------------------------------------

    async def current_for_certificate(self, certificate: ClientCertificate) -> Enrollment:
        """Find the enrollment a customer certificate was issued in (step 4)."""
        owner = await self._repo.certificate_owner(certificate.fingerprint_sha256)
        if owner is None:
            raise NotFound(
                "この電子証明書の初期設定は見つかりません / no enrollment for this certificate",
                reason="ENROLLMENT_NOT_FOUND",
            )
        current = await self._certificate_enrollment(owner.enrollment_id, certificate)
        return current.record

    async def get(
        self, enrollment_id: str, *, session: str = "", certificate: ClientCertificate | None = None
    ) -> Enrollment:
        """Return an enrollment (expiry applied) to its session or to its certificate."""
        if certificate is not None:
            current = await self._certificate_enrollment(enrollment_id, certificate)
        else:
            current = await self._session_enrollment(enrollment_id, session)
        return current.record

    async def cancel(
        self, enrollment_id: str, session: str, certificate: ClientCertificate | None = None
    ) -> Enrollment:
        """End an enrollment in progress. The clean-up's marker commits with the CANCELLED state; the
        certificate and token it created are revoked and its login ID released at once when the CA and the OTP
        service answer, and by the sweeper otherwise (or after a crash right here)."""
        if certificate is not None:  # after step 4 the session token is retired: the certificate cancels
            current = await self._certificate_enrollment(enrollment_id, certificate)
        else:
            current = await self._session_enrollment(enrollment_id, session)
        cancelled = current.record.abandoned(Event.CANCEL, self._clock.now())
        await self._write_step([put_enrollment(cancelled, current.version), *abandonment_markers(cancelled)], cancelled)
        failpoint("enrollment.after_abandon")
        await self.setups.clean_up_now(enrollment_id)
        return cancelled

    async def reopen(self, enrollment_id: str) -> Enrollment:
        """Re-open an EXPIRED enrollment for an operator (see AbandonedSetups.reopen)."""
        return await self.setups.reopen(enrollment_id)

    # -- helpers ----------------------------------------------------------------------------------------------

    async def check_session(self, enrollment_id: str, session: str, *, retired: bool = False) -> None:
        """Check a session step's credential before a replay: the session token of this enrollment, or with
        `retired` also the one step 4 retired (a replay of step 4 itself)."""
        current = await self._load(enrollment_id)
        digests = [current.record.session_digest]
        if retired:
            digests.append(current.record.retired_session_digest)
        if not session or not any(d and token_matches(session, d) for d in digests):
            raise Unauthenticated("the session token is missing or wrong", reason="SESSION_INVALID")

    async def check_certificate(self, enrollment_id: str, certificate: ClientCertificate) -> None:
        """Check a certificate step's credential before a replay."""
        await self._certificate_enrollment(enrollment_id, certificate)

    async def check_login_password(self, enrollment_id: str, certificate: ClientCertificate, password: str) -> None:
        """Check step 6's credentials before a replay: the certificate and the password."""
        current = await self._certificate_enrollment(enrollment_id, certificate)
        hashed = current.record.login_password_hash
        if not password or not hashed or not await in_kdf_thread(self._hasher.verify, hashed, password):
            raise Unauthenticated(
                "ログインパスワードが正しくありません / the login password is wrong", reason="WRONG_PASSWORD"
            )

    async def _session_enrollment(self, enrollment_id: str, session: str) -> Versioned[Enrollment]:
        current = await self._load(enrollment_id)
        digest = current.record.session_digest
        if session and not digest and _answered(current) and current.record.retired_session_digest:
            digest = current.record.retired_session_digest  # step 4's own retry: its answer was lost
        if not session or not digest or not token_matches(session, digest):
            raise Unauthenticated("the session token is missing or wrong", reason="SESSION_INVALID")
        return current

    async def _certificate_enrollment(
        self, enrollment_id: str, certificate: ClientCertificate
    ) -> Versioned[Enrollment]:
        current = await self._load(enrollment_id)
        enrollment = current.record
        if not enrollment.certificate_serial or (
            certificate.serial_number.lower() != enrollment.certificate_serial
            or certificate.fingerprint_sha256.lower() != enrollment.certificate_fingerprint
        ):
            raise PermissionDenied(
                "this step needs the certificate issued for this enrollment", reason="CERTIFICATE_MISMATCH"
            )
        return current

    async def _load(self, enrollment_id: str) -> Versioned[Enrollment]:
        if not enrollment_id:
            raise InvalidArgument("enrollment_id is required", fields={"enrollment_id": "required"})
        current = await self._repo.enrollment(enrollment_id)
        return Versioned(current.record.current(self._clock.now()), current.version)

    async def _write(self, operations: list[Operation]) -> None:
        try:
            await self._repo.commit(operations)
        except (VersionMismatch, KeyExists):
            raise ConcurrentChange("the enrollment changed concurrently; retry") from None

    async def _write_step(self, operations: list[Operation], result: object) -> None:
        """Write a step's changes, and with them the running request's answer to RESULT, the step's return."""
        try:
            await commit_answering(self._repo.commit, operations, result)
        except (VersionMismatch, KeyExists):
            raise ConcurrentChange("the enrollment changed concurrently; retry") from None
