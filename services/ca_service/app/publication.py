"""What the CA publishes to every reader: CRLs, OCSP answers (with their response cache), CA certificates and the
revocation stream.

A revocation reaches the published material two ways: the replica that committed it calls `revoked` at once
(its CRL is rebuilt after the debounce, its OCSP cache forgets the serial), and every replica hears it on the
revocation feed (`on_revocation`), which makes sure some CRL covers it even if the revoking replica crashed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from cryptography.x509 import ocsp

from kagi.clock import Clock
from kagi.errors import Unavailable
from kagi.store.base import StoreUnavailable
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.crls import CrlPublisher
from services.ca_service.app.feed import RevocationFeed, RevocationNotice
from services.ca_service.app.records import CertificateRecord, PublishedCrl
from services.ca_service.app.repository import CaRepository
from services.ca_service.domain.errors import MalformedOcspRequest
from services.ca_service.domain.ocsp import (
    OCSP_MALFORMED_REQUEST,
    OCSP_TRY_LATER,
    OCSP_UNAUTHORIZED,
    OcspResponseCache,
    answer_ocsp,
    parse_ocsp_request,
    select_responder,
)
from services.ca_service.domain.serials import MAX_SERIAL, serial_hex
from services.ca_service.domain.settings import CaKind, PkiSettings

OCSP_CACHE_SIZE = 100_000
"""OCSP_CACHE_SIZE is how many serials' signed OCSP answers a replica keeps."""


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """OcspAnswer is a DER OCSP response with its certificate status and nextUpdate (None for errors)."""

    der: bytes
    status: str
    next_update: datetime | None


class Publication:
    """Publication answers the CA's public readers: CRL, OCSP, CA certificates and the revocation stream."""

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
        self._ocsp_cache = OcspResponseCache(ocsp_cache_size)
        feed.add_listener(self.on_revocation)

    async def crl(self, issuer: CaKind) -> PublishedCrl:
        """Return the current published CRL of an issuing CA."""
        return await self._crls.current(issuer)

    async def answer_ocsp(self, request_der: bytes) -> OcspAnswer:
        """Answer an RFC 6960 request from the stored status, signed by the delegated signer."""
        try:
            query = parse_ocsp_request(request_der)
        except MalformedOcspRequest:
            return OcspAnswer(OCSP_MALFORMED_REQUEST, "error", None)
        responder = select_responder(query, self._authorities.responders)
        if responder is None:
            return OcspAnswer(OCSP_UNAUTHORIZED, "error", None)
        status = None
        if 0 < query.serial <= MAX_SERIAL:
            try:
                found = await self._repository.certificate(serial_hex(query.serial))
            except StoreUnavailable:
                return OcspAnswer(OCSP_TRY_LATER, "error", None)
            if found is not None and found[0].issued and found[0].issuer is responder.issuer:
                status = found[0].status(found[1])
        der = answer_ocsp(responder, query, status, settings=self._settings, clock=self._clock, cache=self._ocsp_cache)
        if status is None:
            return OcspAnswer(der, "unknown", None)
        response = ocsp.load_der_ocsp_response(der)
        return OcspAnswer(der, "revoked" if status.is_revoked else "good", response.next_update_utc)

    def ca_certificates(self) -> tuple[bytes, bytes, bytes]:
        """Return the root, customer CA and internal CA certificates in PEM."""
        hierarchy = self._authorities.hierarchy
        return hierarchy.root.pem, hierarchy.customer.pem, hierarchy.internal.pem

    def chain_pem(self, issuer: CaKind) -> bytes:
        """Return the issuing CA certificate then the root, PEM."""
        return self._authorities.hierarchy.bundle_pem(issuer)

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
        self._ocsp_cache.invalidate(record.issuer, record.serial)
        self._crls.request_rebuild(record.issuer)

    def on_revocation(self, notice: RevocationNotice) -> None:
        """Take in a revocation heard on the feed (any replica's): forget its OCSP answer, make a CRL cover it."""
        # The version key would skip a stale answer anyway; invalidating frees it now.
        with contextlib.suppress(ValueError):
            self._ocsp_cache.invalidate(notice.issuer, int(notice.serial_hex, 16))
        self._crls.on_revocation(notice)
