"""The OTP domain's operations, as the use-case layer calls them: create, activate, verify, change lifecycle.

Each takes the records it needs and the time, and returns the records to write plus the answer; none reads a
clock, the environment or the store. The use case reads with versions, calls one of these, and writes the
returned records with compare-and-swap (several in one `commit`), re-running the operation on a lost race.
An operation that must both change state and refuse (a wrong password that is counted) returns the new
record *and* the error, so the use case can persist the count before raising.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass, field, replace

from kagi.passwords import PasswordHasher
from services.otp_service.domain import verification
from services.otp_service.domain.errors import (
    ActivationExpired,
    ActivationFailed,
    CorruptRecord,
    IllegalTransition,
    OtpError,
    RateLimited,
    Replayed,
    StepExpired,
    TokenLocked,
    TokenNotActive,
    WrongCode,
)
from services.otp_service.domain.ids import (
    SYSTEM_RANDOM,
    RandomBytes,
    new_app_user_id,
    new_service_id,
    new_token_id,
    parse_app_user_id,
    parse_service_id,
)
from services.otp_service.domain.model import (
    LOCKED_STATES,
    VERIFYING_STATES,
    Token,
    TokenEvent,
    TokenState,
    transition,
)
from services.otp_service.domain.policy import OtpPolicy
from services.otp_service.domain.seeds import SeedVault, generate_seed
from services.otp_service.domain.totp import TotpParameters, match_code
from services.otp_service.domain.uri import key_uri
from services.otp_service.domain.validation import (
    validate_code,
    validate_consent,
    validate_email,
    validate_owner_id,
    validate_usage_start_password,
)
from services.otp_service.domain.verification import Verdict, VerificationState

ACTIVATION_FAILED_MESSAGE = (
    "サービスID、ユーザID、または利用開始パスワードが正しくありません"
    " / the service ID, user ID or usage-start password is incorrect"
)
"""The one answer to a wrong password and to unknown IDs alike."""
TOKEN_LOCKED_MESSAGE = (
    "トークンがロックされています。当組合までお問い合わせください / the token is locked; please contact the bank"
)
"""Tells a locked-out user to call the bank: only an operator unlocks."""


@dataclass(frozen=True, slots=True)
class NewToken:
    """What `create_token` makes: both records to create, all-or-nothing."""

    token: Token
    verification_state: VerificationState


def create_token(
    *,
    owner_id: str,
    email: str,
    usage_start_password: str,
    now: float,
    policy: OtpPolicy,
    hasher: PasswordHasher,
    params: TotpParameters | None = None,
    random: RandomBytes = SYSTEM_RANDOM,
) -> NewToken:
    """Validate the inputs and make a PENDING_ACTIVATION token with fresh service and user IDs.

    The usage-start password is kept only as a peppered argon2id hash. If the store reports the service ID
    taken, call again: the IDs are drawn anew.
    """
    validate_owner_id(owner_id)
    validate_email(email)
    validate_usage_start_password(usage_start_password)
    token = Token(
        token_id=new_token_id(random),
        owner_id=owner_id,
        service_id=new_service_id(random),
        app_user_id=new_app_user_id(random),
        state=TokenState.PENDING_ACTIVATION,
        params=params or policy.token_parameters,
        email=email,
        usage_start_password_hash=hasher.hash(usage_start_password),
        created_at=now,
        updated_at=now,
        activation_expires_at=now + policy.activation_ttl,
    )
    return NewToken(token=token, verification_state=VerificationState())


@dataclass(frozen=True, slots=True)
class ActivationRequest:
    """Step 8 as typed into the app, validated; the password never prints."""

    service_id: str
    app_user_id: str
    usage_start_password: str = field(repr=False)

    @classmethod
    def parse(
        cls, *, service_id: object, user_id: object, usage_start_password: object, consent: object
    ) -> ActivationRequest:
        """Validate the app's four inputs (consent must be true) and canonicalise the IDs."""
        request = cls(
            service_id=parse_service_id(service_id),
            app_user_id=parse_app_user_id(user_id),
            usage_start_password=validate_usage_start_password(usage_start_password),
        )
        validate_consent(consent)
        return request


@dataclass(frozen=True, slots=True)
class ProvisionedSeed:
    """The seed as handed to the app, once: base32 and otpauth URI, neither in its repr."""

    token_id: str
    params: TotpParameters
    secret_base32: str = field(repr=False)
    key_uri: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ActivationResult:
    """`activate`'s answer: the token to write back (if changed), and the seed or the error."""

    token: Token | None
    seed: ProvisionedSeed | None = None
    error: OtpError | None = None

    def unwrap(self) -> ProvisionedSeed:
        """Return the seed, or raise the error; call it only after writing `token`."""
        if self.error is not None:
            raise self.error
        if self.seed is None:
            raise ValueError("an activation result holds a seed or an error")
        return self.seed


def activate(
    token: Token | None,
    request: ActivationRequest,
    *,
    now: float,
    policy: OtpPolicy,
    hasher: PasswordHasher,
    vault: SeedVault,
    random: RandomBytes = SYSTEM_RANDOM,
) -> ActivationResult:
    """Check step 8's credentials against the token found by service ID (None if there is none).

    No token, another user ID and a wrong password all answer ActivationFailed with the same message, and
    cost the same argon2 verification. Only a wrong password for the right IDs is counted; the
    `max_activation_failures`-th locks the token. On success a new seed is drawn, sealed to the token and
    returned: the token moves to ACTIVATED, so no later call can return a seed again. A token past
    activation answers ILLEGAL_TRANSITION naming its state (its password hash is gone by then), a locked
    one TOKEN_LOCKED, an expired one ACTIVATION_EXPIRED (and is moved to EXPIRED).
    """
    if (
        token is None
        or token.service_id != request.service_id
        or not hmac.compare_digest(token.app_user_id.encode(), request.app_user_id.encode())
    ):
        hasher.verify_dummy(request.usage_start_password)
        return ActivationResult(token=None, error=ActivationFailed(ACTIVATION_FAILED_MESSAGE))
    if token.state in LOCKED_STATES:
        return ActivationResult(token=None, error=TokenLocked(TOKEN_LOCKED_MESSAGE))
    if token.state is TokenState.EXPIRED or token.activation_expired(now):
        expired = token.apply(TokenEvent.EXPIRE, now=now) if token.state is not TokenState.EXPIRED else None
        return ActivationResult(
            token=expired,
            error=ActivationExpired(
                "利用開始の有効期限が過ぎています。トークンを再発行してください"
                " / the activation period has expired; please request a new token"
            ),
        )
    if token.state is not TokenState.PENDING_ACTIVATION:
        try:
            transition(token.state, TokenEvent.ACTIVATE)
        except IllegalTransition as exc:
            return ActivationResult(token=None, error=exc)
    if token.usage_start_password_hash is None:
        raise CorruptRecord("pending token has no usage-start password hash")
    if not hasher.verify(token.usage_start_password_hash, request.usage_start_password):
        failures = token.activation_failures + 1
        counted = replace(token, activation_failures=failures, updated_at=now)
        if failures >= policy.max_activation_failures:
            return ActivationResult(
                token=counted.apply(TokenEvent.LOCK, now=now), error=TokenLocked(TOKEN_LOCKED_MESSAGE)
            )
        return ActivationResult(token=counted, error=ActivationFailed(ACTIVATION_FAILED_MESSAGE))
    seed = generate_seed(token.params.algorithm, random)
    activated = token.activated(vault.seal(token.token_id, seed), now=now)
    provisioned = ProvisionedSeed(
        token_id=token.token_id,
        params=token.params,
        secret_base32=seed.base32(),
        key_uri=key_uri(seed, token.params, issuer=policy.issuer, account=token.app_user_id),
    )
    return ActivationResult(token=activated, seed=provisioned)


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """Names the outcome of one code check; it never holds the code or the expected code."""

    verdict: Verdict
    token_state: TokenState
    locked: bool
    attempts_remaining: int
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        """Say whether the code was accepted."""
        return self.verdict is Verdict.ACCEPTED

    def error(self) -> OtpError | None:
        """Return the domain error for a failed check (TokenLocked once this failure locked it), else None."""
        meta = {"attempts_remaining": str(self.attempts_remaining)}
        if self.ok:
            return None
        if self.verdict is Verdict.TOKEN_LOCKED:
            return TokenLocked(TOKEN_LOCKED_MESSAGE)
        if self.locked:
            # This very failure locked the token: say so, and keep what was wrong with the code for the logs.
            return TokenLocked(TOKEN_LOCKED_MESSAGE, metadata={"cause": self.verdict.value})
        if self.verdict is Verdict.WRONG_CODE:
            return WrongCode(
                "ワンタイムパスワードが正しくありません / the one-time password is incorrect", metadata=meta
            )
        if self.verdict is Verdict.REPLAYED:
            return Replayed(
                "このワンタイムパスワードは使用済みです。アプリに次のパスワードが表示されるまでお待ちください"
                " / this one-time password has been used already; wait for the next one in the app",
                metadata=meta,
            )
        if self.verdict is Verdict.STEP_EXPIRED:
            return StepExpired(
                "ワンタイムパスワードの有効時間が過ぎています。アプリに表示されている新しいパスワードを入力してください"
                " / the one-time password has expired; enter the new one shown in the app",
                metadata=meta,
            )
        if self.verdict is Verdict.RATE_LIMITED:
            seconds = math.ceil(self.retry_after or 0)
            return RateLimited(
                f"しばらく時間をおいてから再度お試しください（{seconds}秒後）"
                f" / too many attempts; try again in {seconds} s",
                metadata={"retry_after": str(seconds)},
            )
        return TokenNotActive(
            f"このトークンは現在利用できません（状態: {self.token_state.value}）"
            f" / the token does not verify codes in state {self.token_state.value}",
            metadata={"state": self.token_state.value},
        )

    def raise_for_failure(self) -> None:
        """Raise `error()` when the code was not accepted."""
        err = self.error()
        if err is not None:
            raise err


@dataclass(frozen=True, slots=True)
class VerificationOutcome:
    """`verify_code`'s answer and the records to write (None: leave unchanged).

    When `token` is set, write it and `state` in one `commit`; otherwise compare-and-swap `state` alone.
    """

    result: VerificationResult
    state: VerificationState | None
    token: Token | None


def verify_code(
    token: Token,
    state: VerificationState,
    code: object,
    *,
    now: float,
    policy: OtpPolicy,
    vault: SeedVault,
) -> VerificationOutcome:
    """Check `code` for `token` at `now`: format, token state, then match and `decide`.

    A malformed code raises InvalidCodeFormat and changes nothing. The first accepted code moves a
    REGISTERED token to ACTIVE; the failure that reaches `max_failures` moves it to LOCKED.
    """
    checked = validate_code(code, token.params.digits)

    def refuse(verdict: Verdict, retry: float | None = None) -> VerificationOutcome:
        result = VerificationResult(
            verdict=verdict,
            token_state=token.state,
            locked=verdict is Verdict.TOKEN_LOCKED,
            attempts_remaining=verification.attempts_remaining(state, policy),
            retry_after=retry,
        )
        return VerificationOutcome(result=result, state=None, token=None)

    if token.state in LOCKED_STATES:
        return refuse(Verdict.TOKEN_LOCKED)
    if token.state not in VERIFYING_STATES:
        return refuse(Verdict.TOKEN_NOT_ACTIVE)
    if state.locked:
        return refuse(Verdict.TOKEN_LOCKED)
    wait = verification.retry_after(state, now, policy)
    if wait is not None:
        return refuse(Verdict.RATE_LIMITED, wait)
    if token.sealed_seed is None:
        raise CorruptRecord("token in a verifying state has no sealed seed")
    seed = vault.open(token.token_id, token.sealed_seed)
    match = match_code(
        seed.value,
        token.params,
        checked,
        now,
        past_steps=policy.past_steps,
        future_steps=policy.future_steps,
        expired_lookback=policy.expired_lookback,
    )
    decision = verification.decide(state, match, now=now, policy=policy)
    updated: Token | None = None
    if decision.accepted and token.state is TokenState.REGISTERED:
        updated = token.apply(TokenEvent.VERIFY, now=now)
    elif decision.locked_now:
        updated = token.apply(TokenEvent.LOCK, now=now)
    result = VerificationResult(
        verdict=decision.verdict,
        token_state=(updated or token).state,
        locked=decision.state.locked,
        attempts_remaining=verification.attempts_remaining(decision.state, policy),
        retry_after=decision.retry_after,
    )
    return VerificationOutcome(result=result, state=decision.state if decision.changed else None, token=updated)


@dataclass(frozen=True, slots=True)
class LifecycleChange:
    """A token and its verification record after an operator or app event; commit both."""

    token: Token
    verification_state: VerificationState


def change_lifecycle(
    token: Token, state: VerificationState, event: TokenEvent, *, now: float, policy: OtpPolicy
) -> LifecycleChange:
    """Apply REGISTER, LOCK, UNLOCK, DISABLE, ENABLE, EXPIRE or REVOKE to both records.

    UNLOCK and ENABLE (operator actions) clear the failure counters but keep the replay floor; an unlocked
    ACTIVATION_LOCKED token gets a fresh activation period. LOCK, DISABLE and REVOKE set the lock flag too,
    so a verification racing with them fails its compare-and-swap and re-reads the token.
    """
    updated = token.apply(event, now=now)
    if event in (TokenEvent.UNLOCK, TokenEvent.ENABLE):
        new_state = verification.unlock(state)
        if updated.state is TokenState.PENDING_ACTIVATION:
            updated = replace(updated, activation_expires_at=now + policy.activation_ttl)
    elif event in (TokenEvent.LOCK, TokenEvent.DISABLE, TokenEvent.REVOKE):
        new_state = verification.lock(state)
    else:
        new_state = state
    return LifecycleChange(token=updated, verification_state=new_state)
