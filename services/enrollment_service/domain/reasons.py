"""The enrollment service's catalogue of error reasons: each one's kind, HTTP status and meaning (see kagi.reasons).

It covers both of its gRPC services, EnrollmentService (the ten steps, operators' application work) and
UserService (logins, sessions, confirmations and the user's lifecycle). The OTP and CA reasons it passes on
unchanged are in their own catalogues.
"""

from __future__ import annotations

from enum import unique

from kagi.errors import ErrorKind
from kagi.reasons import Reason, ReasonCatalogue

_INVALID = ErrorKind.INVALID_ARGUMENT
_STATE = ErrorKind.FAILED_PRECONDITION
_UNAUTH = ErrorKind.UNAUTHENTICATED
_DENIED = ErrorKind.PERMISSION_DENIED
_MISSING = ErrorKind.NOT_FOUND
_EXHAUSTED = ErrorKind.RESOURCE_EXHAUSTED


@unique
class EnrollmentReason(ReasonCatalogue):
    """The reasons the enrollment service raises beyond the shared ones (kagi.reasons.SharedReason)."""

    # Input rules (each names the offending fields).
    INVALID_INPUT = Reason(_INVALID, 400, "The input breaks the rules named per field.")
    INVALID_APPLICATION = Reason(_INVALID, 400, "The application breaks the rules named per field.")
    INVALID_NOTICE_ENTRY = Reason(_INVALID, 400, "The notice entry (branch, account, passwords) breaks its rules.")
    INVALID_PROFILE = Reason(_INVALID, 400, "The profile (step 2) breaks the rules named per field.")
    INVALID_TOKEN_REQUEST = Reason(_INVALID, 400, "The token request (step 7) breaks the rules named per field.")
    INVALID_PASSWORD = Reason(_INVALID, 400, "The new password breaks its rules or equals the other password.")
    LOGIN_ID_TAKEN = Reason(_INVALID, 400, "Another user has that login ID.")
    CSR_REQUIRED = Reason(_INVALID, 400, "The step needs a CSR.")
    CSR_MALFORMED = Reason(_INVALID, 400, "The CSR is not one parseable PKCS#10 request in PEM.")
    KEY_REUSED = Reason(_INVALID, 400, "A renewal's CSR is for the current certificate's key; it needs a new key.")

    # Applications and their notices (step 1 and the operators' work).
    APPLICATION_NOT_FOUND = Reason(_MISSING, 404, "No application has that ID.")
    NOTICE_MISMATCH = Reason(_UNAUTH, 401, "The notice's account or temporary passwords do not match.")
    APPLICATION_LOCKED = Reason(
        _EXHAUSTED, 423, "Too many wrong notice entries: only the bank unlocks the application."
    )
    APPLICATION_EXPIRED = Reason(_STATE, 409, "The notice has expired.")
    APPLICATION_USED = Reason(_STATE, 409, "The notice has been used already.")
    APPLICATION_NOT_OPEN = Reason(_STATE, 409, "The application is not open (locked, used, expired or cancelled).")
    APPLICATION_NOT_LOCKED = Reason(_STATE, 409, "The application is not locked.")
    NOTHING_LOCKED = Reason(_STATE, 409, "Neither the application nor its enrollment is locked.")
    TOO_MANY_ATTEMPTS = Reason(_EXHAUSTED, 429, "Too many refusals from one address or certificate; retry later.")

    # Enrollments and their steps.
    ENROLLMENT_NOT_FOUND = Reason(_MISSING, 404, "No enrollment has that ID (or not for this credential).")
    SESSION_INVALID = Reason(_UNAUTH, 401, "The enrollment's session token is missing or wrong.")
    WRONG_STEP = Reason(_STATE, 409, "Not the step the enrollment's state allows; the message names the next one.")
    ENROLLMENT_CLOSED = Reason(_STATE, 409, "The enrollment is completed, expired, locked or cancelled.")
    ENROLLMENT_NOT_LOCKED = Reason(_STATE, 409, "The enrollment is not locked.")
    ENROLLMENT_NOT_EXPIRED = Reason(_STATE, 409, "Only an expired enrollment can be re-opened.")
    LOGIN_ID_REREGISTERED = Reason(
        _STATE, 409, "Another user registered the login ID the clean-up released: the enrollment cannot be re-opened."
    )
    APPLICATION_GONE = Reason(_STATE, 409, "The enrollment's application is gone: register a new application.")
    PERSONAL_DATA_ERASED = Reason(_STATE, 409, "The enrollment's personal data was erased: register a new application.")
    CERTIFICATE_ALREADY_REQUESTED = Reason(_STATE, 409, "The enrollment's certificate was requested with another CSR.")
    CERTIFICATE_MISMATCH = Reason(_DENIED, 403, "The step needs the certificate issued for this enrollment.")
    CERTIFICATE_NOT_GOOD = Reason(_DENIED, 403, "The client certificate is revoked or otherwise not GOOD at the CA.")
    ACTIVATION_ALREADY_DELIVERED = Reason(_STATE, 409, "The token's activation went out once; request a new token.")

    # Users: logins, sessions, locks and confirmations.
    USER_NOT_FOUND = Reason(_MISSING, 404, "No user has that ID.")
    LOGIN_FAILED = Reason(_UNAUTH, 401, "Unknown login ID, someone else's certificate or a wrong password.")
    WRONG_PASSWORD = Reason(_UNAUTH, 401, "The login password is wrong (five in a row lock the user).")
    WRONG_CONFIRMATION_PASSWORD = Reason(_UNAUTH, 401, "The confirmation password is wrong (five in a row lock).")
    CERTIFICATE_INVALID = Reason(_UNAUTH, 401, "The certificate is not the customer CA's, not valid now, or not GOOD.")
    ACCESS_TOKEN_INVALID = Reason(_UNAUTH, 401, "The access token is malformed, expired, ended, or not this user's.")
    USER_LOCKED = Reason(_EXHAUSTED, 423, "Five wrong passwords in a row or an operator's lock: only the bank unlocks.")
    USER_ALREADY_LOCKED = Reason(_STATE, 409, "The user is locked already.")
    USER_NOT_LOCKED = Reason(_STATE, 409, "The user is not locked.")
    SETUP_INCOMPLETE = Reason(_STATE, 409, "The user's setup has not completed.")
    TRANSACTION_MISMATCH = Reason(_STATE, 409, "The transaction was confirmed already with other data.")

    # The user's credentials after the setup: passwords, certificate renewal, token.
    NO_RESET_NOTICE = Reason(_MISSING, 404, "No password reset notice is pending for the user.")
    WRONG_TEMPORARY_PASSWORD = Reason(_UNAUTH, 401, "The reset notice's temporary password is wrong.")
    RESET_NOTICE_LOCKED = Reason(_EXHAUSTED, 423, "Too many wrong temporary passwords: the bank issues a new notice.")
    CERTIFICATE_NOT_ACTIVE = Reason(_STATE, 409, "The certificate is revoked or expired; it cannot be renewed.")
    OUTSIDE_RENEWAL_WINDOW = Reason(_STATE, 409, "Too early: a certificate is renewed only near its expiry.")
    NO_TOKEN = Reason(_STATE, 409, "The user has no token yet.")
    REISSUE_NOT_ALLOWED = Reason(
        _STATE, 409, "A token reissue without a session needs the bank to allow it (`kagi admin reissue-token`)."
    )

    # Dependencies and keys.
    MAIL_UNAVAILABLE = Reason(ErrorKind.UNAVAILABLE, 503, "The mail server (or maildir) cannot take the mail now.")
    SIGNING_KEY_UNREADABLE = Reason(ErrorKind.INTERNAL, 500, "The token-signing key ring cannot be read.")
