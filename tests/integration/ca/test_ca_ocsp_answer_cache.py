"""The CA's OCSP answer cache, on a real SQLite file and a real Redis with two replicas: while the revocation feed
is live a cached answer is served without reading the store, a revocation (here or on the other replica, once
the feed delivers it) is never answered "good" from the cache, and while the feed is not live every answer reads
the store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from kagi.clock import SystemClock
from kagi.runtime.identity import Role
from kagi.runtime.settings import Secret
from services.ca_service.adapters.ca_directory import CaDirectory
from services.ca_service.app.access import Actor
from services.ca_service.app.ocsp_answers import CachedAnswer, OcspAnswer, OcspAnswerCache
from services.ca_service.app.records import CertificateRecord
from services.ca_service.creation import DevPki
from services.ca_service.domain.identity import CustomerIdentity
from services.ca_service.domain.revocation import RevocationReason
from services.ca_service.domain.settings import CaKind, PkiSettings
from services.ca_service.main import CaRuntime, open_runtime
from tests.integration.ca.ca_service_harness import StoreTarget, make_csr

OPERATOR = Actor("spiffe://kagi.internal/operator", Role.OPERATOR)


def _open(dev_pki: DevPki, target: StoreTarget) -> CaRuntime:
    loaded = CaDirectory(dev_pki.ca_dir).load(Secret(dev_pki.passphrase_file.read_bytes().strip()))
    return open_runtime(
        target.url,
        state_dir=target.state_dir,
        loaded=loaded,
        pki=PkiSettings(),
        clock=SystemClock(),
        namespace=target.namespace,
    )


@pytest.fixture
async def replicas(dev_pki: DevPki, store_target: StoreTarget) -> AsyncIterator[tuple[CaRuntime, CaRuntime]]:
    """Two CA replicas over one fresh store, their feeds not polling by themselves (the tests poll)."""
    first, second = _open(dev_pki, store_target), _open(dev_pki, store_target)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def _issue(runtime: CaRuntime, user_id: str) -> CertificateRecord:
    identity = CustomerIdentity(user_id=user_id, login_id=f"l-{user_id}", user_name="Ocsp Cache", company="Kagi")
    prepared = runtime.issuance.prepare(csr=make_csr(), identity=identity, profile="customer", actor=OPERATOR)
    return await runtime.issuance.issue(prepared, request_id="", actor=OPERATOR)


def _request(runtime: CaRuntime, record: CertificateRecord) -> bytes:
    leaf = x509.load_pem_x509_certificate(record.certificate_pem.encode())
    issuer = runtime.authorities.issuing(CaKind.CUSTOMER).certificate
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA256())
    return builder.build().public_bytes(serialization.Encoding.DER)


def _reads(monkeypatch: pytest.MonkeyPatch, runtime: CaRuntime) -> list[str]:
    """Record the keys of the certificate reads RUNTIME's repository makes."""
    seen: list[str] = []
    original = runtime.repository.certificate

    async def reading(serial: str) -> tuple[CertificateRecord, int] | None:
        seen.append(serial)
        return await original(serial)

    monkeypatch.setattr(runtime.repository, "certificate", reading)
    return seen


async def test_a_cached_answer_is_served_without_a_store_read_while_the_feed_is_live(
    replicas: tuple[CaRuntime, CaRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the feed live, the second and later answers to one nonce-less request come from the cache (the same
    DER, no certificate read); stopped, the feed is not live and every answer reads the store again."""
    runtime, _ = replicas
    record = await _issue(runtime, "u-cache")
    request = _request(runtime, record)
    await runtime.feed.poll_once()
    assert runtime.feed.live()
    reads = _reads(monkeypatch, runtime)
    first = await runtime.publication.answer_ocsp(request)
    assert first.status == "good"
    assert [await runtime.publication.answer_ocsp(request) for _ in range(3)] == [first] * 3
    assert reads == [record.serial_hex]
    await runtime.feed.stop()
    assert not runtime.feed.live()
    again = await runtime.publication.answer_ocsp(request)
    assert again == first
    assert reads == [record.serial_hex, record.serial_hex]


async def test_a_revocation_here_is_answered_revoked_at_once(
    replicas: tuple[CaRuntime, CaRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation committed by this replica drops its cached answer at once: the next answer is "revoked"."""
    runtime, _ = replicas
    record = await _issue(runtime, "u-here")
    request = _request(runtime, record)
    await runtime.feed.poll_once()
    assert (await runtime.publication.answer_ocsp(request)).status == "good"
    await runtime.revocation.revoke(record.serial_hex, RevocationReason.KEY_COMPROMISE, actor=OPERATOR)
    assert runtime.feed.live()
    answer = await runtime.publication.answer_ocsp(request)
    assert answer.status == "revoked"
    assert ocsp.load_der_ocsp_response(answer.der).certificate_status is ocsp.OCSPCertStatus.REVOKED


async def test_another_replicas_revocation_is_answered_once_the_feed_delivers_it(
    replicas: tuple[CaRuntime, CaRuntime],
) -> None:
    """A revocation committed by the other replica reaches this replica's cache through its feed: after the poll
    that delivers it, the answer is "revoked", never the cached "good"; with the feed not live, the store is
    read and the revocation shows without any poll."""
    runtime, other = replicas
    record = await _issue(runtime, "u-other")
    request = _request(runtime, record)
    await runtime.feed.poll_once()
    assert (await runtime.publication.answer_ocsp(request)).status == "good"
    await other.revocation.revoke(record.serial_hex, RevocationReason.CESSATION_OF_OPERATION, actor=OPERATOR)
    await runtime.feed.poll_once()
    assert (await runtime.publication.answer_ocsp(request)).status == "revoked"

    second = await _issue(runtime, "u-other-2")
    request = _request(runtime, second)
    assert (await runtime.publication.answer_ocsp(request)).status == "good"
    await runtime.feed.stop()
    await other.revocation.revoke(second.serial_hex, RevocationReason.SUPERSEDED, actor=OPERATOR)
    assert (await runtime.publication.answer_ocsp(request)).status == "revoked"


async def test_a_request_with_a_nonce_is_signed_afresh_and_never_cached(replicas: tuple[CaRuntime, CaRuntime]) -> None:
    """A request carrying a nonce gets a response echoing it, signed for it alone: nothing is cached."""
    runtime, _ = replicas
    record = await _issue(runtime, "u-nonce")
    leaf = x509.load_pem_x509_certificate(record.certificate_pem.encode())
    issuer = runtime.authorities.issuing(CaKind.CUSTOMER).certificate
    await runtime.feed.poll_once()
    for nonce in (b"\x01" * 16, b"\x02" * 16):
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(leaf, issuer, hashes.SHA256())
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        answer = await runtime.publication.answer_ocsp(request)
        response = ocsp.load_der_ocsp_response(answer.der)
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert len(runtime.publication._answers) == 0


def _entry(serial: int, version: int | None, fresh_until: float = 100.0) -> CachedAnswer:
    return CachedAnswer(OcspAnswer(b"der", "good", None), CaKind.CUSTOMER, serial, version, fresh_until)


def test_the_answer_cache_forgets_a_serial_drops_the_oldest_and_counts_invalidations() -> None:
    """The cache serves an entry until its freshness ends, drops every request's entry of an invalidated serial
    (counting the invalidation), and beyond its bound drops the oldest entry first."""
    cache = OcspAnswerCache(max_entries=2)
    cache.put(b"a", _entry(1, 1))
    cache.put(b"b", _entry(1, 1))
    assert cache.get(b"a", 50.0) is not None
    assert cache.get(b"a", 100.0) is None
    before = cache.invalidations
    cache.invalidate(CaKind.CUSTOMER, 1)
    assert cache.invalidations == before + 1
    assert (cache.get(b"a", 0.0), cache.get(b"b", 0.0), len(cache)) == (None, None, 0)
    for key, serial in ((b"x", 2), (b"y", 3), (b"z", 4)):
        cache.put(key, _entry(serial, None))
    assert (cache.get(b"x", 0.0), len(cache)) == (None, 2)
    cache.invalidate(CaKind.CUSTOMER, 2)  # already evicted: nothing else goes
    assert len(cache) == 2
