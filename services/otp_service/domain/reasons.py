"""The OTP service's catalogue of error reasons: each reason's kind, HTTP status and meaning (see kagi.reasons)."""

from __future__ import annotations

from enum import unique

from kagi.errors import ErrorKind
from kagi.reasons import Reason, ReasonCatalogue

_INVALID = ErrorKind.INVALID_ARGUMENT
_STATE = ErrorKind.FAILED_PRECONDITION
_UNAUTH = ErrorKind.UNAUTHENTICATED


@unique
class OtpReason(ReasonCatalogue):
    """The reasons the OTP service raises beyond the shared ones (kagi.reasons.SharedReason)."""

    # Input rules.
    INVALID_CODE_FORMAT = Reason(_INVALID, 400, "The code is not exactly the token's number of ASCII digits.")
    INVALID_USAGE_START_PASSWORD = Reason(_INVALID, 400, "The usage-start password is not 4-8 ASCII digits.")
    INVALID_FIELD = Reason(_INVALID, 400, "Another field (e-mail, owner, IDs, algorithm, page size) breaks its rule.")
    CONSENT_REQUIRED = Reason(_INVALID, 400, "Activation was sent without agreeing to the terms.")

    # Tokens and their lifecycle.
    TOKEN_NOT_FOUND = Reason(ErrorKind.NOT_FOUND, 404, "No token has that token ID.")
    TOKEN_NOT_ACTIVE = Reason(_STATE, 409, "The token does not verify codes in its state (not registered, disabled).")
    ILLEGAL_TRANSITION = Reason(_STATE, 409, "The event is not allowed in the token's current state.")
    ACTIVATION_FAILED = Reason(
        _UNAUTH, 401, "Wrong usage-start password, or no token with those IDs (told apart to nobody)."
    )
    ACTIVATION_EXPIRED = Reason(_STATE, 409, "The token was not activated in time; it must be reissued.")
    REGISTRATION_FAILED = Reason(_UNAUTH, 401, "No activated token with those IDs and that activation ID.")

    # Verifying a code.
    WRONG_CODE = Reason(_UNAUTH, 401, "The code matches no time step in the accepted window.")
    REPLAYED = Reason(_UNAUTH, 401, "The code's time step was used already.")
    STEP_EXPIRED = Reason(_UNAUTH, 401, "The code was right for a time step that has left the accepted window.")
    TOKEN_LOCKED = Reason(
        ErrorKind.RESOURCE_EXHAUSTED, 423, "Too many wrong codes: only an operator unlocks the token."
    )
    RATE_LIMITED = Reason(
        ErrorKind.RESOURCE_EXHAUSTED, 429, "Too many wrong codes in the rate window; retry after `retry_after`."
    )

    # Stored data and keys (operators' business: callers see INTERNAL without detail).
    SEED_UNSEAL_FAILED = Reason(
        ErrorKind.INTERNAL, 500, "A sealed seed does not open (tampered, or for another token)."
    )
    SEED_MALFORMED = Reason(ErrorKind.INTERNAL, 500, "A stored sealed seed is malformed.")
    SEED_KEY_UNKNOWN = Reason(ErrorKind.INTERNAL, 500, "A sealed seed names a key-encryption key not configured.")
    CORRUPT_RECORD = Reason(ErrorKind.INTERNAL, 500, "A stored record is unreadable (bad JSON, field or kind).")
    UNSUPPORTED_SCHEMA = Reason(ErrorKind.INTERNAL, 500, "A stored record has a schema version this code cannot read.")
