"""WatchRevocations across replicas: a revocation made through a second CA server on the same store reaches a
watcher on the first within 2 seconds; the first replica's OCSP and CRL answers reflect it too."""

from __future__ import annotations

import asyncio
import time

from cryptography import x509

from kagi.ca.v1 import ca_pb2
from tests.integration.ca.ca_service_harness import RunningCa, issue_request, running_ca


async def test_revocation_on_another_replica_reaches_the_watcher_within_two_seconds(ca: RunningCa) -> None:
    """Watch on replica A, revoke on replica B (same store): the event arrives at A in under 2 s with serial,
    issuer and reason; A's status answer and, after the grace, A's CRL include the revocation."""
    issued = await ca.stub("enrollment").IssueCertificate(issue_request())
    serial = issued.certificate.serial_number
    stream = ca.stub("gateway").WatchRevocations(ca_pb2.WatchRevocationsRequest(issuer=ca_pb2.ISSUER_CUSTOMER))
    received: asyncio.Queue[tuple[float, ca_pb2.WatchRevocationsResponse]] = asyncio.Queue()

    async def watch() -> None:
        async for event in stream:
            if not event.heartbeat:
                received.put_nowait((time.monotonic(), event))

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.3)  # let the stream open; an earlier revocation would be replayed anyway
        async with running_ca(ca.dev, ca.target) as replica:
            await replica.stub("operator").RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    request_id="replica-revoke",
                    serial_number=serial,
                    reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
                )
            )
            revoked_at = time.monotonic()
            arrived, event = await asyncio.wait_for(received.get(), timeout=2.0)
        assert arrived - revoked_at < 2.0
        assert event.serial_number == serial
        assert event.issuer == ca_pb2.ISSUER_CUSTOMER
        assert event.revocation_reason == ca_pb2.REVOCATION_REASON_KEY_COMPROMISE

        status = await ca.stub("gateway").GetCertificateStatus(
            ca_pb2.GetCertificateStatusRequest(serial_number=serial, issuer=ca_pb2.ISSUER_CUSTOMER)
        )
        assert status.status == ca_pb2.GetCertificateStatusResponse.STATUS_REVOKED

        deadline = time.monotonic() + 10
        while True:
            crl = await ca.stub("gateway").GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER))
            listed = x509.load_der_x509_crl(crl.crl).get_revoked_certificate_by_serial_number(int(serial, 16))
            if listed is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert listed is not None
    finally:
        stream.cancel()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_a_quiet_stream_says_it_is_subscribed_and_beats_every_second(ca: RunningCa) -> None:
    """A watcher gets initial metadata as soon as it is subscribed, then a heartbeat (no revocation in it)
    about every second while nothing is revoked, so a dead connection can be told from a quiet one."""
    stream = ca.stub("gateway").WatchRevocations(ca_pb2.WatchRevocationsRequest())
    try:
        metadata = await asyncio.wait_for(stream.initial_metadata(), timeout=1.0)
        assert ("x-kagi-subscribed", "1") in list(metadata)
        start = time.monotonic()
        beats = [await asyncio.wait_for(stream.read(), timeout=2.0) for _ in range(2)]
        assert all(beat.heartbeat and not beat.serial_number for beat in beats)
        assert 1.5 <= time.monotonic() - start <= 3.0
    finally:
        stream.cancel()
