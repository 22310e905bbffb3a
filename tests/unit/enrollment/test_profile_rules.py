"""The bank's rules for step 2 (profile) and step 7 (token request): every violation reported at once, per
field, with full-width input named as such."""

from __future__ import annotations

from typing import Any

import pytest

from kagi.errors import InvalidArgument
from services.enrollment_service.domain.rules import (
    MSG_ALNUM_MIXED,
    MSG_DIGITS_4_8,
    MSG_DUPLICATE,
    MSG_FULL_WIDTH,
    MSG_MISMATCH,
    validate_application,
    validate_profile,
    validate_token_request,
)

GOOD = {
    "user_name": "山田 太郎",
    "email": "taro@example.co.jp",
    "email_confirmation": "taro@example.co.jp",
    "login_id": "yamada01",
    "login_id_confirmation": "yamada01",
    "login_password": "Passw0rd",
    "login_password_confirmation": "Passw0rd",
    "confirmation_password": "Kakunin9",
    "confirmation_password_confirmation": "Kakunin9",
}


def _profile_errors(**changes: str) -> dict[str, str]:
    entry: dict[str, Any] = {**GOOD, **changes}
    with pytest.raises(InvalidArgument) as failure:
        validate_profile(**entry)
    assert failure.value.reason == "INVALID_PROFILE"
    return failure.value.fields


def test_good_profile_passes_and_hides_passwords() -> None:
    """A profile that keeps every rule is accepted, and its repr shows no password."""
    profile = validate_profile(**GOOD)
    assert profile.login_id == "yamada01"
    assert "Passw0rd" not in repr(profile)
    assert "Kakunin9" not in repr(profile)


@pytest.mark.parametrize("field", ["login_id", "login_password", "confirmation_password"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc12", MSG_ALNUM_MIXED),  # 5 characters
        ("abcdefghij123", MSG_ALNUM_MIXED),  # 13 characters
        ("abcdefgh", MSG_ALNUM_MIXED),  # letters only
        ("12345678", MSG_ALNUM_MIXED),  # digits only
        ("abc_1234", MSG_ALNUM_MIXED),  # a symbol
        ("ａｂｃ１２３４", MSG_FULL_WIDTH),  # full-width letters and digits
    ],
)
def test_alnum_mixed_rule(field: str, value: str, message: str) -> None:
    """Login ID and both passwords: 6-12 half-width letters and digits mixed; each breach names the field."""
    errors = _profile_errors(**{field: value, f"{field}_confirmation": value})
    assert errors[field] == message


def test_six_and_twelve_characters_are_accepted() -> None:
    """The bounds themselves are allowed (6 and 12 characters), case-sensitively."""
    validate_profile(**{**GOOD, "login_id": "abc123", "login_id_confirmation": "abc123"})
    validate_profile(**{**GOOD, "login_id": "ABCdef123456", "login_id_confirmation": "ABCdef123456"})


@pytest.mark.parametrize("field", ["email", "login_id", "login_password", "confirmation_password"])
def test_mismatched_pairs(field: str) -> None:
    """Each pair of entries must match; the mismatch is reported on the confirmation field."""
    errors = _profile_errors(**{f"{field}_confirmation": GOOD[field] + "x"})
    assert errors[f"{field}_confirmation"] == MSG_MISMATCH


def test_login_id_equal_to_password_is_refused() -> None:
    """No two of login ID, login password and confirmation password may be equal."""
    errors = _profile_errors(login_password="yamada01", login_password_confirmation="yamada01")
    assert errors["login_password"] == MSG_DUPLICATE
    errors = _profile_errors(confirmation_password="Passw0rd", confirmation_password_confirmation="Passw0rd")
    assert errors["confirmation_password"] == MSG_DUPLICATE


def test_case_makes_values_different() -> None:
    """Letters are case-sensitive: PASSW0RD and Passw0rd are different passwords."""
    validate_profile(**{**GOOD, "confirmation_password": "PASSW0RD", "confirmation_password_confirmation": "PASSW0RD"})


def test_every_violation_is_reported_at_once() -> None:
    """A form with many mistakes gets one answer naming every field that is wrong."""
    errors = _profile_errors(
        user_name="",
        email="not-an-address",
        login_id="ａｂｃ１２３",
        login_id_confirmation="ａｂｃ１２３",
        login_password="short",
        login_password_confirmation="short",
        confirmation_password_confirmation="other",
    )
    assert set(errors) >= {"user_name", "email", "login_id", "login_password", "confirmation_password_confirmation"}


def test_user_name_length() -> None:
    """The user name is 1-30 characters."""
    assert "user_name" in _profile_errors(user_name="あ" * 31)
    validate_profile(**{**GOOD, "user_name": "あ" * 30})


@pytest.mark.parametrize(
    ("password", "message"),
    [("123", MSG_DIGITS_4_8), ("123456789", MSG_DIGITS_4_8), ("12a4", MSG_DIGITS_4_8), ("１２３４", MSG_FULL_WIDTH)],
)
def test_usage_start_password_rule(password: str, message: str) -> None:
    """The usage-start password is 4-8 half-width digits; full-width digits are named as such."""
    with pytest.raises(InvalidArgument) as failure:
        validate_token_request(
            mobile_email="m@example.jp",
            mobile_email_confirmation="m@example.jp",
            usage_start_password=password,
            usage_start_password_confirmation=password,
        )
    assert failure.value.fields["usage_start_password"] == message


def test_token_request_pairs_must_match() -> None:
    """Step 7's e-mail and usage-start password pairs must match."""
    with pytest.raises(InvalidArgument) as failure:
        validate_token_request(
            mobile_email="m@example.jp",
            mobile_email_confirmation="n@example.jp",
            usage_start_password="1234",
            usage_start_password_confirmation="1235",
        )
    assert set(failure.value.fields) == {"mobile_email_confirmation", "usage_start_password_confirmation"}


@pytest.mark.parametrize(
    ("branch", "account", "field"),
    [
        ("01", "1234567", "branch_code"),
        ("0011", "1234567", "branch_code"),
        ("001", "123456", "account_number"),
        ("００１", "1234567", "branch_code"),
        ("001", "12345678", "account_number"),
    ],
)
def test_application_account_rules(branch: str, account: str, field: str) -> None:
    """Branch code is 3 digits and account number 7 digits."""
    with pytest.raises(InvalidArgument) as failure:
        validate_application(company_name="株式会社テスト", branch_code=branch, account_number=account)
    assert field in failure.value.fields
