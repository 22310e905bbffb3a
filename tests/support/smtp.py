"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for the mail tests."""

from __future__ import annotations

import email
import email.policy
import ssl
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.ports import free_port


class Inbox:
    """An aiosmtpd handler that parses and keeps every delivered message."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"


class SmtpServer:
    """Runs aiosmtpd on 127.0.0.1; with `tls` it offers STARTTLS and requires login over it."""

    def __init__(
        self, *, port: int | None = None, tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None
    ):
        self.inbox = Inbox()
        self.port = port or free_port()
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs.update(tls_context=tls, require_starttls=True)
        if login is not None:
            user, password = login

            def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = (
                    isinstance(data, LoginPassword)
                    and data.login.decode() == user
                    and data.password.decode() == password
                )
                return AuthResult(success=ok)

            kwargs.update(authenticator=authenticator, auth_required=True)
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> SmtpServer:
        """Begin listening."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Close the server."""
        self._controller.stop()

    def environment(self) -> dict[str, str]:
        """Return the KAGI_* variables that send the services' mail here (plain SMTP on loopback)."""
        return {
            "KAGI_SMTP_URL": f"smtp://127.0.0.1:{self.port}?starttls=false",
            "KAGI_MAIL_FROM": "no-reply@bank.example",
        }
