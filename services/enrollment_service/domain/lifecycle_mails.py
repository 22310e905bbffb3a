"""The mails of the credentials' lifecycle: a password changed or reset, a certificate about to expire. Japanese
first, English beside; times in Japan time."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from services.enrollment_service.domain.messages import Mail
from services.enrollment_service.domain.users import PasswordKind

JST = ZoneInfo("Asia/Tokyo")
PASSWORD_JA = {PasswordKind.LOGIN: "ログインパスワード", PasswordKind.CONFIRMATION: "確認用パスワード"}
PASSWORD_EN = {PasswordKind.LOGIN: "login password", PasswordKind.CONFIRMATION: "confirmation password"}


def jst(timestamp: float) -> str:
    """Return a moment as the customer reads it: Japan time, in Japanese and in English."""
    moment = datetime.fromtimestamp(timestamp, JST)
    return f"{moment:%Y年%m月%d日 %H:%M} (JST) / {moment:%Y-%m-%d %H:%M} JST"


def password_changed_mail(*, to: str, user_name: str, kind: PasswordKind, at: float) -> Mail:
    """Tell the user that a password was changed or reset (and that every session ended)."""
    body = "\n".join(
        [
            f"{user_name} 様",
            "",
            f"{jst(at)} に{PASSWORD_JA[kind]}が変更されました。ログイン中の画面はすべてログアウトされています。",
            "お心当たりがない場合は、至急お取引店へご連絡ください。",
            "",
            f"Dear {user_name},",
            f"your {PASSWORD_EN[kind]} was changed at {jst(at).split(' / ')[1]}; every open session was logged out.",
            "If you did not do this, contact your branch at once.",
        ]
    )
    return Mail(to=to, subject=f"{PASSWORD_JA[kind]}変更のお知らせ / Your {PASSWORD_EN[kind]} was changed", body=body)


def renewal_reminder_mail(*, to: str, user_name: str, expires_at: float, days_left: int) -> Mail:
    """Remind the user that the client certificate expires soon and how to renew it."""
    body = "\n".join(
        [
            f"{user_name} 様",
            "",
            f"お客様の電子証明書の有効期限は {jst(expires_at).split(' / ')[0]} です（残り{days_left}日以内）。",
            "ログイン後の「電子証明書更新」から、有効期限までに更新してください。",
            "",
            f"Dear {user_name},",
            f"your client certificate expires on {jst(expires_at).split(' / ')[1]} (within {days_left} days).",
            'Log in and choose "renew certificate" before it expires.',
        ]
    )
    return Mail(to=to, subject="電子証明書の有効期限のお知らせ / Your certificate expires soon", body=body)
