"""Mail transports: SMTP (STARTTLS or implicit TLS, with auth) when configured, otherwise a Maildir on disk."""

from __future__ import annotations

import asyncio
import binascii
import mailbox
import re
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from kagi.errors import InvalidArgument, Unavailable
from services.enrollment_service.domain.messages import JST, Mail

_SUBJECT_LINE = 76  # the longest line of an encoded subject, "Subject: " included (RFC 2047 keeps to 76)


class MailTransport(Protocol):
    """Delivers one message or raises Unavailable (the outbox retries it later)."""

    async def send(self, message: EmailMessage) -> None: ...


# A bare address of the kind kagi sends to and from (dot-atom local part, plain domain): safe to store unparsed.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


def build_message(mail: Mail, *, sender: str, now: float) -> EmailMessage:
    """Render a domain Mail as a UTF-8 RFC 5322 message, dated in Japan time (+0900).

    The headers are stored already encoded (`set_raw`) and the body already quoted-printable: the email
    package's header parsing and content manager cost a millisecond of the event loop's CPU per mail, several
    times the rest. Anything but plain addresses and a one-line subject takes the email package's own path,
    which checks and encodes them.
    """
    if not (
        _PLAIN_ADDRESS.fullmatch(sender)
        and _PLAIN_ADDRESS.fullmatch(mail.to)
        and mail.subject.isprintable()
        and mail.subject.strip() == mail.subject
    ):
        return _parsed_message(mail, sender=sender, now=now)
    message = EmailMessage()
    message.set_raw("From", sender)
    message.set_raw("To", mail.to)
    subject = mail.subject
    if not subject.isascii() or len(subject) > _SUBJECT_LINE:
        subject = Header(subject, "utf-8", maxlinelen=_SUBJECT_LINE, header_name="Subject").encode()
    message.set_raw("Subject", subject)
    message.set_raw("Date", format_datetime(datetime.fromtimestamp(now, JST)))
    message.set_raw("Message-ID", make_msgid(domain=sender.rpartition("@")[2] or "kagi.invalid"))
    message.set_raw("MIME-Version", "1.0")
    message.set_raw("Content-Type", 'text/plain; charset="utf-8"')
    # Quoted-printable keeps the ASCII lines (the IDs) readable in the raw message, unlike base64.
    message.set_raw("Content-Transfer-Encoding", "quoted-printable")
    body = "\n".join(mail.body.splitlines()) + "\n"
    message.set_payload(binascii.b2a_qp(body.encode("utf-8"), istext=True).decode("ascii"))
    return message


def _parsed_message(mail: Mail, *, sender: str, now: float) -> EmailMessage:
    """Render a Mail through the email package's header registry and content manager."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(datetime.fromtimestamp(now, JST))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "kagi.invalid")
    message.set_content(mail.body, charset="utf-8", cte="quoted-printable")
    return message


@dataclass(frozen=True)
class SmtpSettings:
    """A parsed KAGI_SMTP_URL: smtp://[user:pass@]host:port[?starttls=false&cafile=...] or smtps://.

    smtp:// upgrades with STARTTLS (verified) unless `?starttls=false` says otherwise; smtps:// is implicit TLS.
    `timeout` bounds one whole send (connect, TLS, login and the message), not each exchange.
    """

    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None
    password: str | None
    cafile: str | None
    timeout: float = 10.0

    def __repr__(self) -> str:
        return f"SmtpSettings(host={self.host!r}, port={self.port}, tls={self.implicit_tls or self.starttls})"

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        """Parse the URL, naming the part that is wrong (the password is never echoed)."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise InvalidArgument(
                "invalid SMTP URL", fields={"KAGI_SMTP_URL": "must be smtp://host:port or smtps://host:port"}
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        implicit = parts.scheme == "smtps"
        starttls = query.get("starttls", "true").lower() not in ("0", "false", "no")
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            implicit_tls=implicit,
            starttls=starttls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            cafile=query.get("cafile"),
        )


class SmtpTransport:
    """Sends through an SMTP relay; TLS is verified against the system or the given CA file."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        # The longest one send may take: the outbox leases a mail for longer than this (adapters.outbox).
        self.max_send_seconds = settings.timeout
        # Loading the trust store costs milliseconds of CPU: do it once, and only when TLS is used.
        self._context = (
            ssl.create_default_context(cafile=settings.cafile) if settings.implicit_tls or settings.starttls else None
        )

    async def send(self, message: EmailMessage) -> None:
        """Deliver the message in a worker thread; any network or SMTP failure is Unavailable."""
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException) as exc:
            raise Unavailable(f"mail server unavailable: {type(exc).__name__}", reason="MAIL_UNAVAILABLE") from None

    def _send(self, message: EmailMessage) -> None:
        s = self._settings
        deadline = time.monotonic() + s.timeout
        client: smtplib.SMTP
        if s.implicit_tls:
            client = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._context)
        else:
            client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)

        def budget() -> None:
            # Each exchange gets only what is left of the whole send's time, so a send never outlives its lease.
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the SMTP send took longer than its timeout")
            if client.sock is not None:
                client.sock.settimeout(left)

        with client:
            budget()
            client.ehlo()
            if s.starttls and not s.implicit_tls:
                budget()
                client.starttls(context=self._context)
                budget()
                client.ehlo()
            if s.username is not None:
                budget()
                client.login(s.username, s.password or "")
            budget()
            client.send_message(message)


class MaildirTransport:
    """Drops each message into a Maildir (the development default: `<state-dir>/mail`)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def send(self, message: EmailMessage) -> None:
        """Write the message atomically into the Maildir's new/ folder."""
        try:
            await asyncio.to_thread(self._write, message)
        except OSError as exc:
            raise Unavailable(f"maildir unavailable: {exc.strerror}", reason="MAIL_UNAVAILABLE") from None

    def _write(self, message: EmailMessage) -> None:
        box = mailbox.Maildir(self._path, create=True)
        box.add(message)
        box.close()


def transport_from_settings(smtp_url: str | None, maildir: Path) -> MailTransport:
    """Pick SMTP when a URL is configured, otherwise the Maildir."""
    if smtp_url:
        return SmtpTransport(SmtpSettings.from_url(smtp_url))
    return MaildirTransport(maildir)
