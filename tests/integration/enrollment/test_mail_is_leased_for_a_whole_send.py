"""The outbox leases a claimed mail for longer than one send may take (so a slow send is never sent twice by
another sender), and SMTP upgrades with STARTTLS unless the URL says `starttls=false`."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from kagi.errors import Unavailable
from kagi.store import Create, KeyValueStore, open_store
from services.enrollment_service.adapters.mail import SmtpSettings, SmtpTransport, build_message
from services.enrollment_service.adapters.outbox import OutboxSender, lease_for
from services.enrollment_service.app.repository import outbox_entry
from services.enrollment_service.domain.messages import token_mail
from tests.support.smtp import SmtpServer
from tests.support.tls import TestPki

SENDER = "no-reply@bank.example"


class SlowTransport:
    """A mail server that takes its time: each send waits until released."""

    max_send_seconds = 10.0

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, message: EmailMessage) -> None:
        self.started.set()
        await self.release.wait()
        self.sent.append(message)


class DownTransport:
    """A mail server that is down."""

    max_send_seconds = 10.0

    async def send(self, message: EmailMessage) -> None:
        raise Unavailable("down", reason="MAIL_UNAVAILABLE")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyValueStore]:
    kv = open_store("sqlite:", namespace="enrollment", state_dir=tmp_path)
    yield kv
    await kv.close()


def _mail_entry(now: float) -> Create:
    return outbox_entry(token_mail(to="p@example.jp", service_id="S1", user_id="U1", app_url="https://a/"), now)


async def test_a_slow_send_is_not_taken_over_by_another_sender(store: KeyValueStore) -> None:
    """While one sender's send is still under way (3 s, 9 s later: past the old 2-second claim), another
    sender does not take the mail; it goes out exactly once."""
    clock = FakeClock()
    await store.commit([_mail_entry(clock.now())])
    transport = SlowTransport()
    first, second = OutboxSender(store, transport, clock, SENDER), OutboxSender(store, transport, clock, SENDER)
    running = asyncio.create_task(first.deliver_due())
    await transport.started.wait()
    clock.advance(3)
    assert await second.deliver_due() == 0
    clock.advance(6)
    assert await second.deliver_due() == 0
    transport.release.set()
    assert await running == 1
    assert len(transport.sent) == 1
    assert (await store.list("outbox")).entries == []


def test_the_lease_outlasts_the_transport_s_longest_send() -> None:
    """The lease is at least a minute and always longer than the SMTP transport's whole-send timeout."""
    slow = SmtpTransport(SmtpSettings("h", 25, False, True, None, None, None, timeout=120.0))
    assert lease_for(slow) > 120.0
    assert lease_for(SmtpTransport(SmtpSettings.from_url("smtp://h:25"))) >= 60.0


async def test_a_failed_send_retries_after_its_backoff_not_the_lease(store: KeyValueStore) -> None:
    """A send that failed ends the lease: the retry comes after the short backoff (2 s), not a minute later."""
    clock = FakeClock()
    await store.commit([_mail_entry(clock.now())])
    sender = OutboxSender(store, DownTransport(), clock, SENDER)
    assert await sender.deliver_due() == 0
    clock.advance(3)
    [entry] = (await store.list("outbox")).entries
    assert b'"attempts": 1' in entry.value
    await sender.deliver_due()
    [entry] = (await store.list("outbox")).entries
    assert b'"attempts": 2' in entry.value


def test_smtp_urls_use_starttls_unless_told_otherwise() -> None:
    """smtp:// means STARTTLS; only ?starttls=false sends in clear; smtps:// is implicit TLS."""
    assert SmtpSettings.from_url("smtp://mail.example:587").starttls is True
    assert SmtpSettings.from_url("smtp://mail.example:587?starttls=true").starttls is True
    assert SmtpSettings.from_url("smtp://127.0.0.1:2525?starttls=false").starttls is False
    assert SmtpSettings.from_url("smtps://mail.example").implicit_tls is True


async def test_a_plain_smtp_url_upgrades_to_tls(tmp_path: Path) -> None:
    """A server that requires STARTTLS gets it from a smtp:// URL with no starttls option (verified TLS)."""
    pki = TestPki.create()
    files = pki.write(tmp_path / "smtp", "smtp", pki.service("smtp"), pki.internal)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    server = SmtpServer(tls=context, login=("kagi", "s3cret")).start()
    try:
        url = f"smtp://kagi:s3cret@localhost:{server.port}?cafile={files.ca_file}"
        mail = token_mail(to="p@example.jp", service_id="S1", user_id="U1", app_url="https://a/")
        await SmtpTransport(SmtpSettings.from_url(url)).send(build_message(mail, sender=SENDER, now=0))
        assert len(server.inbox.messages) == 1
    finally:
        server.stop()
