"""The public PKI files: CA certificates (PEM and the DER files AIA caIssuers points at), CRLs, and OCSP over
HTTP (RFC 6960 appendix A, RFC 5019), all fetched from the CA service and served with HTTP caching headers.

OCSP requests without a nonce are answered from this gateway's OCSP response cache (gateway.ocsp_cache) when it
holds a fresh answer for their CertID, with no call to the CA; the cache forgets a serial as soon as the
revocation stream reports it revoked, and is not used at all while that stream is down (every request then goes
to the CA), so an answer is never further behind a revocation than the stream is. Requests with a nonce always
go to the CA.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from gateway.backends import Backends
from gateway.errors import HttpError
from gateway.ocsp_cache import (
    DEFAULT_MAX_ENTRIES,
    CertId,
    OcspAnswer,
    OcspResponseCache,
    http_date,
    read_ocsp_request,
)
from kagi.ca.v1 import ca_pb2
from kagi.clients.revocation import RevocationRegistry

log = structlog.get_logger("kagi.gateway.pki")

PEM = "application/x-pem-file"
DER_CERTIFICATE = "application/pkix-cert"
DER_CRL = "application/pkix-crl"
OCSP_RESPONSE = "application/ocsp-response"
MAX_OCSP_REQUEST_BYTES = 8 * 1024

CA_CERTIFICATES_TTL = 300.0
# A CRL is re-fetched when the revocation stream says its issuer revoked something, and at least this often;
# while the stream is down nothing says so, and the copy is trusted for one second only.
CRL_TTL_LIVE = 60.0
CRL_TTL_BLIND = 1.0
CRL_MAX_AGE = 60

_CRL_ISSUERS = {"root": ca_pb2.ISSUER_ROOT, "customer": ca_pb2.ISSUER_CUSTOMER, "internal": ca_pb2.ISSUER_INTERNAL}
_OCSP_MALFORMED = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST).public_bytes(
    serialization.Encoding.DER
)
_OCSP_TRY_LATER = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(
    serialization.Encoding.DER
)
_OCSP_INTERNAL_ERROR = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR).public_bytes(
    serialization.Encoding.DER
)
_PKI_UNAVAILABLE = "PKI_UNAVAILABLE"
_MSG_PKI_UNAVAILABLE = "認証局に接続できません / the certificate authority is unavailable: retry shortly"


@dataclass(frozen=True, slots=True)
class CaCertificates:
    """The root and issuing CA certificates, PEM, as the CA publishes them."""

    root_pem: bytes
    customer_pem: bytes
    internal_pem: bytes

    def pem(self, name: str) -> bytes:
        """Return one CA's certificate (root, customer or internal) in PEM."""
        return {"root": self.root_pem, "customer": self.customer_pem, "internal": self.internal_pem}[name]

    def der(self, name: str) -> bytes:
        """Return one CA's certificate in DER (what RFC 5280 AIA caIssuers URLs must serve)."""
        return x509.load_pem_x509_certificate(self.pem(name)).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True)
class _CachedCrl:
    fetched: float
    der: bytes
    this_update: datetime
    next_update: datetime | None
    etag: str


async def fetch_ca_certificates(backends: Backends) -> CaCertificates:
    """Ask the CA for its certificates (raise HttpError 503 when it cannot answer)."""
    reply = await backends.call("ca", backends.ca.GetCaCertificates, ca_pb2.GetCaCertificatesRequest())
    if not (reply.root_pem and reply.customer_ca_pem):
        raise HttpError(503, _PKI_UNAVAILABLE, _MSG_PKI_UNAVAILABLE)
    return CaCertificates(reply.root_pem.encode(), reply.customer_ca_pem.encode(), reply.internal_ca_pem.encode())


def _answers(response: ocsp.OCSPResponse, cert_id: CertId) -> bool:
    """Tell whether RESPONSE is about CERT_ID (so that it may be kept under it)."""
    try:
        answered = CertId(
            response.hash_algorithm.name, response.issuer_name_hash, response.issuer_key_hash, response.serial_number
        )
    except (ValueError, UnsupportedAlgorithm):
        return False
    return answered == cert_id


def _not_modified(request: web.Request, etag: str) -> bool:
    wanted = request.headers.get("If-None-Match", "")
    return etag in [tag.strip() for tag in wanted.split(",")] or wanted.strip() == "*"


class PkiFiles:
    """Serves /pki/*: on the HTTPS port and on the plain-HTTP port (relying parties fetch CRLs and
    OCSP over plain HTTP, as the certificates' URLs say)."""

    def __init__(
        self,
        backends: Backends,
        revocation: RevocationRegistry,
        *,
        initial: CaCertificates | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        ocsp_cache_size: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._backends = backends
        self._revocation = revocation
        self._ocsp_cache = OcspResponseCache(revocation, ocsp_cache_size)
        self._ocsp_from_cache = backends.metrics.ocsp_answers.labels("cache")
        self._ocsp_from_ca = backends.metrics.ocsp_answers.labels("ca")
        self._monotonic = monotonic
        self._certificates = initial
        self._certificates_at = monotonic() if initial else 0.0
        self._crls: dict[str, _CachedCrl] = {}
        self._generations: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # The OCSP rate limit (gateway.ratelimit.OcspLimit): None, or the seconds after which to retry.
        self.ocsp_limit: Callable[[web.Request, bytes], Awaitable[int | None]] | None = None
        revocation.on_revocation(self._invalidate)

    def routes(self) -> list[web.RouteDef]:
        """Return the PKI routes, for any aiohttp application."""
        return [
            web.get("/pki/ca.pem", self._pem("root")),
            web.get("/pki/customer-ca.pem", self._pem("customer")),
            web.get("/pki/internal-ca.pem", self._pem("internal")),
            web.get("/pki/{ca:root|customer|internal}-ca.crt", self.ca_der),
            web.get("/pki/crl/{ca:root|customer|internal}.crl", self.crl),
            web.post("/pki/ocsp", self.ocsp_post),
            web.get("/pki/ocsp/{request:[\\s\\S]+}", self.ocsp_get),
        ]

    # -- CA certificates -----------------------------------------------------------------------------------

    async def certificates(self) -> CaCertificates:
        """Return the CA certificates, fetched again every few minutes (a stale copy if the CA is down: CA
        certificates change only when the CA is re-keyed)."""
        if self._certificates is not None and self._monotonic() - self._certificates_at < CA_CERTIFICATES_TTL:
            return self._certificates
        async with self._lock("certificates"):
            if self._certificates is not None and self._monotonic() - self._certificates_at < CA_CERTIFICATES_TTL:
                return self._certificates
            try:
                self._certificates = await fetch_ca_certificates(self._backends)
                self._certificates_at = self._monotonic()
            except HttpError:
                if self._certificates is None:
                    raise
        return self._certificates

    def _pem(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            body = (await self.certificates()).pem(name)
            return self._static(request, body, PEM)

        return handler

    async def ca_der(self, request: web.Request) -> web.Response:
        """Serve a CA certificate in DER: the target of the certificates' AIA caIssuers URLs."""
        body = (await self.certificates()).der(request.match_info["ca"])
        return self._static(request, body, DER_CERTIFICATE)

    def _static(self, request: web.Request, body: bytes, content_type: str) -> web.Response:
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=3600"}
        if _not_modified(request, etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=content_type, headers=headers)

    # -- CRLs ----------------------------------------------------------------------------------------------

    async def crl(self, request: web.Request) -> web.Response:
        """Serve an issuing CA's current CRL in DER (the certificates' CRL distribution point)."""
        cached = await self._current_crl(request.match_info["ca"])
        now = datetime.now(UTC)
        max_age = CRL_MAX_AGE
        if cached.next_update is not None:
            max_age = max(0, min(max_age, int((cached.next_update - now).total_seconds())))
        headers = {
            "ETag": cached.etag,
            "Last-Modified": http_date(cached.this_update),
            "Cache-Control": f"public, max-age={max_age}, no-transform",
        }
        if _not_modified(request, cached.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=cached.der, content_type=DER_CRL, headers=headers)

    async def _current_crl(self, name: str) -> _CachedCrl:
        ttl = CRL_TTL_LIVE if self._revocation.live else CRL_TTL_BLIND
        cached = self._crls.get(name)
        if cached is not None and self._monotonic() - cached.fetched < ttl:
            return cached
        async with self._lock("crl/" + name):
            cached = self._crls.get(name)
            if cached is not None and self._monotonic() - cached.fetched < ttl:
                return cached
            fetched_at, generation = self._monotonic(), self._generations.get(name, 0)
            reply = await self._backends.call(
                "ca", self._backends.ca.GetCrl, ca_pb2.GetCrlRequest(issuer=_CRL_ISSUERS[name])
            )
            crl = x509.load_der_x509_crl(reply.crl)
            cached = _CachedCrl(
                fetched=fetched_at,
                der=reply.crl,
                this_update=crl.last_update_utc,
                next_update=crl.next_update_utc,
                etag='"' + hashlib.sha256(reply.crl).hexdigest()[:32] + '"',
            )
            # A revocation announced while this fetch was in flight may be missing from it: serve it this once,
            # but do not keep it.
            if self._generations.get(name, 0) == generation:
                self._crls[name] = cached
            return cached

    def _invalidate(self, issuer: int, serial: int | None) -> None:
        for name, value in _CRL_ISSUERS.items():
            if issuer in (value, ca_pb2.ISSUER_UNSPECIFIED):
                self._crls.pop(name, None)
                self._generations[name] = self._generations.get(name, 0) + 1

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    # -- OCSP ----------------------------------------------------------------------------------------------

    async def ocsp_post(self, request: web.Request) -> web.Response:
        """Answer an RFC 6960 OCSP request sent as the body of a POST."""
        body = await request.content.read(MAX_OCSP_REQUEST_BYTES + 1)
        return await self._answer(body, request)

    async def ocsp_get(self, request: web.Request) -> web.Response:
        """Answer an OCSP request sent base64- and URL-encoded in the path (RFC 5019 GET)."""
        # The raw path, because a base64 "+" must not turn into a space and "%2F" must stay a "/".
        raw = request.raw_path.split("?", 1)[0].removeprefix("/pki/ocsp/")
        encoded = urllib.parse.unquote(raw).replace("-", "+").replace("_", "/")
        try:
            der = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            return self._ocsp(_OCSP_MALFORMED, status=400)
        return await self._answer(der, request)

    async def _answer(self, der: bytes, request: web.Request) -> web.Response:
        if not der or len(der) > MAX_OCSP_REQUEST_BYTES:
            return self._ocsp(_OCSP_MALFORMED, status=400)
        question = read_ocsp_request(der) if self._ocsp_cache.enabled else None
        ticket: int | None = None
        if question is not None and not question.has_nonce:
            cached = self._ocsp_cache.get(question.cert_id)
            if cached is not None:
                self._ocsp_from_cache.inc()
                return self._ocsp_cacheable(cached, has_nonce=False)
            # Taken before the CA is asked: a revocation or a reconnection meanwhile makes its answer unkeepable.
            ticket = self._ocsp_cache.ticket()
        if self.ocsp_limit is not None:
            retry_after = await self.ocsp_limit(request, der)
            if retry_after is not None:
                return self._ocsp(_OCSP_TRY_LATER, status=429, headers={"Retry-After": str(retry_after)})
        try:
            reply = await self._backends.ca.AnswerOcsp(
                ca_pb2.AnswerOcspRequest(ocsp_request=der), timeout=self._backends.call_timeout
            )
        except grpc.aio.AioRpcError as exc:
            self._backends.metrics.backend_errors.labels("ca", exc.code().name).inc()
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return self._ocsp(_OCSP_MALFORMED, status=400)
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return self._ocsp(_OCSP_TRY_LATER, status=503, headers={"Retry-After": "1"})
            return self._ocsp(_OCSP_INTERNAL_ERROR, status=500)
        self._ocsp_from_ca.inc()
        try:
            parsed = ocsp.load_der_ocsp_response(reply.ocsp_response)
        except ValueError:
            log.error("the CA returned an unreadable OCSP response")
            return self._ocsp(_OCSP_INTERNAL_ERROR, status=500)
        cacheable = reply.status in (
            ca_pb2.GetCertificateStatusResponse.STATUS_GOOD,
            ca_pb2.GetCertificateStatusResponse.STATUS_REVOKED,
        ) and reply.HasField("next_update")
        if not cacheable or parsed.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return self._ocsp(reply.ocsp_response)
        # Never past the signed nextUpdate, should the CA's reply say later.
        next_update = reply.next_update.ToDatetime(tzinfo=UTC)
        if parsed.next_update_utc is not None:
            next_update = min(next_update, parsed.next_update_utc)
        answer = OcspAnswer.of(reply.ocsp_response, parsed.this_update_utc, next_update)
        # A response echoing a nonce answers one request only: no shared cache may keep it.
        has_nonce = any(isinstance(ext.value, x509.OCSPNonce) for ext in parsed.extensions)
        if question is not None and ticket is not None and not has_nonce and _answers(parsed, question.cert_id):
            self._ocsp_cache.put(question.cert_id, answer, ticket)
        return self._ocsp_cacheable(answer, has_nonce=has_nonce)

    @staticmethod
    def _ocsp_cacheable(answer: OcspAnswer, *, has_nonce: bool) -> web.Response:
        """Return ANSWER (good or revoked, with a nextUpdate) with the RFC 5019 section 6 caching headers."""
        headers = {
            "ETag": answer.etag,
            "Last-Modified": answer.last_modified,
            "Expires": answer.expires,
            "Cache-Control": "no-cache"
            if has_nonce
            else f"max-age={answer.max_age(time.time())}, public, no-transform, must-revalidate",
        }
        return web.Response(body=answer.der, content_type=OCSP_RESPONSE, headers=headers)

    @staticmethod
    def _ocsp(body: bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            content_type=OCSP_RESPONSE,
            headers={"Cache-Control": "no-cache", **(headers or {})},
        )
