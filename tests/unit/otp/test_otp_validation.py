"""Input rules: codes and usage-start passwords are half-width ASCII digits of the right length, and say so."""

from __future__ import annotations

import pytest

from kagi.errors import ErrorKind
from services.otp_service.domain import InvalidCodeFormat, InvalidTokenField, InvalidUsageStartPassword
from services.otp_service.domain.ids import (
    SERVICE_ID_LENGTH,
    new_app_user_id,
    new_service_id,
    parse_app_user_id,
    parse_service_id,
)
from services.otp_service.domain.validation import (
    validate_code,
    validate_email,
    validate_usage_start_password,
)


@pytest.mark.parametrize("code", ["000000", "123456", "999999"])
def test_six_ascii_digits_pass(code: str) -> None:
    """Exactly six half-width digits, leading zeros included, are a valid 6-digit code."""
    assert validate_code(code, 6) == code


@pytest.mark.parametrize(
    ("code", "digits", "words"),
    [
        ("１２３４５６", 6, ("全角", "半角", "full-width", "half-width")),
        ("12345６", 6, ("全角", "full-width")),
        ("12345", 6, ("6桁", "exactly 6 half-width digits")),
        ("1234567", 6, ("6桁", "exactly 6")),
        ("12a456", 6, ("半角数字", "half-width digits")),
        ("12 456", 6, ("半角数字",)),
        ("١٢٣٤٥٦", 6, ("半角数字",)),  # Arabic-Indic digits pass str.isdigit() but are not accepted
        ("1234567", 8, ("8桁", "exactly 8")),
        ("", 6, ("6桁",)),
        (None, 6, ("6",)),
    ],
)
def test_bad_codes_name_the_field_and_the_rule(code: object, digits: int, words: tuple[str, ...]) -> None:
    """A wrong code format is INVALID_ARGUMENT on field "code", with the rule in Japanese and English."""
    with pytest.raises(InvalidCodeFormat) as caught:
        validate_code(code, digits)
    err = caught.value
    assert err.kind is ErrorKind.INVALID_ARGUMENT
    assert err.reason == "INVALID_CODE_FORMAT"
    assert set(err.fields) == {"code"}
    for word in words:
        assert word in err.fields["code"]


@pytest.mark.parametrize("password", ["1234", "00000000", "246813"])
def test_usage_start_passwords_of_4_to_8_digits_pass(password: str) -> None:
    """4-8 half-width digits are a valid usage-start password."""
    assert validate_usage_start_password(password) == password


@pytest.mark.parametrize(
    ("password", "word"),
    [
        ("123", "4桁～8桁"),
        ("123456789", "4-8 half-width digits"),
        ("12ab", "半角数字"),
        ("abcd", "half-width"),
        ("１２３４", "全角数字は使えません"),
        ("１２３４", "full-width digits are not accepted"),
        ("", "4桁～8桁"),
    ],
)
def test_bad_usage_start_passwords_name_the_field(password: str, word: str) -> None:
    """3 or 9 digits, letters or full-width digits are INVALID_ARGUMENT on field "usage_start_password"."""
    with pytest.raises(InvalidUsageStartPassword) as caught:
        validate_usage_start_password(password)
    err = caught.value
    assert err.kind is ErrorKind.INVALID_ARGUMENT
    assert err.reason == "INVALID_USAGE_START_PASSWORD"
    assert list(err.fields) == ["usage_start_password"]
    assert word in err.fields["usage_start_password"]
    if password:
        assert password not in str(err)  # the refused value is never echoed back


@pytest.mark.parametrize("email", ["taro@example.jp", "a.b+c@mail.example.co.jp"])
def test_plain_email_addresses_pass(email: str) -> None:
    """Ordinary addresses, sub-addressing included, are accepted."""
    assert validate_email(email) == email


@pytest.mark.parametrize(
    "email", ["", "taro", "taro@", "@example.jp", "taro@example", "a b@example.jp", "太郎@例え.jp"]
)
def test_bad_email_addresses_are_refused(email: str) -> None:
    """Addresses without a dotted domain, with spaces or non-ASCII are refused on field "email"."""
    with pytest.raises(InvalidTokenField) as caught:
        validate_email(email)
    assert "email" in caught.value.fields


def test_generated_ids_parse_back_and_differ() -> None:
    """Generated service and user IDs are canonical for their parser, and 100 draws never repeat."""
    service_ids = {new_service_id() for _ in range(100)}
    assert len(service_ids) == 100
    for sid in service_ids:
        assert len(sid) == SERVICE_ID_LENGTH
        assert parse_service_id(sid) == sid
    uid = new_app_user_id()
    assert parse_app_user_id(uid) == uid


@pytest.mark.parametrize("typed", ["ABCD", "ABCDEFGHJKM", "ABCDEFGHJ!", "ＡＢＣＤＥＦＧＨＪＫ", "ABCDEFGHJU"])
def test_malformed_service_ids_are_refused(typed: str) -> None:
    """Wrong length, punctuation, full-width letters or letters outside the alphabet are refused on service_id."""
    with pytest.raises(InvalidTokenField) as caught:
        parse_service_id(typed)
    assert "service_id" in caught.value.fields
