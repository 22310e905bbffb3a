"""The credentials' lifecycle after the setup: password change and reset, certificate renewal (with reminders
and the superseded certificate's revocation), and a new token for a new phone.

What mints or replaces a credential is reached only through the kagi gateway (which proves possession of the
client certificate itself) or an operator; each change lands with its audit record and its mail in one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, replace
from typing import Any

from kagi.clock import Clock
from kagi.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unauthenticated
from kagi.journal import AuditEvent, Change, Journal
from kagi.passwords import PasswordHasher, in_kdf_thread
from kagi.store.base import Operation, VersionMismatch
from kagi.store.races import retry_lost_races
from services.enrollment_service.app.ports import CertificateAuthority, TokenService
from services.enrollment_service.app.repository import (
    CertificateExpiry,
    CertificateOwner,
    EnrollmentRepository,
    Renewal,
    ResetTicket,
    Versioned,
    certificate_owner_record,
    drop_certificate_expiry,
    drop_reset_ticket,
    outbox_entry,
    put_certificate_expiry,
    put_reset_ticket,
    put_user,
    renewal_record,
)
from services.enrollment_service.app.users import MSG_WRONG_CONFIRMATION, UserSessions, WrongConfirmationPassword
from services.enrollment_service.domain.client_certificates import ClientCertificate, check_new_key, not_after
from services.enrollment_service.domain.credentials import temporary_password
from services.enrollment_service.domain.messages import (
    DEFAULT_CONTACT_TEXT,
    password_changed_mail,
    renewal_reminder_mail,
    token_mail,
)
from services.enrollment_service.domain.rules import validate_new_password, validate_token_request
from services.enrollment_service.domain.sessions import MSG_LOGIN_FAILED, LoginFailed, check_user_id
from services.enrollment_service.domain.users import MSG_LOCKED, PasswordKind, User, UserLocked

DAY = 86400.0
MAX_RESET_FAILURES = 5
MSG_SAME_AS_OTHER = (
    "ログインパスワードと確認用パスワードは同じにできません / the login and confirmation passwords must differ"
)
MSG_WRONG_CURRENT = "現在のパスワードが正しくありません / the current password is wrong"
MSG_NO_RESET = (
    "有効なパスワード再設定の通知がありません。お取引店へご連絡ください"  # the bank's wording, then English
    " / there is no valid reset notice for this password: contact your branch"
)
MSG_OUTSIDE_WINDOW = "更新できる期間ではありません / the certificate cannot be renewed yet"


@dataclass(frozen=True)
class LifecyclePolicy:
    """Holds the renewal window, reminder days, the superseded grace and notice lifetimes."""

    renewal_window_days: int = 30
    reminder_days: tuple[int, ...] = (30, 7)
    superseded_grace_days: int = 7
    reset_notice_days: int = 14
    app_url: str = "https://www.example.com/kagi-token-app"
    contact_text: str = DEFAULT_CONTACT_TEXT


@dataclass(frozen=True)
class ResetNotice:
    """What an operator hands the customer once: the temporary password and its expiry."""

    user: User
    kind: PasswordKind
    temporary_password: str
    expires_at: float


@dataclass(frozen=True)
class RenewedCertificate:
    """The customer's new certificate and its chain."""

    serial_number: str
    certificate_pem: str
    chain_pem: str


class CredentialLifecycle:
    """Changes, resets and replaces a user's credentials."""

    def __init__(
        self,
        repository: EnrollmentRepository,
        journal: Journal,
        sessions: UserSessions,
        ca: CertificateAuthority,
        otp: TokenService,
        hasher: PasswordHasher,
        clock: Clock,
        policy: LifecyclePolicy | None = None,
    ) -> None:
        self._repo = repository
        self._journal = journal
        self._sessions = sessions
        self._ca = ca
        self._otp = otp
        self._hasher = hasher
        self._clock = clock
        self._policy = policy or LifecyclePolicy()

    # -- passwords --------------------------------------------------------------------------------------------

    async def change_password(
        self,
        user_id: str,
        *,
        access_token: str,
        certificate: ClientCertificate | None,
        kind: PasswordKind,
        current_password: str,
        new_password: str,
        new_password_confirmation: str,
        actor: str,
    ) -> User:
        """Change a password with the current one; every session ends and a mail tells the user."""
        check_user_id(user_id)
        _claims, current = await self._sessions.session(access_token, user_id=user_id, certificate=certificate)
        user = current.record
        validate_new_password(
            login_id=user.login_id, new_password=new_password, new_password_confirmation=new_password_confirmation
        )
        right = await in_kdf_thread(self._hasher.verify, user.password_hash(kind), current_password)
        if not right:
            failed = await self._update(
                user_id, lambda u: u.with_failure(kind), actor, "password.change.refused", {"kind": kind.value}
            )
            if failed.lock_reason.value:
                raise UserLocked(MSG_LOCKED, metadata={"lock_reason": failed.lock_reason.value})
            raise Unauthenticated(MSG_WRONG_CURRENT, reason="WRONG_PASSWORD", fields={"current_password": "wrong"})
        return await self._set_password(user, kind, new_password, actor, "password.change")

    async def issue_reset(self, user_id: str, kind: PasswordKind, *, actor: str) -> ResetNotice:
        """Make a temporary password for a forgotten one (the reset notice); every session ends."""
        check_user_id(user_id)
        temporary = temporary_password()
        digest = await in_kdf_thread(self._hasher.hash, temporary)
        expires_at = self._clock.now() + self._policy.reset_notice_days * DAY
        ticket = ResetTicket(user_id, kind, digest, expires_at)

        async def issue() -> ResetNotice:
            current, existing = await asyncio.gather(self._repo.user(user_id), self._repo.reset_ticket(user_id, kind))
            ticket_op = put_reset_ticket(ticket, existing.version if existing is not None else None)
            event = AuditEvent(actor, "password.reset.issue", user_id, {"kind": kind.value})
            ended = current.record.sessions_ended()
            await self._journal.submit(Change([put_user(ended, current.version), ticket_op], [event]))
            return ResetNotice(ended, kind, temporary, expires_at)

        return await retry_lost_races(issue, what="the user")

    async def reset_password(
        self,
        certificate: ClientCertificate,
        *,
        kind: PasswordKind,
        temporary: str,
        new_password: str,
        new_password_confirmation: str,
        actor: str,
    ) -> User:
        """Set a forgotten password again with the reset notice and the user's certificate (no session)."""
        owner = await self._repo.certificate_owner(certificate.fingerprint_sha256)
        if owner is None:
            raise NotFound(MSG_NO_RESET, reason="NO_RESET_NOTICE")
        user = (await self._repo.user(owner.user_id)).record
        validate_new_password(
            login_id=user.login_id, new_password=new_password, new_password_confirmation=new_password_confirmation
        )
        ticket = await self._repo.reset_ticket(user.user_id, kind)
        if ticket is None or ticket.record.expires_at <= self._clock.now():
            raise NotFound(MSG_NO_RESET, reason="NO_RESET_NOTICE")
        if not await in_kdf_thread(self._hasher.verify, ticket.record.password_hash, temporary):
            failures = ticket.record.failures + 1
            event = AuditEvent(actor, "password.reset.refused", user.user_id, {"kind": kind.value})
            spent = failures >= MAX_RESET_FAILURES
            op = (
                drop_reset_ticket(ticket)
                if spent
                else put_reset_ticket(replace(ticket.record, failures=failures), ticket.version)
            )
            with contextlib.suppress(VersionMismatch):  # another attempt counted meanwhile: refused all the same
                await self._journal.submit(Change([op], [event]))
            if spent:
                raise ResourceExhausted(
                    "仮パスワードの誤入力が続いたため、この通知は無効になりました。お取引店へご連絡ください"
                    " / too many wrong temporary passwords: this notice is void, contact your branch",
                    reason="RESET_NOTICE_LOCKED",
                )
            raise Unauthenticated(
                "仮パスワードが正しくありません / the temporary password is wrong",
                reason="WRONG_TEMPORARY_PASSWORD",
                fields={"temporary_password": "wrong"},
            )
        return await self._set_password(
            user,
            kind,
            new_password,
            actor,
            "password.reset",
            extra=[drop_reset_ticket(ticket)],
        )

    async def _set_password(
        self,
        user: User,
        kind: PasswordKind,
        new_password: str,
        actor: str,
        action: str,
        *,
        extra: list[Operation] | None = None,
    ) -> User:
        other = PasswordKind.CONFIRMATION if kind is PasswordKind.LOGIN else PasswordKind.LOGIN
        same_as_other, digest = await asyncio.gather(
            in_kdf_thread(self._hasher.verify, user.password_hash(other), new_password),
            in_kdf_thread(self._hasher.hash, new_password),
        )
        if same_as_other:
            raise InvalidArgument(
                MSG_SAME_AS_OTHER, reason="INVALID_PASSWORD", fields={"new_password": MSG_SAME_AS_OTHER}
            )
        now = self._clock.now()

        async def change() -> User:
            current = await self._repo.user(user.user_id)
            changed = current.record.with_new_password(kind, digest)
            mail = password_changed_mail(
                to=changed.email,
                user_name=changed.user_name,
                kind=kind.value,
                at=now,
                contact=self._policy.contact_text,
            )
            event = AuditEvent(actor, action, user.user_id, {"kind": kind.value})
            await self._journal.submit(
                Change([put_user(changed, current.version), outbox_entry(mail, now), *(extra or [])], [event])
            )
            return changed

        return await retry_lost_races(change, what="the user")

    # -- certificates -----------------------------------------------------------------------------------------

    async def renew_certificate(
        self,
        *,
        access_token: str,
        certificate: ClientCertificate,
        csr_pem: str,
        login_password: str,
        request_id: str,
        actor: str,
    ) -> RenewedCertificate:
        """Renew the presented certificate for a new key, inside the renewal window, with the login password."""
        _claims, current = await self._sessions.session(access_token, certificate=certificate)
        user = current.record
        if not csr_pem:
            raise InvalidArgument("a CSR is required", reason="CSR_REQUIRED", fields={"csr_pem": "required"})
        owner = await self._repo.certificate_owner(certificate.fingerprint_sha256)
        if owner is None or owner.user_id != user.user_id:
            raise LoginFailed(MSG_LOGIN_FAILED)
        old = await self._ca.certificate(certificate.serial_number)
        if not old.active:
            raise FailedPrecondition(
                "この電子証明書は失効または期限切れです / this certificate is revoked or expired",
                reason="CERTIFICATE_NOT_ACTIVE",
            )
        expires = not_after(old.certificate_pem)
        if expires - self._clock.now() > self._policy.renewal_window_days * DAY:
            raise FailedPrecondition(
                MSG_OUTSIDE_WINDOW,
                reason="OUTSIDE_RENEWAL_WINDOW",
                metadata={"renewable_from_days_before_expiry": str(self._policy.renewal_window_days)},
            )
        check_new_key(csr_pem, old.certificate_pem)
        if not await in_kdf_thread(self._hasher.verify, user.login_password_hash, login_password):
            failed = await self._update(
                user.user_id, lambda u: u.with_login_failure(), actor, "certificate.renew.refused", {}
            )
            if failed.lock_reason.value:
                raise UserLocked(MSG_LOCKED, metadata={"lock_reason": failed.lock_reason.value})
            raise LoginFailed(MSG_LOGIN_FAILED)
        issued = await self._ca.renew(
            request_id=f"renew/{certificate.serial_number}/{request_id or uuid.uuid4().hex}",
            serial_number=certificate.serial_number,
            csr_pem=csr_pem,
        )
        now = self._clock.now()
        fingerprint = issued.fingerprint_sha256.lower()
        renewal = Renewal(
            new_fingerprint=fingerprint,
            old_serial=certificate.serial_number,
            old_fingerprint=certificate.fingerprint_sha256,
            deadline=now + self._policy.superseded_grace_days * DAY,
            user_id=user.user_id,
        )
        expiry = CertificateExpiry(not_after(issued.certificate_pem), fingerprint, user.user_id, issued.serial_number)
        operations: list[Operation] = [
            certificate_owner_record(
                fingerprint, CertificateOwner(user.user_id, owner.enrollment_id, issued.serial_number)
            ),
            renewal_record(renewal),
            put_certificate_expiry(expiry, None),
        ]
        event = AuditEvent(
            actor, "certificate.renew", user.user_id, {"old": certificate.serial_number, "new": issued.serial_number}
        )
        await self._journal.submit(Change(operations, [event]))
        return RenewedCertificate(issued.serial_number, issued.certificate_pem, issued.chain_pem)

    async def maintain(self) -> int:
        """Send the renewal reminders that are due and revoke superseded certificates past their grace; return
        how many things were done (the sweeper calls this)."""
        return await self._remind() + await self._supersede_overdue()

    async def _remind(self) -> int:
        now = self._clock.now()
        horizon = now + max(self._policy.reminder_days) * DAY
        done = 0
        async with contextlib.aclosing(self._repo.certificate_expiries()) as expiries:
            async for expiry in expiries:
                expires, reminded = expiry.record.expires_at, expiry.record.reminded
                if expires > horizon:
                    break  # filed by expiry: every later one is further off
                if expires <= now:
                    await self._repo.commit([drop_certificate_expiry(expiry)])
                    continue
                due = [d for d in self._policy.reminder_days if expires - now <= d * DAY and d not in reminded]
                if due:
                    done += await self._send_reminder(expiry, min(due), now)
        return done

    async def _send_reminder(self, expiry: Versioned[CertificateExpiry], days: int, now: float) -> int:
        record = expiry.record
        try:
            user = (await self._repo.user(record.user_id)).record
        except NotFound:
            await self._repo.commit([drop_certificate_expiry(expiry)])
            return 0
        view = await self._ca.certificate(record.serial_number)
        if not view.active:
            await self._repo.commit([drop_certificate_expiry(expiry)])
            return 0
        reminded = tuple(sorted({*record.reminded, *(d for d in self._policy.reminder_days if d >= days)}))
        mail = renewal_reminder_mail(
            to=user.email,
            user_name=user.user_name,
            expires_at=record.expires_at,
            days_left=days,
            contact=self._policy.contact_text,
        )
        updated = put_certificate_expiry(replace(record, reminded=reminded), expiry.version)
        try:
            await self._repo.commit([updated, outbox_entry(mail, now)])
        except VersionMismatch:
            return 0  # another replica sent it
        return 1

    async def _supersede_overdue(self) -> int:
        now, done = self._clock.now(), 0
        async for renewal in self._repo.renewals():
            if renewal.record.deadline <= now:
                done += await self._sessions.supersede(
                    renewal.record.new_fingerprint, actor="kagi-enrollment", renewal=renewal
                )
        return done

    # -- tokens -----------------------------------------------------------------------------------------------

    async def reissue_token(
        self,
        certificate: ClientCertificate,
        *,
        access_token: str,
        login_id: str,
        login_password: str,
        confirmation_password: str,
        entries: dict[str, str],
        request_id: str,
        actor: str,
    ) -> User:
        """Replace the user's token for a new phone (the setup's step 7 again); the new IDs go by mail."""
        if access_token:
            _claims, current = await self._sessions.session(access_token, certificate=certificate)
        else:
            current = await self._without_session(certificate, login_id, login_password)
        user = current.record
        user.check_usable()
        request = validate_token_request(**entries)
        right = await in_kdf_thread(self._hasher.verify, user.confirmation_password_hash, confirmation_password)
        if not right:
            failed = await self._update(
                user.user_id, lambda u: u.with_confirmation_failure(), actor, "token.reissue.refused", {}
            )
            if failed.lock_reason.value:
                raise UserLocked(MSG_LOCKED, metadata={"lock_reason": failed.lock_reason.value})
            raise WrongConfirmationPassword(MSG_WRONG_CONFIRMATION)
        token = await self._otp.reissue(
            request_id=f"reissue/{user.user_id}/{request_id or uuid.uuid4().hex}",
            token_id=user.token_id,
            delivery_email=request.mobile_email,
            usage_start_password=request.usage_start_password,
        )
        now = self._clock.now()
        mail = token_mail(
            to=request.mobile_email,
            service_id=token.service_id,
            user_id=token.app_user_id,
            app_url=self._policy.app_url,
            at=now,
            contact=self._policy.contact_text,
        )

        async def record_token() -> User:
            latest = await self._repo.user(user.user_id)
            changed = _with_token(latest.record, token.token_id)
            event = AuditEvent(actor, "token.reissue", user.user_id, {"token": token.token_id})
            await self._journal.submit(Change([put_user(changed, latest.version), outbox_entry(mail, now)], [event]))
            return changed

        return await retry_lost_races(record_token, what="the user")

    async def _without_session(
        self, certificate: ClientCertificate, login_id: str, login_password: str
    ) -> Versioned[User]:
        found, owner = await asyncio.gather(
            self._repo.user_for_login(login_id), self._repo.certificate_owner(certificate.fingerprint_sha256)
        )
        if found is None or owner is None or owner.user_id != found.record.user_id:
            await in_kdf_thread(self._hasher.verify_dummy, login_password)
            raise LoginFailed(MSG_LOGIN_FAILED)
        if not found.record.token_reissue_allowed:
            raise FailedPrecondition(
                "ログインしてから操作してください。ログインできない場合はお取引店へご連絡ください"  # wording, English
                " / log in first; if you cannot (no phone), ask your branch to allow a reissue",
                reason="REISSUE_NOT_ALLOWED",
            )
        if found.record.lock_reason.value:
            raise UserLocked(MSG_LOCKED, metadata={"lock_reason": found.record.lock_reason.value})
        if not await in_kdf_thread(self._hasher.verify, found.record.login_password_hash, login_password):
            # The user's own certificate with a wrong password: it counts, as at login.
            failed = await self._update(
                found.record.user_id, lambda u: u.with_login_failure(), "gateway", "token.reissue.refused", {}
            )
            if failed.lock_reason.value:
                raise UserLocked(MSG_LOCKED, metadata={"lock_reason": failed.lock_reason.value})
            raise LoginFailed(MSG_LOGIN_FAILED)
        return found

    async def allow_token_reissue(self, user_id: str, *, actor: str) -> User:
        """Revoke the user's token (a lost phone) and let the user reissue one without it (operator)."""
        check_user_id(user_id)
        user = (await self._repo.user(user_id)).record
        if user.token_id:
            await self._disable(user.token_id)
        return await self._update(user_id, _reissue_allowed, actor, "token.reissue.allow", {"token": user.token_id})

    async def disable_token(self, user_id: str, reason: str, *, actor: str) -> User:
        """Disable the user's token (operator: lost phone, lost PC)."""
        check_user_id(user_id)
        user = (await self._repo.user(user_id)).record
        if not user.token_id:
            raise FailedPrecondition("the user has no token yet", reason="NO_TOKEN")
        await self._disable(user.token_id)
        return await self._update(user_id, lambda u: u, actor, "token.disable", {"reason": reason[:200]})

    async def _disable(self, token_id: str) -> None:
        try:
            await self._otp.disable(request_id=f"disable/{token_id}", token_id=token_id)
        except FailedPrecondition:
            return  # already disabled, revoked or expired: nothing verifies with it either way

    async def _update(self, user_id: str, change: Any, actor: str, action: str, details: dict[str, str]) -> User:
        return await self._sessions.update_user(user_id, change, actor, action, details)


def _with_token(user: User, token_id: str) -> User:
    return replace(user, token_id=token_id, token_reissue_allowed=False)


def _reissue_allowed(user: User) -> User:
    return replace(user, token_reissue_allowed=True)
