"""The front-end boundary's use cases: log in, step up, confirm a transaction, end a session; and the operator's
reading, locking and unlocking of users.

Every login (success and failure), confirmation, step-up, lock and unlock is written through the journal, so
it lands in the same commit as its hash-chained audit record (`kagi admin verify-audit` checks the chain).
Failures that count toward a lock are written before the caller hears of them; nothing counts twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any

from kagi.clock import Clock
from kagi.errors import FailedPrecondition, InvalidArgument, KagiError, ResourceExhausted, Unauthenticated
from kagi.journal import AuditEvent, Change, Journal
from kagi.passwords import PasswordHasher, in_kdf_thread
from kagi.store.base import KeyExists, Operation, VersionMismatch
from kagi.store.races import retry_lost_races
from services.enrollment_service.app.ports import (
    CertificateAuthority,
    CertificateStatus,
    TokenService,
    TokenSigner,
    TokenState,
)
from services.enrollment_service.app.repository import (
    EnrollmentRepository,
    Renewal,
    StoredConfirmation,
    Versioned,
    confirmation_record,
    drop_renewal,
    end_session,
    put_user,
)
from services.enrollment_service.domain.client_certificates import (
    MSG_CERTIFICATE_INVALID,
    CertificateInvalid,
    ClientCertificate,
    check_customer_certificate,
)
from services.enrollment_service.domain.sessions import (
    AMR_LOGIN,
    CONFIRMATION_METHODS,
    MSG_LOGIN_FAILED,
    MSG_TOKEN_INVALID,
    AccessTokenInvalid,
    LoginFailed,
    SessionClaims,
    access_claims,
    certificate_thumbprint,
    check_login_entry,
    check_transaction,
    check_user_id,
    confirmation_claims,
    stepped_up,
)
from services.enrollment_service.domain.users import MSG_LOCKED, User, UserLocked

MAX_PAGE = 100
MSG_WRONG_CONFIRMATION = "確認用パスワードが正しくありません / the confirmation password is wrong"
MSG_THROTTLED = (
    "この電子証明書でのログイン失敗が続いています。しばらくしてからやり直してください"  # wording, then English
    " / too many failed logins with this certificate: retry later"
)


@dataclass(frozen=True)
class SessionPolicy:
    """Holds the access tokens' lifetime and the per-certificate throttle of failed logins."""

    access_token_seconds: int = 900
    refusals_per_certificate: int = 10
    refusal_window_seconds: int = 15 * 60


@dataclass(frozen=True)
class UserView:
    """A user as the API shows it, with the token's state read from the OTP service."""

    user: User
    token_state: TokenState


@dataclass(frozen=True)
class Session:
    """A signed access token and its lifetime in seconds."""

    access_token: str
    expires_in: int


@dataclass(frozen=True)
class Confirmation:
    """The record of one confirmed transaction, and its signed token."""

    confirmation_id: str
    transaction_id: str
    txn_digest: str
    confirmed_at: float
    methods: tuple[str, ...]
    token: str


class WrongConfirmationPassword(Unauthenticated):
    """The confirmation password does not match (five in a row lock the user)."""

    reason = "WRONG_CONFIRMATION_PASSWORD"


class UserSessions:
    """The front-end boundary: sessions bound to certificates, step-up, confirmations."""

    def __init__(
        self,
        repository: EnrollmentRepository,
        journal: Journal,
        ca: CertificateAuthority,
        otp: TokenService,
        hasher: PasswordHasher,
        signer: TokenSigner,
        clock: Clock,
        policy: SessionPolicy | None = None,
    ) -> None:
        self._repo = repository
        self._journal = journal
        self._ca = ca
        self._otp = otp
        self._hasher = hasher
        self._signer = signer
        self._clock = clock
        self._policy = policy or SessionPolicy()

    # -- login ------------------------------------------------------------------------------------------------

    async def certificate_from_pem(self, pem: str) -> ClientCertificate:
        """Check a certificate a front-end passed in: the customer CA's, in its validity, and GOOD at the CA."""
        if not pem:
            raise InvalidArgument(
                "a client certificate is required",
                fields={"client_certificate_pem": "required: the customer's certificate, PEM"},
            )
        certificate = check_customer_certificate(pem, await self._ca.customer_ca_pem(), self._clock.now())
        if await self._ca.status(certificate.serial_number) is not CertificateStatus.GOOD:
            raise CertificateInvalid(MSG_CERTIFICATE_INVALID)
        return certificate

    async def authenticate(
        self, certificate: ClientCertificate, login_id: str, login_password: str, *, actor: str
    ) -> tuple[UserView, Session]:
        """Log a customer in; unknown login, foreign certificate and wrong password answer alike."""
        check_login_entry(login_id, login_password)
        fingerprint = certificate.fingerprint_sha256.lower()
        # One round of reads: the certificate's refusals, the login's user, the certificate's owner, and a
        # renewal this certificate's first session completes.
        refusals, found, owner, renewal = await asyncio.gather(
            self._repo.login_refusals(fingerprint),
            self._repo.user_for_login(login_id),
            self._repo.certificate_owner(fingerprint),
            self._repo.renewal(fingerprint),
        )
        self._check_throttle(refusals)
        if found is None or owner is None or owner.user_id != found.record.user_id:
            # Cost what a real check costs; count against the certificate, never against the user.
            await in_kdf_thread(self._hasher.verify_dummy, login_password)
            await self._refuse_login(fingerprint, login_id, actor, "unknown login or foreign certificate")
        assert found is not None
        user = found.record
        if user.lock_reason.value:
            await self._audit(actor, "login.refused", user.user_id, {"why": "locked"})
            raise UserLocked(MSG_LOCKED, metadata={"lock_reason": user.lock_reason.value})
        right, token_state = await asyncio.gather(
            in_kdf_thread(self._hasher.verify, user.login_password_hash, login_password),
            self._otp.token_state(user.token_id),
        )
        if not right:
            failed = await self.update_user(
                user.user_id, lambda u: u.with_login_failure(), actor, "login.refused", {"why": "wrong password"}
            )
            if failed.lock_reason.value:
                raise UserLocked(MSG_LOCKED, metadata={"lock_reason": failed.lock_reason.value})
            raise LoginFailed(MSG_LOGIN_FAILED)
        user.check_usable()
        details = {"certificate": certificate.serial_number}
        if user.login_failures:
            user = await self.update_user(user.user_id, lambda u: u.with_login_success(), actor, "login", details)
        else:
            await self._audit(actor, "login", user.user_id, details)
        if renewal is not None:
            # The renewed certificate's first session: the one it replaced is done with.
            await self.supersede(fingerprint, actor=actor, renewal=renewal)
        session = self._new_session(user, uuid.uuid4().hex, AMR_LOGIN, certificate_thumbprint(fingerprint))
        return UserView(user, token_state), session

    async def supersede(self, new_fingerprint: str, *, actor: str, renewal: Versioned[Renewal] | None = None) -> int:
        """Revoke the certificate the one with `new_fingerprint` renewed (its first session, or the grace ran
        out); return 1 when it did. `renewal` is the renewal record when the caller has just read it."""
        renewal = renewal or await self._repo.renewal(new_fingerprint)
        if renewal is None:
            return 0
        old_serial = renewal.record.old_serial
        await self._ca.revoke_superseded(request_id=f"supersede/{old_serial}", serial_number=old_serial)
        event = AuditEvent(actor, "certificate.superseded", renewal.record.user_id, {"serial": old_serial})
        try:
            await self._journal.submit(Change([drop_renewal(renewal)], [event]))
        except VersionMismatch:
            return 0
        return 1

    def _check_throttle(self, refusals: int) -> None:
        if refusals >= self._policy.refusals_per_certificate:
            raise ResourceExhausted(
                MSG_THROTTLED,
                reason="TOO_MANY_ATTEMPTS",
                metadata={"retry_after_seconds": str(self._policy.refusal_window_seconds)},  # the gateway's Retry-After
            )

    async def _refuse_login(self, fingerprint: str, login_id: str, actor: str, why: str) -> None:
        await self._repo.count_login_refusal(fingerprint, window_seconds=self._policy.refusal_window_seconds)
        # What was typed as a login ID may be anything (a password typed in the wrong field): the trail, which is
        # kept for years, holds only a digest that still tells repeated attempts at one login ID apart.
        typed = hashlib.sha256(login_id.encode("utf-8")).hexdigest()[:16]
        await self._audit(actor, "login.refused", f"login-sha256:{typed}", {"why": why, "certificate": fingerprint})
        raise LoginFailed(MSG_LOGIN_FAILED)

    def _new_session(self, user: User, session_id: str, amr: tuple[str, ...], thumbprint: str) -> Session:
        lifetime = self._policy.access_token_seconds
        claims = access_claims(
            issuer=self._signer.issuer,
            user_id=user.user_id,
            session_id=session_id,
            epoch=user.session_epoch,
            amr=amr,
            thumbprint=thumbprint,
            token_id=uuid.uuid4().hex,
            now=self._clock.now(),
            lifetime=lifetime,
        )
        return Session(self._signer.sign(claims), int(claims["exp"] - claims["iat"]))

    # -- sessions ---------------------------------------------------------------------------------------------

    async def session(
        self, access_token: str, *, user_id: str = "", certificate: ClientCertificate | None = None
    ) -> tuple[SessionClaims, Versioned[User]]:
        """Verify an access token for its next use: signature, expiry, user, certificate, epoch, not ended."""
        if not access_token:
            raise AccessTokenInvalid(MSG_TOKEN_INVALID)
        claims = SessionClaims.parse(self._signer.verify(access_token))
        if user_id and claims.user_id != user_id:
            raise AccessTokenInvalid(MSG_TOKEN_INVALID)
        if certificate is not None:
            # The gateway relays the certificate it just verified (and checked for revocation) on this request.
            if not hmac.compare_digest(claims.thumbprint, certificate_thumbprint(certificate.fingerprint_sha256)):
                raise AccessTokenInvalid(MSG_TOKEN_INVALID, metadata={"why": "bound to another certificate"})
            current, ended = await asyncio.gather(
                self._repo.user(claims.user_id), self._repo.session_ended(claims.session_id)
            )
            status = CertificateStatus.GOOD
        else:
            # A front-end passes no certificate with the token: the bound one must still be GOOD at the CA, so a
            # revocation ends its sessions at once.
            current, ended, status = await asyncio.gather(
                self._repo.user(claims.user_id),
                self._repo.session_ended(claims.session_id),
                self._bound_certificate_status(claims.thumbprint),
            )
        if ended or current.record.session_epoch != claims.epoch or status is not CertificateStatus.GOOD:
            raise AccessTokenInvalid(MSG_TOKEN_INVALID)
        if current.record.lock_reason.value:
            raise UserLocked(MSG_LOCKED, metadata={"lock_reason": current.record.lock_reason.value})
        return claims, current

    async def _bound_certificate_status(self, thumbprint: str) -> CertificateStatus:
        try:
            fingerprint = base64.urlsafe_b64decode(thumbprint + "=" * (-len(thumbprint) % 4)).hex()
        except ValueError:
            return CertificateStatus.UNKNOWN
        owner = await self._repo.certificate_owner(fingerprint)
        if owner is None:
            return CertificateStatus.UNKNOWN
        return await self._ca.status(owner.serial_number)

    async def end_session(self, access_token: str, *, actor: str, certificate: ClientCertificate | None) -> None:
        """End the token's session: every token of it is refused from now on."""
        claims, _user = await self.session(access_token, certificate=certificate)
        ttl = max(1.0, claims.expires_at - self._clock.now())
        try:
            await self._journal.submit(
                Change(
                    [end_session(claims.session_id, ttl=ttl)],
                    [AuditEvent(actor, "logout", claims.user_id, {"session": claims.session_id})],
                )
            )
        except KeyExists:
            return  # ended already: ending it again changes nothing

    async def verify_otp(
        self,
        user_id: str,
        otp: str,
        *,
        request_id: str,
        step_up: bool,
        access_token: str,
        certificate: ClientCertificate | None,
        actor: str,
    ) -> Session | None:
        """Check a code of the user's active token; with a session to raise, answer its stepped-up token."""
        check_user_id(user_id)
        if step_up and not access_token:
            raise InvalidArgument(
                "a step-up needs the current access token",
                fields={"access_token": "required for OTP_PURPOSE_STEP_UP"},
            )
        claims = None
        if access_token:
            claims, current = await self.session(access_token, user_id=user_id, certificate=certificate)
        else:
            current = await self._repo.user(user_id)
        user = current.record
        user.check_usable()
        try:
            await self._otp.verify(
                request_id=_otp_request_id("otp", user_id, request_id or uuid.uuid4().hex),
                token_id=user.token_id,
                code=otp,
            )
        except KagiError as exc:
            await self._audit(actor, "otp.refused", user_id, {"why": exc.reason})
            raise
        purpose = "step-up" if step_up else "check"
        await self._audit(actor, "otp.verified", user_id, {"purpose": purpose})
        if claims is None or not step_up:
            return None
        return self._new_session(user, claims.session_id, stepped_up(claims.amr), claims.thumbprint)

    # -- confirmations ----------------------------------------------------------------------------------------

    async def confirm(
        self,
        user_id: str,
        *,
        transaction_id: str,
        summary: str,
        confirmation_password: str,
        otp: str,
        access_token: str,
        certificate: ClientCertificate | None,
        actor: str,
    ) -> Confirmation:
        """Confirm one transaction with the confirmation password and a code; a retry returns the first answer."""
        check_user_id(user_id)
        entry = check_transaction(transaction_id, summary, confirmation_password, otp)
        thumbprint = ""
        if access_token:
            claims, current = await self.session(access_token, user_id=user_id, certificate=certificate)
            thumbprint = claims.thumbprint
        else:
            current = await self._repo.user(user_id)
        user = current.record
        user.check_usable()
        existing = await self._repo.confirmation(user_id, transaction_id)
        right = await in_kdf_thread(self._hasher.verify, user.confirmation_password_hash, confirmation_password)
        if not right:
            failed = await self.update_user(
                user_id,
                lambda u: u.with_confirmation_failure(),
                actor,
                "confirmation.refused",
                {"transaction": transaction_id, "why": "wrong confirmation password"},
            )
            if failed.lock_reason.value:
                raise UserLocked(MSG_LOCKED, metadata={"lock_reason": failed.lock_reason.value})
            raise WrongConfirmationPassword(MSG_WRONG_CONFIRMATION)
        if existing is not None:
            return self._replayed(existing, entry.digest, otp)
        try:
            # Keyed by the code too: a mistyped code's refusal must not stand for the transaction's next try,
            # while a retry with the same code after a crash finds the code's first (successful) answer.
            await self._otp.verify(
                request_id=_otp_request_id("confirm", user_id, transaction_id, otp), token_id=user.token_id, code=otp
            )
        except KagiError as exc:
            await self._audit(
                actor, "confirmation.refused", user_id, {"transaction": transaction_id, "why": exc.reason}
            )
            raise
        confirmation_id = uuid.uuid4().hex
        now = self._clock.now()
        record = StoredConfirmation(
            confirmation_id=confirmation_id,
            user_id=user_id,
            transaction_id=transaction_id,
            txn_digest=entry.digest,
            confirmed_at=now,
            methods=CONFIRMATION_METHODS,
            code_digest=_code_digest(confirmation_id, otp),
            thumbprint=thumbprint,
        )
        audit = AuditEvent(
            actor, "confirmation", user_id, {"transaction": transaction_id, "confirmation": confirmation_id}
        )
        latest: Versioned[User] | None = current

        async def record_confirmation() -> Confirmation:
            nonlocal latest
            # The first try is conditioned on the user as checked above; a lost race reads it again.
            user_now = latest or await self._repo.user(user_id)
            latest = None
            operations: list[Operation] = [confirmation_record(record)]
            if user_now.record.confirmation_failures:
                operations.append(put_user(user_now.record.with_confirmation_success(), user_now.version))
            try:
                await self._journal.submit(Change(operations, [audit]))
            except KeyExists:
                # The same transaction confirmed concurrently: answer as for a retry.
                raced = await self._repo.confirmation(user_id, transaction_id)
                if raced is None:
                    raise  # confirmed and gone again in between: try once more
                return self._replayed(raced, entry.digest, otp)
            return self._confirmation(record)

        return await retry_lost_races(record_confirmation, what="the user", on=(VersionMismatch, KeyExists))

    def _replayed(self, record: StoredConfirmation, digest: str, otp: str) -> Confirmation:
        same_code = hmac.compare_digest(record.code_digest, _code_digest(record.confirmation_id, otp))
        if not same_code or not hmac.compare_digest(record.txn_digest, digest):
            raise FailedPrecondition(
                "この取引は確認済みです / this transaction was already confirmed with other data",
                reason="TRANSACTION_MISMATCH",
            )
        return self._confirmation(record)

    def _confirmation(self, record: StoredConfirmation) -> Confirmation:
        claims = confirmation_claims(
            issuer=self._signer.issuer,
            user_id=record.user_id,
            confirmation_id=record.confirmation_id,
            transaction_id=record.transaction_id,
            digest=record.txn_digest,
            confirmed_at=record.confirmed_at,
            thumbprint=record.thumbprint,
        )
        return Confirmation(
            confirmation_id=record.confirmation_id,
            transaction_id=record.transaction_id,
            txn_digest=record.txn_digest,
            confirmed_at=record.confirmed_at,
            methods=record.methods,
            token=self._signer.sign(claims),
        )

    # -- reading and the operator ----------------------------------------------------------------------------

    def jwks_json(self) -> str:
        """Return the JWK Set that verifies access and confirmation tokens."""
        return self._signer.jwks_json()

    async def view(self, user: User) -> UserView:
        """Return a user with the state of its token."""
        return UserView(user, await self._otp.token_state(user.token_id))

    async def get(self, user_id: str) -> UserView:
        """Return one user with the state of its token."""
        check_user_id(user_id)
        user = (await self._repo.user(user_id)).record
        return UserView(user, await self._otp.token_state(user.token_id))

    async def list(self, page_size: int, page_token: str, *, company: str, account: str) -> tuple[list[UserView], str]:
        """User (all, one company's or one account's) a page at a time, with their tokens' states."""
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument("invalid page size", fields={"page_size": f"0 (default 50) to {MAX_PAGE}"})
        if company and account:
            raise InvalidArgument(
                "filter by company or by account, not both", fields={"account": "not together with company_name"}
            )
        users, token = await self._repo.users(page_size or 50, page_token, company=company, account=account)
        states = await asyncio.gather(*(self._otp.token_state(u.token_id) for u in users))
        return [UserView(u, s) for u, s in zip(users, states, strict=True)], token

    async def lock(self, user_id: str, *, actor: str) -> UserView:
        """Lock a user (operator): no login or confirmation, and every live session ends."""
        check_user_id(user_id)
        user = await self.update_user(user_id, lambda u: u.locked_by_operator(), actor, "user.lock", {})
        return UserView(user, await self._otp.token_state(user.token_id))

    async def unlock(self, user_id: str, *, actor: str) -> UserView:
        """Unlock a user (operator): the lock is lifted and both failure counts start again."""
        check_user_id(user_id)
        user = await self.update_user(user_id, lambda u: u.unlocked(), actor, "user.unlock", {})
        return UserView(user, await self._otp.token_state(user.token_id))

    # -- helpers ----------------------------------------------------------------------------------------------

    async def update_user(self, user_id: str, change: Any, actor: str, action: str, details: dict[str, str]) -> User:
        """Apply `change` to the user with compare-and-swap, committed with its audit record; return the result."""

        async def apply() -> User:
            current = await self._repo.user(user_id)
            changed: User = change(current.record)
            event = AuditEvent(actor, action, user_id, {**details, **_lock_details(current.record, changed)})
            await self._journal.submit(Change([put_user(changed, current.version)], [event]))
            return changed

        return await retry_lost_races(apply, what="the user")

    async def _audit(self, actor: str, action: str, subject: str, details: dict[str, str]) -> None:
        await self._journal.submit(Change([], [AuditEvent(actor, action, subject, details)]))


def _lock_details(before: User, after: User) -> dict[str, str]:
    if after.lock_reason is not before.lock_reason:
        return {"lock": after.lock_reason.value or "lifted"}
    return {}


def _otp_request_id(purpose: str, *parts: str) -> str:
    # A digest keeps the OTP service's request id within its 128 characters whatever the caller's ids are.
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()
    return f"user-{purpose}/{digest}"


def _code_digest(confirmation_id: str, otp: str) -> str:
    # The code is spent at the OTP service; this only tells a retry's code from another one.
    return hashlib.sha256(f"{confirmation_id}:{otp}".encode()).hexdigest()
