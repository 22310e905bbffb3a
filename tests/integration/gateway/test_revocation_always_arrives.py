"""Revocation always arrives: events are numbered by the store at commit and read by cursor, so neither a commit
that lands late nor a CA replica whose clock runs behind can hide one; a watcher that falls behind is told to
reconnect instead of being dropped in silence; and while the stream is live the gateway re-reads the CRL, so even
an event lost on the way is refused within a bound. Real CA (one or two replicas on one SQLite store), real
services and the real gateway over mTLS; the client is refused with 401 CLIENT_CERT_REVOKED."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import ListenSettings
from kagi.store.base import Entry, Operation
from services.ca_service.app.repository import REVOCATION_EVENTS
from services.ca_service.main import CaComponent, start_ca
from tests.integration.ca.ca_service_harness import issue_request
from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack, HttpsClient, open_gateway_stack

REVOCATION_DEADLINE = 2.0


class _ClockBehind:
    """_ClockBehind is the real time minus `seconds`: a replica whose clock runs late."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def now(self) -> float:
        return time.time() - self._seconds


async def _refused_within(client: HttpsClient, limit: float) -> float:
    """Polls the certificate route until it answers 401; returns how long that took (fails past `limit`)."""
    started = time.monotonic()
    while True:
        answer = await client.request("GET", "/v1/client-certificate")
        if answer.status == 401:
            assert answer.reason == "CLIENT_CERT_REVOKED"
            return time.monotonic() - started
        assert answer.status == 200, answer.status
        assert time.monotonic() - started < limit, f"the revoked certificate was still accepted after {limit} s"
        await asyncio.sleep(0.02)


def _ca(stack: GatewayStack) -> CaComponent:
    component: CaComponent = stack.components["ca"]
    return component


async def test_a_commit_delayed_after_its_event_was_built_still_reaches_the_gateway(
    stack: GatewayStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation whose commit lands 2.5 s after its event was built (and stamped) is still delivered: the
    gateway refuses the certificate within 2 s of the revocation being acknowledged."""
    customer = await GatewayCustomer(stack).through_step4()
    store = _ca(stack).runtime.store
    commit = store.commit

    async def late_commit(operations: Sequence[Operation]) -> list[Entry | None]:
        if any(op.collection == REVOCATION_EVENTS for op in operations):
            await asyncio.sleep(2.5)  # the event is built; its commit is late
        return await commit(operations)

    monkeypatch.setattr(store, "commit", late_commit)
    async with stack.client(customer.certificate) as client:
        assert (await client.request("GET", "/v1/client-certificate")).status == 200
        started = time.monotonic()
        await stack.revoke(customer.serial_hex)
        assert time.monotonic() - started >= 2.5, "the revocation's commit was not delayed"
        assert stack.gateway.context.revocation.live
        assert await _refused_within(client, REVOCATION_DEADLINE) < REVOCATION_DEADLINE


async def test_a_replica_whose_clock_runs_three_seconds_behind_revokes(stack: GatewayStack) -> None:
    """A second CA replica on the same store, its clock 3 s behind, revokes the certificate; the gateway,
    watching the first replica, refuses it within 2 s."""
    customer = await GatewayCustomer(stack).through_step4()
    assert stack.ca_settings is not None
    settings = dataclasses.replace(stack.ca_settings, listen=ListenSettings("127.0.0.1", 0, stack.pki.tls("ca")))
    replica = await start_ca(settings, clock=_ClockBehind(3.0))
    channel = open_channel(f"localhost:{replica.port}", stack.identity("operator"), server_name="localhost")
    try:
        async with stack.client(customer.certificate) as client:
            assert (await client.request("GET", "/v1/client-certificate")).status == 200
            await ca_pb2_grpc.CertificateAuthorityServiceStub(channel).RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    request_id=uuid.uuid4().hex,
                    serial_number=customer.serial_hex,
                    reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
                )
            )
            assert stack.gateway.context.revocation.live
            assert await _refused_within(client, REVOCATION_DEADLINE) < REVOCATION_DEADLINE
    finally:
        await channel.close()
        await replica.stop(0)


async def test_an_overflowed_watcher_is_ended_and_the_gateway_catches_up(
    stack: GatewayStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the CA's subscriber queue cut to one notice, a burst of four revocations overflows the gateway's
    subscription: the CA ends that stream (UNAVAILABLE) instead of dropping notices behind heartbeats, the
    gateway reconnects and re-reads, and the certificate revoked last in the burst is refused within 2 s."""
    customer = await GatewayCustomer(stack).through_step4()
    feed = _ca(stack).runtime.feed
    ca = stack.ca("enrollment")
    others = [(await ca.IssueCertificate(issue_request())).certificate.serial_number for _ in range(3)]
    metrics = stack.gateway.context.metrics

    def stream_errors() -> float:
        value = metrics.registry.get_sample_value(
            "kagi_gateway_backend_errors_total", {"service": "ca", "code": "UNAVAILABLE"}
        )
        return value or 0.0

    errors_before = stream_errors()
    # Hold the CA's poller while the burst commits, so the four notices reach the queue in one delivery.
    gate = asyncio.Event()
    poll = feed.poll_once

    async def held_poll() -> int:
        await gate.wait()
        return await poll()

    monkeypatch.setattr(feed, "poll_once", held_poll)
    feed.queue_limit = 1
    async with stack.client(customer.certificate) as client:
        assert (await client.request("GET", "/v1/client-certificate")).status == 200
        for serial in others:
            await stack.revoke(serial)
        await stack.revoke(customer.serial_hex)
        gate.set()
        assert await _refused_within(client, REVOCATION_DEADLINE) < REVOCATION_DEADLINE
    assert stream_errors() > errors_before, "the CA did not end the overflowed stream"


async def test_with_the_stream_stalled_the_periodic_crl_reread_refuses_within_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With KAGI_GATEWAY_CRL_REFRESH_SECONDS=1 and the CA's feed stalled (heartbeats go on, no revocation is
    ever delivered: the stream looks healthy), the gateway stays live and still refuses the revoked certificate
    within the refresh interval plus one second (2 s), from its periodic CRL re-read."""
    refresh = 1.0
    bound = refresh + 1.0
    stack = await open_gateway_stack(tmp_path, crl_refresh_seconds=refresh)
    try:
        customer = await GatewayCustomer(stack).through_step4()
        feed = _ca(stack).runtime.feed

        async def stalled() -> int:
            return 0

        monkeypatch.setattr(feed, "poll_once", stalled)
        revocation = stack.gateway.context.revocation
        async with stack.client(customer.certificate) as client:
            assert (await client.request("GET", "/v1/client-certificate")).status == 200
            await stack.revoke(customer.serial_hex)
            assert await _refused_within(client, bound) < bound
            assert revocation.live, "refused by a reconnection, not by the periodic re-read"
    finally:
        await stack.close()


async def test_two_replicas_revoking_at_once_number_events_without_a_gap(stack: GatewayStack) -> None:
    """Two CA replicas (one 3 s behind) revoke concurrently on one store: the feed's positions are 1..n with
    no gap and no duplicate, each replica's reader delivers every event, and the gateway refuses every one."""
    assert stack.ca_settings is not None
    settings = dataclasses.replace(stack.ca_settings, listen=ListenSettings("127.0.0.1", 0, stack.pki.tls("ca")))
    replica = await start_ca(settings, clock=_ClockBehind(3.0))
    channel = open_channel(f"localhost:{replica.port}", stack.identity("operator"), server_name="localhost")
    try:
        issuer = stack.ca("enrollment")
        serials = [(await issuer.IssueCertificate(issue_request())).certificate.serial_number for _ in range(12)]
        stubs = [stack.ca(), ca_pb2_grpc.CertificateAuthorityServiceStub(channel)]
        delivered: list[list[str]] = [[], []]
        for index, component in enumerate((_ca(stack), replica)):
            component.runtime.feed.add_listener(lambda notice, seen=delivered[index]: seen.append(notice.serial_hex))

        async def revoke(index: int, serial: str) -> None:
            await stubs[index % 2].RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    request_id=uuid.uuid4().hex, serial_number=serial, reason=ca_pb2.REVOCATION_REASON_SUPERSEDED
                )
            )

        await asyncio.gather(*(revoke(i, serial) for i, serial in enumerate(serials)))
        await _until(lambda: all(sorted(seen) == sorted(serials) for seen in delivered), 2.0)

        page = await _ca(stack).runtime.store.list(REVOCATION_EVENTS, page_size=100)
        positions = [int(entry.key[1:]) for entry in page.entries if entry.key.startswith("p")]
        assert positions == list(range(positions[0], positions[0] + len(serials)))
        # The gateway hears them over its own stream from the CA, one hop after the CA's readers: within the
        # same 2 s bound.
        revocation = stack.gateway.context.revocation

        async def gateway_refuses_all() -> bool:
            states = [(await revocation.status(int(serial, 16), serial)).value for serial in serials]
            return all(state == "REVOKED" for state in states)

        await _until(gateway_refuses_all, 2.0)
    finally:
        await channel.close()
        await replica.stop(0)


async def _until(predicate: Callable[[], bool | Awaitable[bool]], limit: float) -> None:
    started = time.monotonic()
    while True:
        outcome = predicate()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        assert time.monotonic() - started < limit, f"not within {limit} s"
        await asyncio.sleep(0.02)
