"""The bank's input rules for the notice, the profile (step 2), the token request (step 7) and applications.

Each validator checks every field and reports every broken rule at once, per field, so a form can show them
all; messages are in Japanese with English beside them, in the bank's own wording.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from kagi.errors import InvalidArgument

_ALNUM = re.compile(r"[A-Za-z0-9]+")
_DIGITS = re.compile(r"[0-9]+")
# A pragmatic address check: one @, a dot in the domain, no spaces; the mail server has the final word.
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")

MSG_REQUIRED = "入力してください / required"
MSG_FULL_WIDTH = (
    "全角文字は使用できません。半角で入力してください / full-width characters are not accepted: use half-width"
)
MSG_ALNUM_MIXED = (
    "半角英数混在6桁～12桁で入力してください / 6-12 half-width letters and digits, with at least one of each"
)
MSG_DIGITS_4_8 = "半角数字4桁～8桁で入力してください / 4-8 half-width digits"
MSG_MISMATCH = "確認用の入力と一致しません / does not match its confirmation"
MSG_EMAIL = "メールアドレスの形式が正しくありません / not a valid e-mail address"
MSG_USER_NAME = "1～30文字で入力してください / 1-30 characters"
MSG_DUPLICATE = (
    "ログインID・ログインパスワード・確認用パスワードは重複設定できません"
    " / login ID, login password and confirmation password must all differ"
)
MSG_TAKEN = "このログインIDは既に使われています / this login ID is already taken"
MSG_BRANCH = "支店番号は半角数字3桁です / branch code: 3 half-width digits"
MSG_ACCOUNT = "口座番号は半角数字7桁です / account number: 7 half-width digits"
MSG_COMPANY = "1～100文字で入力してください / 1-100 characters"
MSG_TEMP_PASSWORD = "通知書の仮パスワードを入力してください / enter the temporary password from the notice"

USER_NAME_MAX = 30
EMAIL_MAX = 254


class Violations:
    """Collects the first broken rule per field and raises them all together."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, name: str, message: str) -> None:
        """Record `message` for `name` unless that field already has one."""
        self.fields.setdefault(name, message)

    def raise_if_any(self, summary: str, *, reason: str = "INVALID_INPUT") -> None:
        """Raise InvalidArgument carrying every violation, when there is at least one."""
        if self.fields:
            raise InvalidArgument(summary, reason=reason, fields=self.fields)


def has_full_width(value: str) -> bool:
    """Tell whether a value holds a full-width or wide character (e.g. "１" or "Ａ" or "あ")."""
    return any(unicodedata.east_asian_width(ch) in ("F", "W") for ch in value)


def check_alnum_mixed(violations: Violations, name: str, value: str) -> None:
    """Apply the bank's rule: 6-12 half-width letters and digit, at least one of each."""
    if not value:
        violations.add(name, MSG_REQUIRED)
    elif has_full_width(value):
        violations.add(name, MSG_FULL_WIDTH)
    elif not (
        6 <= len(value) <= 12
        and _ALNUM.fullmatch(value)
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    ):
        violations.add(name, MSG_ALNUM_MIXED)


def check_digits_4_8(violations: Violations, name: str, value: str) -> None:
    """Apply the usage-start password rule: 4-8 half-width digits."""
    if not value:
        violations.add(name, MSG_REQUIRED)
    elif has_full_width(value):
        violations.add(name, MSG_FULL_WIDTH)
    elif not (4 <= len(value) <= 8 and _DIGITS.fullmatch(value)):
        violations.add(name, MSG_DIGITS_4_8)


def check_email(violations: Violations, name: str, value: str) -> None:
    """Check an e-mail address's form (half-width, one @, a dotted domain, at most 254)."""
    if not value:
        violations.add(name, MSG_REQUIRED)
    elif has_full_width(value):
        violations.add(name, MSG_FULL_WIDTH)
    elif len(value) > EMAIL_MAX or not _EMAIL.fullmatch(value):
        violations.add(name, MSG_EMAIL)


def check_pair(violations: Violations, name: str, value: str, confirmation: str) -> None:
    """Require an entry and its confirmation to match (reported on the confirmation field)."""
    if value and value != confirmation:
        violations.add(f"{name}_confirmation", MSG_MISMATCH)


@dataclass(frozen=True)
class Profile:
    """A validated step-2 entry. Its passwords are hashed before anything stores it."""

    user_name: str
    email: str
    login_id: str
    login_password: str = field(repr=False)
    confirmation_password: str = field(repr=False)


def validate_profile(
    *,
    user_name: str,
    email: str,
    email_confirmation: str,
    login_id: str,
    login_id_confirmation: str,
    login_password: str,
    login_password_confirmation: str,
    confirmation_password: str,
    confirmation_password_confirmation: str,
) -> Profile:
    """Apply every step-2 rule and report every violation at once."""
    v = Violations()
    name = user_name.strip()
    if not name:
        v.add("user_name", MSG_REQUIRED)
    elif len(name) > USER_NAME_MAX or any(unicodedata.category(c).startswith("C") for c in name):
        v.add("user_name", MSG_USER_NAME)
    check_email(v, "email", email)
    check_pair(v, "email", email, email_confirmation)
    for field_name, value, confirmation in (
        ("login_id", login_id, login_id_confirmation),
        ("login_password", login_password, login_password_confirmation),
        ("confirmation_password", confirmation_password, confirmation_password_confirmation),
    ):
        check_alnum_mixed(v, field_name, value)
        check_pair(v, field_name, value, confirmation)
    if login_password and login_password == login_id:
        v.add("login_password", MSG_DUPLICATE)
    if confirmation_password and confirmation_password in (login_id, login_password):
        v.add("confirmation_password", MSG_DUPLICATE)
    v.raise_if_any("入力内容に誤りがあります / the profile breaks the rules below", reason="INVALID_PROFILE")
    return Profile(name, email, login_id, login_password, confirmation_password)


@dataclass(frozen=True)
class TokenRequest:
    """A validated step-7 entry."""

    mobile_email: str
    usage_start_password: str = field(repr=False)


def validate_token_request(
    *,
    mobile_email: str,
    mobile_email_confirmation: str,
    usage_start_password: str,
    usage_start_password_confirmation: str,
) -> TokenRequest:
    """Apply the step-7 rules and report every violation at once."""
    v = Violations()
    check_email(v, "mobile_email", mobile_email)
    check_pair(v, "mobile_email", mobile_email, mobile_email_confirmation)
    check_digits_4_8(v, "usage_start_password", usage_start_password)
    check_pair(v, "usage_start_password", usage_start_password, usage_start_password_confirmation)
    v.raise_if_any(
        "入力内容に誤りがあります / the token request breaks the rules below", reason="INVALID_TOKEN_REQUEST"
    )
    return TokenRequest(mobile_email, usage_start_password)


def check_account(v: Violations, branch_code: str, account_number: str) -> None:
    """Check a representative account: branch code 3 digits, account number 7 digits."""
    if has_full_width(branch_code):
        v.add("branch_code", MSG_FULL_WIDTH)
    elif not re.fullmatch(r"[0-9]{3}", branch_code):
        v.add("branch_code", MSG_BRANCH)
    if has_full_width(account_number):
        v.add("account_number", MSG_FULL_WIDTH)
    elif not re.fullmatch(r"[0-9]{7}", account_number):
        v.add("account_number", MSG_ACCOUNT)


def validate_application(*, company_name: str, branch_code: str, account_number: str) -> str:
    """Check an application's fields; return the company name, trimmed."""
    v = Violations()
    company = company_name.strip()
    if not company:
        v.add("company_name", MSG_REQUIRED)
    elif len(company) > 100 or any(unicodedata.category(c).startswith("C") for c in company):
        v.add("company_name", MSG_COMPANY)
    check_account(v, branch_code, account_number)
    v.raise_if_any("申込内容に誤りがあります / the application breaks the rules below", reason="INVALID_APPLICATION")
    return company


def validate_notice_entry(
    *, branch_code: str, account_number: str, temporary_login_password: str, temporary_confirmation_password: str
) -> None:
    """Check step 1's form (not the passwords' correctness, which is counted)."""
    v = Violations()
    check_account(v, branch_code, account_number)
    for name, value in (
        ("temporary_login_password", temporary_login_password),
        ("temporary_confirmation_password", temporary_confirmation_password),
    ):
        if not value or len(value) > 64:
            v.add(name, MSG_TEMP_PASSWORD)
    v.raise_if_any("入力内容に誤りがあります / the notice entry breaks the rules below", reason="INVALID_NOTICE_ENTRY")


def validate_new_password(*, login_id: str, new_password: str, new_password_confirmation: str) -> str:
    """Apply the setup's rules to a changed or reset password (6-12 half-width letters
    and digits mixed, typed twice, not the login ID); that it differs from the other password is checked
    against its hash by the caller."""
    v = Violations()
    check_alnum_mixed(v, "new_password", new_password)
    check_pair(v, "new_password", new_password, new_password_confirmation)
    if new_password and new_password == login_id:
        v.add("new_password", MSG_DUPLICATE)
    v.raise_if_any("入力内容に誤りがあります / the new password breaks the rules below", reason="INVALID_PASSWORD")
    return new_password
