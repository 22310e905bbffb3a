"""Input rules of the OTP domain: codes, usage-start passwords, IDs and e-mail addresses.

Each check returns the accepted value or raises an InvalidArgument-kind error naming the field and the rule in
Japanese and English. Nothing is normalised behind the user's back: full-width digits ("１２３４") are refused
with a message that says so, because silently converting them would hide an input-method problem the user
will meet again on the bank's other screens.
"""

from __future__ import annotations

import re

from services.otp_service.domain.errors import (
    ConsentRequired,
    InvalidCodeFormat,
    InvalidTokenField,
    InvalidUsageStartPassword,
    field_error,
)

USAGE_START_PASSWORD_MIN = 4
"""The fewest digits in a usage-start password."""
USAGE_START_PASSWORD_MAX = 8
"""The most digits in a usage-start password."""
MAX_EMAIL_LENGTH = 254
"""The longest deliverable address (RFC 5321 path limit)."""
MAX_OWNER_ID_LENGTH = 128
"""The longest owning-user id accepted."""

_ASCII_DIGITS = frozenset("0123456789")
_FULL_WIDTH_DIGITS = frozenset("０１２３４５６７８９")
_FULL_WIDTH_RULE_JA = "全角数字は使えません。半角数字で入力してください"
_FULL_WIDTH_RULE_EN = "full-width digits are not accepted; use half-width digits"
# Deliberately narrow: the address only has to reach a phone's mailbox, and a narrow rule keeps header-injection
# characters (CR, LF, commas, double quotes, angle brackets) out of the mailer.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)+"
)
_OWNER_ID_RE = re.compile(r"[A-Za-z0-9_.:@\-]+")


def _has_full_width_digit(value: str) -> bool:
    return any(ch in _FULL_WIDTH_DIGITS for ch in value)


def _is_ascii_digits(value: str) -> bool:
    return bool(value) and all(ch in _ASCII_DIGITS for ch in value)


def validate_code(code: object, digits: int) -> str:
    """Return `code` if it is exactly `digits` half-width ASCII digits, else InvalidCodeFormat."""
    if not isinstance(code, str):
        raise field_error(InvalidCodeFormat, "code", f"must be a string of {digits} half-width digits")
    if _has_full_width_digit(code):
        rule = f"{_FULL_WIDTH_RULE_JA}（{digits}桁） / {_FULL_WIDTH_RULE_EN} ({digits} digits)"
        raise field_error(InvalidCodeFormat, "code", rule)
    if len(code) != digits or not _is_ascii_digits(code):
        rule = f"半角数字{digits}桁で入力してください / must be exactly {digits} half-width digits (0-9)"
        raise field_error(InvalidCodeFormat, "code", rule)
    return code


def validate_usage_start_password(password: object) -> str:
    """Return the password if it is 4-8 half-width digits, else refuse it."""
    lo, hi = USAGE_START_PASSWORD_MIN, USAGE_START_PASSWORD_MAX
    if not isinstance(password, str):
        raise field_error(InvalidUsageStartPassword, "usage_start_password", f"must be {lo}-{hi} digits")
    if _has_full_width_digit(password):
        rule = f"{_FULL_WIDTH_RULE_JA}（{lo}桁～{hi}桁） / {_FULL_WIDTH_RULE_EN} ({lo}-{hi} digits)"
        raise field_error(InvalidUsageStartPassword, "usage_start_password", rule)
    if not lo <= len(password) <= hi or not _is_ascii_digits(password):
        rule = f"半角数字{lo}桁～{hi}桁で入力してください / must be {lo}-{hi} half-width digits (0-9)"
        raise field_error(InvalidUsageStartPassword, "usage_start_password", rule)
    return password


def validate_consent(consent: object) -> None:
    """Refuse anything but consent=True with ConsentRequired (field "consent")."""
    if consent is not True:
        rule = "「上記の内容に同意する」にチェックしてください / you must agree to the terms (consent must be true)"
        raise field_error(ConsentRequired, "consent", rule)


def validate_email(email: object) -> str:
    """Return a plain ASCII address of at most 254 characters, else InvalidTokenField."""
    rule = "メールアドレスの形式が正しくありません / must be an e-mail address such as name@example.jp"
    if not isinstance(email, str) or len(email) > MAX_EMAIL_LENGTH or not _EMAIL_RE.fullmatch(email):
        raise field_error(InvalidTokenField, "email", rule)
    return email


def validate_owner_id(owner_id: object) -> str:
    """Return the owning user's id (1-128 of A-Z a-z 0-9 _ . : @ -), else InvalidTokenField."""
    if (
        not isinstance(owner_id, str)
        or not 1 <= len(owner_id) <= MAX_OWNER_ID_LENGTH
        or not _OWNER_ID_RE.fullmatch(owner_id)
    ):
        raise field_error(
            InvalidTokenField, "owner_id", f"must be 1-{MAX_OWNER_ID_LENGTH} characters of A-Z a-z 0-9 _ . : @ -"
        )
    return owner_id
