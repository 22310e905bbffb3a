"""The texts people read: the application-completion notice and the mails, in Japanese with English beside."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.enrollment_service.domain.records import AccountType, Application

ACCOUNT_TYPE_JA = {AccountType.ORDINARY: "普通", AccountType.CURRENT: "当座"}


@dataclass(frozen=True)
class Mail:
    """Mail is one outgoing message: recipient, subject and plain-text body."""

    to: str
    subject: str
    body: str = field(repr=False)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def notice_text(application: Application, temporary_login_password: str, temporary_confirmation_password: str) -> str:
    """notice_text is the application-completion notice (申込受付完了通知書) handed to the customer."""
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
            f"有効期限 / Valid until:               {_when(application.expires_at)}",
            "",
            "初期設定の⑦で、代表口座と上記の仮パスワードを入力してください。",
            "Enter the representative account and these temporary passwords in step 7 of the initial setup.",
            "この通知書は第三者に知られないように保管してください。 / Keep this notice away from others.",
        ]
    )


def token_mail(*, to: str, service_id: str, user_id: str, app_url: str) -> Mail:
    """token_mail is the step-7 mail: the service ID and user ID for the app, and where to get the app.

    It never contains the usage-start password: the user chose it and types it into the app.
    """
    body = "\n".join(
        [
            "ワンタイムパスワードアプリの利用登録のご案内",
            "",
            "アプリを起動し、以下のサービスIDとユーザIDを入力してください。",
            "続けて設定表の利用開始パスワードを入力し、「上記の内容に同意する」にチェックして「送信」を押してください。",
            "",
            f"Service ID: {service_id}",
            f"User ID: {user_id}",
            "",
            f"アプリのダウンロード / Get the app: {app_url}",
            "",
            "Open the one-time-password app and enter the service ID and user ID above, then the usage-start",
            'password from your settings sheet; tick "I agree" and press Send. The app then shows a code that is',
            "valid for 60 seconds: type it on the confirmation screen to finish the setup.",
            "",
            "このメールに心当たりがない場合は、お取引店へご連絡ください。",
            "If you did not ask for this, contact your branch.",
        ]
    )
    return Mail(to=to, subject="ワンタイムパスワード利用登録 / One-time password registration", body=body)


def completion_mail(*, to: str, user_name: str, login_id: str) -> Mail:
    """completion_mail tells the user's registered address that the initial setup is complete."""
    body = "\n".join(
        [
            f"{user_name} 様",
            "",
            "インターネットバンキングの初期設定が完了しました。",
            f"ログインID: {login_id}",
            "以後のログインでは、電子証明書とログインパスワード、ワンタイムパスワードを使用します。",
            "",
            f"Dear {user_name},",
            "the initial setup of your internet banking is complete (login ID above). From now on you log in",
            "with your client certificate and login password, and confirm with a one-time password.",
            "If you did not do this, contact your branch at once.",
        ]
    )
    return Mail(to=to, subject="初期設定完了のお知らせ / Initial setup complete", body=body)


def revocation_mail(*, to: str, what: str, identifier: str) -> Mail:
    """revocation_mail tells the user that a certificate or token of theirs was revoked."""
    what_ja = {"certificate": "電子証明書", "token": "ワンタイムパスワード"}.get(what, what)
    body = "\n".join(
        [
            f"お客様の{what_ja}({identifier})を失効しました。",
            "お心当たりがない場合は、お取引店へご連絡ください。",
            "",
            f"Your {what} ({identifier}) has been revoked. If you did not ask for this, contact your branch.",
        ]
    )
    return Mail(to=to, subject=f"{what_ja}失効のお知らせ / Your {what} was revoked", body=body)
