"""The OTP domain's errors: each a kagi.errors kind with a stable reason and a Japanese + English message."""

from __future__ import annotations

from collections.abc import Mapping

from kagi.errors import (
    ErrorKind,
    FailedPrecondition,
    InvalidArgument,
    KagiError,
    ResourceExhausted,
    Unauthenticated,
)


class OtpError(KagiError):
    """Marks every error raised by the OTP domain (always together with one kagi.errors kind)."""


class WrongCode(OtpError, Unauthenticated):
    """The code matches no time step in the accepted window."""

    reason = "WRONG_CODE"


class Replayed(OtpError, Unauthenticated):
    """The code belongs to a time step at or before the last accepted one."""

    reason = "REPLAYED"


class StepExpired(OtpError, Unauthenticated):
    """The code was right for a recent time step that has left the accepted window."""

    reason = "STEP_EXPIRED"


class TokenLocked(OtpError, ResourceExhausted):
    """Too many failures; only an operator unlocks the token."""

    reason = "TOKEN_LOCKED"


class RateLimited(OtpError, ResourceExhausted):
    """Too many failures in the current rate window; `metadata["retry_after"]` says when to retry."""

    reason = "RATE_LIMITED"


class TokenNotActive(OtpError, FailedPrecondition):
    """The token is in a state that does not verify codes (not yet registered, disabled...)."""

    reason = "TOKEN_NOT_ACTIVE"


class InvalidCodeFormat(OtpError, InvalidArgument):
    """The code is not exactly `digits` half-width ASCII digits (field "code")."""

    reason = "INVALID_CODE_FORMAT"


class InvalidUsageStartPassword(OtpError, InvalidArgument):
    """The usage-start password is not 4-8 half-width ASCII digits."""

    reason = "INVALID_USAGE_START_PASSWORD"


class InvalidTokenField(OtpError, InvalidArgument):
    """Another input field (e-mail, owner, service ID, user ID) breaks its rule."""

    reason = "INVALID_FIELD"


class ConsentRequired(OtpError, InvalidArgument):
    """Activation was sent without ticking "I agree" (consent=false)."""

    reason = "CONSENT_REQUIRED"


class ActivationFailed(OtpError, Unauthenticated):
    """Wrong usage-start password, or no token with that service ID and user ID.

    Both cases give this same error, same message, so the answer does not tell which IDs exist.
    """

    reason = "ACTIVATION_FAILED"


class ActivationExpired(OtpError, FailedPrecondition):
    """The token was not activated within its activation period; it must be reissued."""

    reason = "ACTIVATION_EXPIRED"


class IllegalTransition(OtpError, FailedPrecondition):
    """The event is not allowed in the token's current state (named in the message)."""

    reason = "ILLEGAL_TRANSITION"


class SeedVaultError(OtpError):
    """A sealed seed cannot be opened (unknown key id, tampered, or sealed for another token).

    INTERNAL: it means stored data or key configuration is wrong; the detail is for operators, not callers.
    """

    kind = ErrorKind.INTERNAL
    reason = "SEED_UNSEAL_FAILED"


class CorruptRecord(OtpError):
    """Stored bytes are not a record this code can read (bad JSON, field or schema version)."""

    kind = ErrorKind.INTERNAL
    reason = "CORRUPT_RECORD"


def field_error(cls: type[OtpError], field: str, rule: str, *, metadata: Mapping[str, str] | None = None) -> OtpError:
    """Build an InvalidArgument-kind error whose message and `fields` name `field` and `rule`."""
    return cls(f"invalid {field}: {rule}", fields={field: rule}, metadata=metadata)
