"""Mail goes out through a real SMTP server (STARTTLS and login too) or into a Maildir, and the outbox keeps
mail that cannot be sent yet, delivering it once the server is back."""

from __future__ import annotations

import asyncio
import mailbox
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from kagi.store import KeyValueStore, open_store
from services.enrollment_service.adapters.mail import (
    MaildirTransport,
    SmtpSettings,
    SmtpTransport,
    build_message,
)
from services.enrollment_service.adapters.outbox import OutboxSender
from services.enrollment_service.app.repository import EnrollmentRepository, outbox_entry
from services.enrollment_service.domain.messages import Mail, token_mail
from tests.support.ports import free_port
from tests.support.smtp import SmtpServer
from tests.support.tls import TestPki

SENDER = "no-reply@bank.example"


def _mail() -> Mail:
    return token_mail(to="phone@example.jp", service_id="SVC123", user_id="USR456", app_url="https://app.example/")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyValueStore]:
    kv = open_store("sqlite:", namespace="enrollment", state_dir=tmp_path)
    yield kv
    await kv.close()


async def test_smtp_delivers_the_token_mail(smtp: SmtpServer) -> None:
    """The step-7 mail reaches a real SMTP server with its Japanese subject and the two ID lines."""
    transport = SmtpTransport(SmtpSettings.from_url(f"smtp://127.0.0.1:{smtp.port}?starttls=false"))
    await transport.send(build_message(_mail(), sender=SENDER, now=1_800_000_000))
    [message] = smtp.inbox.messages
    assert message["To"] == "phone@example.jp"
    assert "ワンタイムパスワード" in message["Subject"]
    body = message.get_content()
    assert "Service ID: SVC123" in body.splitlines()
    assert "User ID: USR456" in body.splitlines()


async def test_smtp_with_starttls_and_login(tmp_path: Path) -> None:
    """With ?starttls=true and credentials, the transport upgrades to TLS (verified) and logs in."""
    pki = TestPki.create()
    files = pki.write(tmp_path / "smtp", "smtp", pki.service("smtp"), pki.internal)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    server = SmtpServer(tls=context, login=("kagi", "s3cret")).start()
    try:
        url = f"smtp://kagi:s3cret@localhost:{server.port}?starttls=true&cafile={files.ca_file}"
        await SmtpTransport(SmtpSettings.from_url(url)).send(build_message(_mail(), sender=SENDER, now=0))
        assert len(server.inbox.messages) == 1
        assert "s3cret" not in repr(SmtpSettings.from_url(url))
    finally:
        server.stop()


async def test_maildir_receives_mail_when_no_smtp_is_configured(tmp_path: Path) -> None:
    """Without KAGI_SMTP_URL, mail lands in the Maildir, readable by any mail tool."""
    await MaildirTransport(tmp_path / "mail").send(build_message(_mail(), sender=SENDER, now=0))
    messages = list(mailbox.Maildir(tmp_path / "mail", create=False))
    assert len(messages) == 1
    assert "Service ID: SVC123" in messages[0].get_payload(decode=True).decode()


async def test_outbox_waits_out_a_down_server_then_delivers(store: KeyValueStore) -> None:
    """A mail queued while the SMTP server is down stays queued; once the server is up and the backoff has
    passed, it is delivered exactly once and leaves the outbox."""
    clock = FakeClock()
    port = free_port()
    await store.commit([outbox_entry(_mail(), clock.now())])
    transport = SmtpTransport(SmtpSettings.from_url(f"smtp://127.0.0.1:{port}?starttls=false"))
    sender = OutboxSender(store, transport, clock, SENDER)
    assert await sender.deliver_due() == 0
    assert len((await store.list("outbox")).entries) == 1

    server = SmtpServer(port=port).start()
    try:
        assert await sender.deliver_due() == 0  # still backing off
        clock.advance(3)
        assert await sender.deliver_due() == 1
        assert await sender.deliver_due() == 0
        assert len(server.inbox.messages) == 1
        assert (await store.list("outbox")).entries == []
    finally:
        server.stop()


async def test_a_queued_mail_rings_the_sender_and_goes_out_at_once(smtp: SmtpServer, store: KeyValueStore) -> None:
    """A commit through the repository that queues a mail rings the outbox's sender: with an hour between polls,
    the mail still reaches the SMTP server within a second, and leaves the outbox."""
    transport = SmtpTransport(SmtpSettings.from_url(f"smtp://127.0.0.1:{smtp.port}?starttls=false"))
    sender = OutboxSender(store, transport, FakeClock(), SENDER)
    repository = EnrollmentRepository(store, mail_queued=sender.ring)
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop, interval=3600))
    try:
        await asyncio.sleep(0.1)  # the first round found nothing; the next poll is an hour away
        await repository.commit([outbox_entry(_mail(), 0)])
        for _ in range(100):
            if smtp.inbox.messages:
                break
            await asyncio.sleep(0.01)
        assert [m["To"] for m in smtp.inbox.messages] == ["phone@example.jp"]
        for _ in range(100):
            if not (await store.list("outbox")).entries:
                break
            await asyncio.sleep(0.01)
        assert not (await store.list("outbox")).entries
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
