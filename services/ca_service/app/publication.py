"""What the CA publishes to every reader: CRLs, OCSP answers (with their response cache), CA certificates and the
revocation stream.

A revocation reaches the published material two ways: the replica that committed it calls `revoked` at once
(its CRL is rebuilt after the debounce, its OCSP cache forgets the serial), and every replica hears it on the
revocation feed (`on_revocation`), which makes sure some CRL covers it even if the revoking replica crashed.

OCSP answers to nonce-less requests are cached (app.ocsp_answers). While the revocation feed is live, a cached
answer about an issued certificate is served as it is, without reading the store: a revocation made here drops
it at once, one made on another replica as soon as the feed delivers it (within feed.LIVE_WITHIN). While the
feed is not live, every request reads the certificate's status from the store, and a cached answer is served
only if it was signed from the record version just read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kagi.clock import Clock
from kagi.errors import Unavailable
from kagi.store.base import StoreUnavailable
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.crls import CrlPublisher
from services.ca_service.app.feed import RevocationFeed, RevocationNotice
from services.ca_service.app.ocsp_answers import CachedAnswer, OcspAnswer, OcspAnswerCache
from services.ca_service.app.records import CertificateRecord, PublishedCrl
from services.ca_service.app.repository import CaRepository
from services.ca_service.domain.errors import MalformedOcspRequest
from services.ca_service.domain.hierarchy import ISSUING_KINDS
from services.ca_service.domain.ocsp import (
    OCSP_MALFORMED_REQUEST,
    OCSP_TRY_LATER,
    OCSP_UNAUTHORIZED,
    parse_ocsp_request,
    select_responder,
    sign_ocsp_answer,
)
from services.ca_service.domain.serials import MAX_SERIAL, serial_hex
from services.ca_service.domain.settings import CaKind, PkiSettings

_MALFORMED = OcspAnswer(OCSP_MALFORMED_REQUEST, "error", None)
_UNAUTHORIZED = OcspAnswer(OCSP_UNAUTHORIZED, "error", None)
_TRY_LATER = OcspAnswer(OCSP_TRY_LATER, "error", None)

OCSP_CACHE_SIZE = 100_000
"""How many signed OCSP answers a replica keeps."""


class Publication:
    """Answers the CA's public readers: CRL, OCSP, CA certificates and the revocation stream."""

    def __init__(
        self,
        repository: CaRepository,
        authorities: Authorities,
        settings: PkiSettings,
        clock: Clock,
        *,
        crls: CrlPublisher,
        feed: RevocationFeed,
        ocsp_cache_size: int = OCSP_CACHE_SIZE,
    ) -> None:
        self._repository = repository
        self._authorities = authorities
        self._settings = settings
        self._clock = clock
        self._crls = crls
        self._feed = feed
        self._answers = OcspAnswerCache(ocsp_cache_size)
        # Served until half their validity has passed, so a client never gets a nearly stale answer.
        self._answer_freshness = settings.ocsp_response_validity.total_seconds() / 2
        self._chains = {kind: authorities.hierarchy.bundle_pem(kind) for kind in ISSUING_KINDS}
        feed.add_listener(self.on_revocation)

    async def crl(self, issuer: CaKind) -> PublishedCrl:
        """Return the current published CRL of an issuing CA."""
        return await self._crls.current(issuer)

    async def answer_ocsp(self, request_der: bytes) -> OcspAnswer:
        """Answer an RFC 6960 request from the stored status, signed by the delegated signer (or cached)."""
        if self._feed.live():
            cached = self._answers.get(request_der, self._clock.now())
            if cached is not None and cached.version is not None:
                return cached.answer
        return await self._answer_from_store(request_der)

    async def _answer_from_store(self, request_der: bytes) -> OcspAnswer:
        # Taken before the status is read: an invalidation after it means the status may be stale already.
        invalidations = self._answers.invalidations
        try:
            query = parse_ocsp_request(request_der)
        except MalformedOcspRequest:
            return _MALFORMED
        responder = select_responder(query, self._authorities.responders)
        if responder is None:
            return _UNAUTHORIZED
        status = None
        if 0 < query.serial <= MAX_SERIAL:
            try:
                found = await self._repository.certificate(serial_hex(query.serial))
            except StoreUnavailable:
                return _TRY_LATER
            if found is not None and found[0].issued and found[0].issuer is responder.issuer:
                status = found[0].status(found[1])
        version = None if status is None else status.version
        now = self._clock.now()
        if query.nonce is None:
            cached = self._answers.get(request_der, now)
            if cached is not None and cached.version == version:
                return cached.answer
        signed = sign_ocsp_answer(responder, query, status, settings=self._settings, clock=self._clock)
        answer = OcspAnswer(signed.der, signed.status, None if status is None else signed.next_update)
        # A nonce is echoed in the signed data: such an answer is for its request alone.
        if query.nonce is None and self._answers.invalidations == invalidations:
            entry = CachedAnswer(answer, responder.issuer, query.serial, version, now + self._answer_freshness)
            self._answers.put(request_der, entry)
        return answer

    def ca_certificates(self) -> tuple[bytes, bytes, bytes]:
        """Return the root, customer CA and internal CA certificates in PEM."""
        hierarchy = self._authorities.hierarchy
        return hierarchy.root.pem, hierarchy.customer.pem, hierarchy.internal.pem

    def chain_pem(self, issuer: CaKind) -> bytes:
        """Return the issuing CA certificate then the root, PEM."""
        return self._chains[issuer]

    async def watch(self, issuer: CaKind | None) -> AsyncIterator[RevocationNotice]:
        """Yield every revocation (of ISSUER, or all) made on any replica from now on."""
        async with self._feed.subscribe() as queue:
            while True:
                notice = await queue.get()
                if notice is None:
                    raise Unavailable("the revocation feed stopped; reconnect", reason="FEED_STOPPED")
                if issuer is None or notice.issuer is issuer:
                    yield notice

    def revoked(self, record: CertificateRecord) -> None:
        """Take in a revocation this replica committed: forget its OCSP answer, rebuild the CRL soon."""
        self._answers.invalidate(record.issuer, record.serial)
        self._crls.request_rebuild(record.issuer)

    def on_revocation(self, notice: RevocationNotice) -> None:
        """Take in a revocation heard on the feed (any replica's): forget its OCSP answer, make a CRL cover it."""
        # The cached answers of the serial must go: while the feed is live they are served without a store read.
        with contextlib.suppress(ValueError):
            self._answers.invalidate(notice.issuer, int(notice.serial_hex, 16))
        self._crls.on_revocation(notice)
