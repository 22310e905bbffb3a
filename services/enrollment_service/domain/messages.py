"""The texts people read: the application-completion notice and the mails, in Japanese with English beside."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from services.enrollment_service.domain.records import AccountType, Application

ACCOUNT_TYPE_JA = {AccountType.ORDINARY: "普通", AccountType.CURRENT: "当座"}

JST = ZoneInfo("Asia/Tokyo")
"""Japan time: every time a customer reads (notice, mails) is shown in it."""

DEFAULT_CONTACT_TEXT = "お問い合わせ: お取引店までご連絡ください / Contact: your branch"
"""The bank's contact line at the foot of every mail and notice (KAGI_CONTACT_TEXT)."""

CARRIER_FILTER_NOTE = (
    "※携帯電話のメール受信を制限している場合には、当組合のドメインからのメールを受信できるよう解除等を行わないと、"
    "メールが届かない場合があります。解除方法は、携帯電話会社へお問合せ下さい。"
    " / If your mobile phone restricts the mail it receives, allow mail from the bank's domain, or the mail"
    " may not arrive. Ask your mobile carrier how to do so."
)
"""The procedure's warning at step ⑱ (step 7): a phone filtering mail may never get the
mail with the service ID and user ID."""


@dataclass(frozen=True)
class Mail:
    """One outgoing message: recipient, subject and plain-text body."""

    to: str
    subject: str
    body: str = field(repr=False)


def japan_time(timestamp: float) -> str:
    """Return a POSIX time in Japan time, in Japanese and in English beside it, to the minute:
    "2026年12月31日 17:00 (JST) / 2026-12-31 17:00 JST"."""
    local = datetime.fromtimestamp(timestamp, JST)
    return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M} (JST) / {local:%Y-%m-%d %H:%M} JST"


def _time_line(label: str, timestamp: float | None) -> list[str]:
    return [] if timestamp is None else [f"{label}: {japan_time(timestamp)}", ""]


def _footer(contact: str) -> list[str]:
    return ["", contact]


def notice_text(
    application: Application,
    temporary_login_password: str,
    temporary_confirmation_password: str,
    *,
    contact: str = DEFAULT_CONTACT_TEXT,
) -> str:
    """Return the application-completion notice (申込受付完了通知書) handed to the customer."""
    account_type = ACCOUNT_TYPE_JA[application.account_type]
    return "\n".join(
        [
            "申込受付完了通知書 / Application-completion notice",
            "",
            f"会社名 / Company:                     {application.company_name}",
            f"代表口座 / Representative account:    {application.branch_code}-{account_type}"
            f"({application.account_type.value.lower()})-{application.account_number}",
            f"仮ログインパスワード / Temporary login password:               {temporary_login_password}",
            f"仮確認用パスワード / Temporary confirmation password:          {temporary_confirmation_password}",
            f"有効期限 / Valid until:               {japan_time(application.expires_at)}",
            "",
            "初期設定の⑦で、代表口座と上記の仮パスワードを入力してください。",
            "Enter the representative account and these temporary passwords in step 7 of the initial setup.",
            "この通知書は第三者に知られないように保管してください。 / Keep this notice away from others.",
            "",
            contact,
        ]
    )


def token_mail(
    *,
    to: str,
    service_id: str,
    user_id: str,
    app_url: str,
    at: float | None = None,
    contact: str = DEFAULT_CONTACT_TEXT,
) -> Mail:
    """Return the step-7 mail (procedure ⑲-㉔): the service ID and user ID for the app, where to get the
    app, and what to do with it, the same in Japanese and in English; `at` (when the token was requested) is
    shown in Japan time.

    It never contains the usage-start password: the user chose it and types it into the app.
    """
    body = "\n".join(
        [
            "ワンタイムパスワードアプリの利用登録のご案内",
            "",
            *_time_line("受付日時 / Requested", at),
            f"Service ID: {service_id}",
            f"User ID: {user_id}",
            "",
            f"アプリのダウンロード / Get the app: {app_url}",
            "",
            "1. 上記のURLからワンタイムパスワードアプリをダウンロードし、インストールしてください。",
            "2. インストールしたアプリを起動し、このメールに記載されたサービスID(Service ID)、ユーザID(User ID)を"
            "入力してください。",
            "3. 設定表の利用開始パスワードを入力し、「上記の内容に同意する」のチェックボックスにチェックして"
            "「送信」を押してください。",
            "4. 「登録」を押してください。アプリにワンタイムパスワードと有効時間(残り秒数)が表示されます。",
            "5. パソコンのワンタイムパスワード認証確認画面に、アプリに表示されているワンタイムパスワードを"
            "入力してください。",
            "   ※アプリに表示されるパスワードの有効時間は60秒なので時間内で入力して下さい。"
            "経過後はアプリに違うパスワードが表示されるので、再度パスワードを入力して下さい。",
            "6. 「認証確認」を押してください。トップページが表示されれば設定終了です。",
            "",
            "1. Download the one-time-password app from the address above and install it.",
            "2. Start the app and enter the service ID and user ID given in this mail.",
            "3. Enter the usage-start password from your settings sheet,",
            '   tick "I agree to the above" and press "Send".',
            '4. Press "Register". The app shows a one-time password and its remaining seconds.',
            "5. On the PC's one-time-password confirmation screen, type the password the app shows.",
            "   The password is valid for 60 seconds: type it within that time. After that the app shows a",
            "   different password: type that one instead.",
            '6. Press "Confirm". The setup is finished when the top page appears.',
            "",
            "このメールに心当たりがない場合は、お取引店へご連絡ください。",
            "If you did not ask for this, contact your branch.",
            *_footer(contact),
        ]
    )
    return Mail(to=to, subject="ワンタイムパスワード利用登録 / One-time password registration", body=body)


def completion_mail(
    *, to: str, user_name: str, login_id: str, at: float | None = None, contact: str = DEFAULT_CONTACT_TEXT
) -> Mail:
    """Tell the user's registered address that the initial setup is complete (`at`, shown in
    Japan time), and that the login ID, login password and confirmation password are needed from now on and
    must be kept secret (the procedure's last note)."""
    body = "\n".join(
        [
            f"{user_name} 様",
            "",
            "インターネットバンキングの初期設定が完了しました。",
            "",
            *_time_line("完了日時 / Completed", at),
            f"ログインID / Login ID: {login_id}",
            "",
            "以後は、電子証明書とログインパスワードでログインし、ワンタイムパスワードで確認します。",
            "※以後ログインの際、設定表のログインID、ログインパスワード、確認用パスワードを使用する事があります。"
            "第三者に知られないように保管して下さい。",
            "お心当たりがない場合は、至急お取引店へご連絡ください。",
            "",
            f"Dear {user_name},",
            "the initial setup of your internet banking is complete. From now on you log in with your client",
            "certificate and login password, and confirm with a one-time password.",
            "When you log in from now on, you may need the login ID, the login password and the confirmation",
            "password of your settings sheet: keep them where no one else can learn them.",
            "If you did not do this, contact your branch at once.",
            *_footer(contact),
        ]
    )
    return Mail(to=to, subject="初期設定完了のお知らせ / Initial setup complete", body=body)


def revocation_mail(
    *, to: str, what: str, identifier: str, at: float | None = None, contact: str = DEFAULT_CONTACT_TEXT
) -> Mail:
    """Tell the user that a certificate or token of theirs was revoked (`at`, in Japan time)."""
    what_ja = {"certificate": "電子証明書", "token": "ワンタイムパスワード"}.get(what, what)
    body = "\n".join(
        [
            *_time_line("失効日時 / Revoked", at),
            f"お客様の{what_ja}({identifier})を失効しました。",
            "お心当たりがない場合は、お取引店へご連絡ください。",
            "",
            f"Your {what} ({identifier}) has been revoked. If you did not ask for this, contact your branch.",
            *_footer(contact),
        ]
    )
    return Mail(to=to, subject=f"{what_ja}失効のお知らせ / Your {what} was revoked", body=body)


PASSWORD_NAMES = {
    "login": ("ログインパスワード", "login password"),
    "confirmation": ("確認用パスワード", "confirmation password"),
}


def password_changed_mail(
    *, to: str, user_name: str, kind: str, at: float, contact: str = DEFAULT_CONTACT_TEXT
) -> Mail:
    """Tell the user that a password (`kind`: login or confirmation) was changed or reset
    at `at` (Japan time), and that every open session was logged out."""
    ja, en = PASSWORD_NAMES[kind]
    body = "\n".join(
        [
            f"{user_name} 様",
            "",
            f"{ja}が変更されました。ログイン中の画面はすべてログアウトされています。",
            *_time_line("変更日時 / Changed", at),
            "お心当たりがない場合は、至急お取引店へご連絡ください。",
            "",
            f"Dear {user_name},",
            f"your {en} was changed at the time above; every open session was logged out.",
            "If you did not do this, contact your branch at once.",
            *_footer(contact),
        ]
    )
    return Mail(to=to, subject=f"{ja}変更のお知らせ / Your {en} was changed", body=body)


def renewal_reminder_mail(
    *, to: str, user_name: str, expires_at: float, days_left: int, contact: str = DEFAULT_CONTACT_TEXT
) -> Mail:
    """Remind the user that the client certificate expires at `expires_at` (Japan time),
    within `days_left` days, and how to renew it."""
    body = "\n".join(
        [
            f"{user_name} 様",
            "",
            f"お客様の電子証明書の有効期限が近づいています（残り{days_left}日以内）。",
            *_time_line("有効期限 / Expires", expires_at),
            "ログイン後の「電子証明書更新」から、有効期限までに更新してください。",
            "",
            f"Dear {user_name},",
            f"your client certificate expires within {days_left} days, at the time above.",
            'Log in and choose "renew certificate" before it expires.',
            *_footer(contact),
        ]
    )
    return Mail(to=to, subject="電子証明書の有効期限のお知らせ / Your certificate expires soon", body=body)
