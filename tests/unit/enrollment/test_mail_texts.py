"""The texts customers read: every mail and the notice in Japanese with English beside it, times in Japan time
(never UTC), the bank's contact line at the foot, and the procedure's wording where it has one."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from services.enrollment_service.adapters.mail import build_message
from services.enrollment_service.domain.messages import (
    CARRIER_FILTER_NOTE,
    DEFAULT_CONTACT_TEXT,
    Mail,
    completion_mail,
    japan_time,
    notice_text,
    password_changed_mail,
    renewal_reminder_mail,
    revocation_mail,
    token_mail,
)
from services.enrollment_service.domain.records import AccountType, Application
from services.enrollment_service.main import EnrollmentSettings

AT = datetime(2026, 12, 31, 8, 0, tzinfo=UTC).timestamp()
"""2026-12-31 08:00 UTC, which is 17:00 the same day in Japan."""
AT_JST = "2026年12月31日 17:00 (JST) / 2026-12-31 17:00 JST"
CONTACT = "お問い合わせ: 都留信用組合 事務部 0555-24-2600 / Contact: Tsuru Shinkumi, 0555-24-2600"
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
ENGLISH_WORDS = re.compile(r"\b(the|your|you|and)\b")

MailBuilder = Callable[..., Mail]
BUILDERS: dict[str, MailBuilder] = {
    "step-7": lambda **kw: token_mail(
        to="phone@example.jp", service_id="SVC1234567", user_id="USR45678", app_url="https://app.example/", **kw
    ),
    "completion": lambda **kw: completion_mail(
        to="taro@example.co.jp", user_name="山田 太郎", login_id="yamada01", **kw
    ),
    "certificate revoked": lambda **kw: revocation_mail(
        to="taro@example.co.jp", what="certificate", identifier="0a1b2c", **kw
    ),
    "token revoked": lambda **kw: revocation_mail(to="taro@example.co.jp", what="token", identifier="tok-1", **kw),
}
# The lifecycle's mails are about a moment, so they always show one.
TIMED_BUILDERS: dict[str, MailBuilder] = {
    "password changed": lambda at, **kw: password_changed_mail(
        to="taro@example.co.jp", user_name="山田 太郎", kind="login", at=at, **kw
    ),
    "renewal reminder": lambda at, **kw: renewal_reminder_mail(
        to="taro@example.co.jp", user_name="山田 太郎", expires_at=at, days_left=30, **kw
    ),
}


def _japanese_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if JAPANESE.search(line)]


def _english_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if re.search(r"[A-Za-z]", line) and not JAPANESE.search(line)]


def test_japan_time_shows_the_japanese_and_the_english_form_in_jst() -> None:
    """A POSIX time reads as Japan time (UTC+9) in both forms, rolling over to the next day and year in Japan."""
    assert japan_time(AT) == AT_JST
    new_year = datetime(2026, 12, 31, 15, 30, tzinfo=UTC).timestamp()
    assert japan_time(new_year) == "2027年1月1日 00:30 (JST) / 2027-01-01 00:30 JST"


@pytest.mark.parametrize("name", [*BUILDERS, *TIMED_BUILDERS])
def test_every_mail_has_japanese_english_jst_and_the_contact_line(name: str) -> None:
    """Each mail builder writes a Japanese subject and body with English beside them, shows its time in Japan
    time (never UTC), and ends with the bank's contact line as configured."""
    mail = {**BUILDERS, **TIMED_BUILDERS}[name](at=AT, contact=CONTACT)
    assert JAPANESE.search(mail.subject)
    assert " / " in mail.subject
    assert re.search(r"[A-Za-z]{3,}", mail.subject.split(" / ", 1)[1])
    assert _japanese_lines(mail.body), "no Japanese line"
    assert any(ENGLISH_WORDS.search(line) for line in _english_lines(mail.body)), "no English line"
    assert AT_JST in mail.body
    assert "UTC" not in mail.body
    assert mail.body.rstrip().splitlines()[-1] == CONTACT


@pytest.mark.parametrize("name", BUILDERS)
def test_every_mail_keeps_working_for_old_callers_with_the_default_contact(name: str) -> None:
    """Without `at` and `contact`, a mail still builds: no time line, and the default contact line at the foot."""
    mail = BUILDERS[name]()
    assert mail.body.rstrip().splitlines()[-1] == DEFAULT_CONTACT_TEXT
    assert "JST" not in mail.body
    assert "お問い合わせ" in DEFAULT_CONTACT_TEXT
    assert "Contact" in DEFAULT_CONTACT_TEXT


def test_step7_mail_says_the_same_in_japanese_and_english() -> None:
    """The step-7 mail's Japanese and English parts give the same instructions in the procedure's order
    (⑲-㉔): install the app, enter the service ID and user ID, the usage-start password, agree, Send, Register,
    then type the code the app shows within its 60 seconds and Confirm; the two ID lines appear once each."""
    body = token_mail(to="phone@example.jp", service_id="SVC1234567", user_id="USR45678", app_url="https://a/").body
    japanese, english = "\n".join(_japanese_lines(body)), "\n".join(_english_lines(body))
    pairs = [
        ("インストール", "install"),
        ("サービスID", "service ID"),
        ("ユーザID", "user ID"),
        ("設定表の利用開始パスワード", "usage-start password from your settings sheet"),
        ("「上記の内容に同意する」", '"I agree to the above"'),
        ("「送信」", '"Send"'),
        ("「登録」", '"Register"'),
        ("有効時間は60秒", "valid for 60 seconds"),
        ("「認証確認」", '"Confirm"'),
        ("設定終了", "setup is finished"),
    ]
    for ja, en in pairs:
        assert ja in japanese, ja
        assert en in " ".join(english.split()), en
    order_ja = [japanese.index(ja) for ja, _ in pairs[3:]]
    assert order_ja == sorted(order_ja), "the Japanese steps are out of the procedure's order"
    flat_en = " ".join(english.split())
    order_en = [flat_en.index(en) for _, en in pairs[3:]]
    assert order_en == sorted(order_en), "the English steps are out of the procedure's order"
    assert body.splitlines().count("Service ID: SVC1234567") == 1
    assert body.splitlines().count("User ID: USR45678") == 1


def test_completion_mail_asks_to_keep_the_three_passwords_secret_in_both_languages() -> None:
    """The completion mail reminds, in Japanese and in English, that the login ID, the login password and the
    confirmation password are needed from now on and must be kept from others (the procedure's last note)."""
    body = completion_mail(to="taro@example.co.jp", user_name="山田 太郎", login_id="yamada01").body
    japanese, english = "\n".join(_japanese_lines(body)), " ".join(" ".join(_english_lines(body)).split())
    assert (
        "以後ログインの際、設定表のログインID、ログインパスワード、確認用パスワードを使用する事があります" in japanese
    )
    assert "第三者に知られないように保管して下さい" in japanese
    assert "the login ID, the login password and the confirmation password" in english
    assert "keep them where no one else can learn them" in english
    assert "yamada01" in body
    assert "初期設定が完了しました" in body


def test_carrier_filter_note_is_the_procedures_warning_in_both_languages() -> None:
    """The step-7 note says, in the procedure's words and in English, that a phone filtering mail must allow
    mail from the bank's domain or the mail may not arrive, and that the carrier tells how."""
    japanese, _, english = CARRIER_FILTER_NOTE.partition(" / ")
    assert "携帯電話のメール受信を制限している場合" in japanese
    assert "ドメイン" in japanese
    assert "携帯電話会社へお問合せ下さい" in japanese
    assert "allow mail from the bank's domain" in english
    assert "carrier" in english
    assert not JAPANESE.search(english)


def test_notice_text_shows_its_expiry_in_jst_and_the_contact_line() -> None:
    """The notice built by the domain shows its validity in Japan time and ends with the contact line."""
    application = Application(
        application_id="app-1",
        company_name="株式会社サンプル",
        branch_code="001",
        account_type=AccountType.ORDINARY,
        account_number="1234567",
        temporary_login_hash="x",
        temporary_confirmation_hash="y",
        created_at=AT - 30 * 86400,
        expires_at=AT,
    )
    text = notice_text(application, "TmpLogin123", "TmpConf456", contact=CONTACT)
    assert f"有効期限 / Valid until:               {AT_JST}" in text.splitlines()
    assert "UTC" not in text
    assert text.splitlines()[-1] == CONTACT


def test_the_mail_header_date_is_in_japan_time() -> None:
    """The rendered message's Date header carries Japan's +0900 offset, not UTC's +0000."""
    message = build_message(BUILDERS["completion"](), sender="no-reply@bank.example", now=AT)
    assert message["Date"] == "Thu, 31 Dec 2026 17:00:00 +0900"


@pytest.mark.parametrize(
    ("environ", "expected"), [({}, DEFAULT_CONTACT_TEXT), ({"KAGI_CONTACT_TEXT": CONTACT}, CONTACT)]
)
def test_the_contact_line_is_configured_by_kagi_contact_text(environ: dict[str, str], expected: str) -> None:
    """The enrollment service's policy takes its contact line from KAGI_CONTACT_TEXT, else the default."""
    settings = EnrollmentSettings.from_env(
        {
            "KAGI_INSECURE_PLAINTEXT": "1",
            "KAGI_PASSWORD_PEPPER": "a-pepper-of-at-least-thirty-two-bytes",
            "KAGI_ENROLLMENT_SIGNING_KEY_FILE": "/nonexistent/keys.json",
            "KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE": "a passphrase",
            **environ,
        }
    )
    assert settings.policy.contact_text == expected


@pytest.mark.parametrize("to", ["phone@example.jp", "Taro Yamada <taro@example.co.jp>"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_sent_mail_reads_back_as_written(name: str, to: str) -> None:
    """A rendered mail, sent as bytes and parsed again, has the mail's recipient, subject and body (line for line)
    and the message headers, whether its headers were stored pre-encoded (a plain address) or through the email
    package (any other)."""
    mail = BUILDERS[name](at=AT)
    mail = Mail(to=to, subject=mail.subject, body=mail.body)
    message = build_message(mail, sender="no-reply@bank.example", now=AT)
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["To"] == to
    assert parsed["From"] == "no-reply@bank.example"
    assert parsed["Subject"] == mail.subject
    assert parsed["Date"] == "Thu, 31 Dec 2026 17:00:00 +0900"
    assert parsed["Message-ID"].endswith("@bank.example>")
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert str(parsed.get_content()).splitlines() == mail.body.splitlines()
    assert all(len(line) <= 78 for line in message.as_string().splitlines())
