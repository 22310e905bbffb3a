"""The soft token: its states, the one transition table, and the stored token record with its codec.

Life of a token (the design's steps 7-10 and after):

    PENDING_ACTIVATION --ACTIVATE--> ACTIVATED --REGISTER--> REGISTERED --VERIFY--> ACTIVE
    (created, e-mail sent)  (seed delivered once)  (app stored it)        (first code verified)

Side states: ACTIVATION_LOCKED (too many wrong usage-start passwords; UNLOCK returns to PENDING_ACTIVATION),
LOCKED (too many wrong codes; UNLOCK returns to REGISTERED, so the next verified code makes the token ACTIVE
again and an unlock never claims a code was verified), DISABLED (phone lost; ENABLE returns to REGISTERED for
the same reason), EXPIRED (not activated in time) and REVOKED (final; the sealed seed is erased).
Two lock states rather than one LOCKED with a remembered origin keep `transition` a function of
(state, event) alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

from services.otp_service.domain import codec
from services.otp_service.domain.errors import CorruptRecord, IllegalTransition, OtpError
from services.otp_service.domain.seeds import SealedSeed
from services.otp_service.domain.totp import Algorithm, TotpParameters, seconds_remaining

RECORD_KIND = "otp.token"
"""Tags stored token records."""
SCHEMA_VERSION = 1
"""The token record layout this code writes and reads."""


class TokenState(Enum):
    """Where a token is in its life; only `transition` moves it."""

    PENDING_ACTIVATION = "PENDING_ACTIVATION"
    ACTIVATED = "ACTIVATED"
    REGISTERED = "REGISTERED"
    ACTIVE = "ACTIVE"
    ACTIVATION_LOCKED = "ACTIVATION_LOCKED"
    LOCKED = "LOCKED"
    DISABLED = "DISABLED"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


class TokenEvent(Enum):
    """Something that happens to a token: a verb RPC, a verification outcome, or time."""

    ACTIVATE = "ACTIVATE"
    REGISTER = "REGISTER"
    VERIFY = "VERIFY"
    LOCK = "LOCK"
    UNLOCK = "UNLOCK"
    DISABLE = "DISABLE"
    ENABLE = "ENABLE"
    EXPIRE = "EXPIRE"
    REVOKE = "REVOKE"


_S, _E = TokenState, TokenEvent
TRANSITIONS: MappingProxyType[tuple[TokenState, TokenEvent], TokenState] = MappingProxyType(
    {
        (_S.PENDING_ACTIVATION, _E.ACTIVATE): _S.ACTIVATED,
        (_S.PENDING_ACTIVATION, _E.LOCK): _S.ACTIVATION_LOCKED,
        (_S.PENDING_ACTIVATION, _E.EXPIRE): _S.EXPIRED,
        (_S.PENDING_ACTIVATION, _E.REVOKE): _S.REVOKED,
        (_S.ACTIVATED, _E.REGISTER): _S.REGISTERED,
        (_S.ACTIVATED, _E.REVOKE): _S.REVOKED,
        (_S.REGISTERED, _E.VERIFY): _S.ACTIVE,
        (_S.REGISTERED, _E.LOCK): _S.LOCKED,
        (_S.REGISTERED, _E.DISABLE): _S.DISABLED,
        (_S.REGISTERED, _E.REVOKE): _S.REVOKED,
        (_S.ACTIVE, _E.VERIFY): _S.ACTIVE,
        (_S.ACTIVE, _E.LOCK): _S.LOCKED,
        (_S.ACTIVE, _E.DISABLE): _S.DISABLED,
        (_S.ACTIVE, _E.REVOKE): _S.REVOKED,
        (_S.ACTIVATION_LOCKED, _E.UNLOCK): _S.PENDING_ACTIVATION,
        (_S.ACTIVATION_LOCKED, _E.REVOKE): _S.REVOKED,
        (_S.LOCKED, _E.UNLOCK): _S.REGISTERED,
        (_S.LOCKED, _E.DISABLE): _S.DISABLED,
        (_S.LOCKED, _E.REVOKE): _S.REVOKED,
        (_S.DISABLED, _E.ENABLE): _S.REGISTERED,
        (_S.DISABLED, _E.REVOKE): _S.REVOKED,
        (_S.EXPIRED, _E.REVOKE): _S.REVOKED,
    }
)
"""The whole state machine: (state, event) -> next state; any pair not listed is illegal."""

VERIFYING_STATES = frozenset({TokenState.REGISTERED, TokenState.ACTIVE})
"""The states in which codes are checked at all."""

LOCKED_STATES = frozenset({TokenState.ACTIVATION_LOCKED, TokenState.LOCKED})
"""The states an operator's UNLOCK leaves."""


def transition(state: TokenState, event: TokenEvent) -> TokenState:
    """Return the next state for `event` in `state`; an unlisted pair raises IllegalTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"トークンの状態が {state.value} のため {event.value} はできません"
            f" / cannot {event.value} a token in state {state.value}",
            metadata={"state": state.value, "event": event.value},
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """What anyone allowed to see a token may learn: never the seed, the code or the password."""

    token_id: str
    state: TokenState
    algorithm: Algorithm
    digits: int
    period: int
    seconds_remaining: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """The stored record of one soft token of one user; secrets and the e-mail stay out of its repr.

    The usage-start password exists only as a peppered argon2id hash, and only until activation succeeds;
    the seed exists only sealed, from activation until revocation.
    """

    token_id: str
    owner_id: str
    service_id: str
    app_user_id: str
    state: TokenState
    params: TotpParameters
    email: str = field(repr=False)
    usage_start_password_hash: str | None = field(repr=False)
    sealed_seed: SealedSeed | None = field(repr=False, default=None)
    activation_failures: int = 0
    created_at: float
    updated_at: float
    activation_expires_at: float
    activated_at: float | None = None
    registered_at: float | None = None
    first_verified_at: float | None = None

    def activation_expired(self, now: float) -> bool:
        """Say whether a token still waiting for activation is past its deadline."""
        return self.state is TokenState.PENDING_ACTIVATION and now >= self.activation_expires_at

    def apply(self, event: TokenEvent, *, now: float) -> Token:
        """Return the token after `event` (see TRANSITIONS), with the bookkeeping the event implies.

        ACTIVATE is not applied here: it needs the sealed seed, see `activated`.
        """
        if event is TokenEvent.ACTIVATE:
            raise ValueError("use Token.activated() to activate")
        state = transition(self.state, event)
        changes: dict[str, Any] = {"state": state, "updated_at": now}
        if event is TokenEvent.REGISTER:
            changes["registered_at"] = now
        elif event is TokenEvent.VERIFY and self.first_verified_at is None:
            changes["first_verified_at"] = now
        elif event is TokenEvent.UNLOCK:
            changes["activation_failures"] = 0
        elif event is TokenEvent.EXPIRE:
            changes["usage_start_password_hash"] = None
        elif event is TokenEvent.REVOKE:
            # Erasing the sealed seed makes revocation final even if someone restores the state field.
            changes["usage_start_password_hash"] = None
            changes["sealed_seed"] = None
        return replace(self, **changes)

    def activated(self, sealed_seed: SealedSeed, *, now: float) -> Token:
        """Return the token after a successful activation: seed sealed, password hash dropped."""
        return replace(
            self,
            state=transition(self.state, TokenEvent.ACTIVATE),
            sealed_seed=sealed_seed,
            usage_start_password_hash=None,
            activation_failures=0,
            activated_at=now,
            updated_at=now,
        )

    def info(self, now: float) -> TokenInfo:
        """Return the token's public view at `now`, including the seconds left in the current step."""
        return TokenInfo(
            token_id=self.token_id,
            state=self.state,
            algorithm=self.params.algorithm,
            digits=self.params.digits,
            period=self.params.period,
            seconds_remaining=seconds_remaining(now, self.params.period),
        )

    def to_bytes(self) -> bytes:
        """Return the record as schema-versioned JSON for the store."""
        return codec.dump(
            RECORD_KIND,
            SCHEMA_VERSION,
            {
                "token_id": self.token_id,
                "owner_id": self.owner_id,
                "service_id": self.service_id,
                "app_user_id": self.app_user_id,
                "state": self.state.value,
                "algorithm": self.params.algorithm.value,
                "digits": self.params.digits,
                "period": self.params.period,
                "email": self.email,
                "usage_start_password_hash": self.usage_start_password_hash,
                "sealed_seed": None if self.sealed_seed is None else self.sealed_seed.to_text(),
                "activation_failures": self.activation_failures,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "activation_expires_at": self.activation_expires_at,
                "activated_at": self.activated_at,
                "registered_at": self.registered_at,
                "first_verified_at": self.first_verified_at,
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Token:
        """Read `to_bytes` output; raise CorruptRecord on anything else."""
        obj = codec.load(data, RECORD_KIND, SCHEMA_VERSION)
        sealed = codec.optional(obj, "sealed_seed", str)
        try:
            return cls(
                token_id=codec.field(obj, "token_id", str),
                owner_id=codec.field(obj, "owner_id", str),
                service_id=codec.field(obj, "service_id", str),
                app_user_id=codec.field(obj, "app_user_id", str),
                state=TokenState(codec.field(obj, "state", str)),
                params=TotpParameters(
                    algorithm=Algorithm(codec.field(obj, "algorithm", str)),
                    digits=codec.field(obj, "digits", int),
                    period=codec.field(obj, "period", int),
                ),
                email=codec.field(obj, "email", str),
                usage_start_password_hash=codec.optional(obj, "usage_start_password_hash", str),
                sealed_seed=None if sealed is None else SealedSeed.from_text(sealed),
                activation_failures=codec.field(obj, "activation_failures", int),
                created_at=codec.field(obj, "created_at", float),
                updated_at=codec.field(obj, "updated_at", float),
                activation_expires_at=codec.field(obj, "activation_expires_at", float),
                activated_at=codec.optional(obj, "activated_at", float),
                registered_at=codec.optional(obj, "registered_at", float),
                first_verified_at=codec.optional(obj, "first_verified_at", float),
            )
        except CorruptRecord:
            raise
        except (ValueError, OtpError) as exc:
            raise CorruptRecord("token record holds an invalid value") from exc
