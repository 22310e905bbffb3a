"""The OCSP responder core (RFC 6960): parse a request, answer good/revoked/unknown, sign, and cache.

The use case drives it: `parse_ocsp_request`, then `select_responder` (no match: `OCSP_UNAUTHORIZED`), then
look the serial up in the store, then `answer_ocsp`. Each step is pure and synchronous.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from kagi.clock import Clock, utc_datetime
from services.ca_service.domain.errors import MalformedOcspRequest
from services.ca_service.domain.hierarchy import DelegatedOcspSigner
from services.ca_service.domain.revocation import CertificateStatus, RevocationReason
from services.ca_service.domain.settings import CaKind, PkiSettings
from services.ca_service.domain.signer import signing_key

MAX_OCSP_REQUEST_BYTES = 8 * 1024
"""Caps a request; a one-certificate request with a nonce is about 100 bytes."""

MAX_NONCE_BYTES = 32
"""RFC 8954 section 2.1 has responders refuse nonces outside 1-32 octets as malformed."""


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


OCSP_MALFORMED_REQUEST = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
"""The (unsigned) answer to a request that cannot be parsed or is too large."""

OCSP_UNAUTHORIZED = _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
"""The answer for an issuer this responder does not serve (RFC 6960 section 2.3)."""

OCSP_INTERNAL_ERROR = _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
"""The answer when the responder itself failed."""

OCSP_TRY_LATER = _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
"""The answer when the status store is unavailable."""

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),  # noqa: S303 - RFC 6960 CertIDs are SHA-1 by default; it names, it does not sign
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


@dataclass(frozen=True, slots=True)
class OcspQuery:
    """The one CertID an OCSP request asks about, and its nonce if it sent one."""

    serial: int
    hash_algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    nonce: bytes | None = None


def parse_ocsp_request(der: bytes) -> OcspQuery:
    """Read a DER OCSPRequest for exactly one certificate.

    Raises MalformedOcspRequest (answer it with OCSP_MALFORMED_REQUEST) for oversize, undecodable or
    multi-certificate requests and for unknown CertID hash algorithms.
    """
    if not isinstance(der, bytes | bytearray) or not der:
        raise MalformedOcspRequest("empty OCSP request", fields={"ocsp_request": "must not be empty"})
    if len(der) > MAX_OCSP_REQUEST_BYTES:
        raise MalformedOcspRequest(
            "OCSP request too large", fields={"ocsp_request": f"must be at most {MAX_OCSP_REQUEST_BYTES} bytes"}
        )
    try:
        request = ocsp.load_der_ocsp_request(bytes(der))
        algorithm = request.hash_algorithm.name
        serial = request.serial_number
        name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
        nonce: bytes | None = None
        with contextlib.suppress(x509.ExtensionNotFound):
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except (ValueError, UnsupportedAlgorithm):
        # cryptography raises ValueError for bad DER and for requests naming several certificates.
        raise MalformedOcspRequest(
            "OCSP request cannot be parsed", fields={"ocsp_request": "must be a DER OCSPRequest for one certificate"}
        ) from None
    if algorithm not in _HASHES:
        raise MalformedOcspRequest(
            f"unsupported CertID hash {algorithm}", fields={"ocsp_request": "CertID hash must be SHA-1 or SHA-2"}
        )
    if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE_BYTES:
        raise MalformedOcspRequest(
            "OCSP nonce has a bad length", fields={"ocsp_request": f"nonce must be 1-{MAX_NONCE_BYTES} bytes"}
        )
    return OcspQuery(
        serial=serial,
        hash_algorithm=algorithm,
        issuer_name_hash=name_hash,
        issuer_key_hash=key_hash,
        nonce=nonce,
    )


@dataclass(frozen=True, slots=True)
class OcspResponder:
    """Answers for one issuing CA with its delegated OCSP signer."""

    delegate: DelegatedOcspSigner
    _issuer_hashes: dict[str, tuple[bytes, bytes]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The delegate certificate was issued by the CA, so a request for it carries exactly the CertID
        # issuer hashes (name, and key BIT STRING) that clients compute for any certificate of that CA.
        table = {}
        for name, algorithm in _HASHES.items():
            request = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(self.delegate.certificate, self.delegate.issuer.certificate, algorithm)
                .build()
            )
            table[name] = (request.issuer_name_hash, request.issuer_key_hash)
        object.__setattr__(self, "_issuer_hashes", table)

    @property
    def issuer(self) -> CaKind:
        """Return the kind of CA this responder answers for."""
        return self.delegate.issuer.kind

    def serves(self, query: OcspQuery) -> bool:
        """Tell whether the query's CertID names this responder's CA (name and key hash)."""
        expected = self._issuer_hashes.get(query.hash_algorithm)
        return expected == (query.issuer_name_hash, query.issuer_key_hash)


def select_responder(query: OcspQuery, responders: Iterable[OcspResponder]) -> OcspResponder | None:
    """Return the responder for the query's issuer, or None (answer OCSP_UNAUTHORIZED)."""
    return next((responder for responder in responders if responder.serves(query)), None)


def sign_ocsp_response(
    responder: OcspResponder,
    query: OcspQuery,
    status: CertificateStatus | None,
    *,
    settings: PkiSettings,
    clock: Clock,
) -> bytes:
    """Build and sign the DER response for QUERY given the certificate's STATUS (see `sign_ocsp_answer`)."""
    return sign_ocsp_answer(responder, query, status, settings=settings, clock=clock).der


@dataclass(frozen=True, slots=True)
class SignedOcspResponse:
    """A DER OCSP response with what it says: its certificate status and its nextUpdate
    (None for an unsuccessful response), so nobody parses the DER back to learn them."""

    der: bytes
    status: str
    next_update: datetime | None


def sign_ocsp_answer(
    responder: OcspResponder,
    query: OcspQuery,
    status: CertificateStatus | None,
    *,
    settings: PkiSettings,
    clock: Clock,
) -> SignedOcspResponse:
    """Build and sign the response for QUERY given the certificate's STATUS, with its status and nextUpdate.

    `status` None means the CA never issued that serial: the answer is "unknown", never "good". A status of
    another CA or serial is treated the same way. The response carries the delegated signer's certificate,
    is identified by key hash, and echoes the nonce. producedAt is set by `cryptography` from the system
    clock (it cannot be given); thisUpdate and nextUpdate come from `clock`.
    """
    if not responder.serves(query):
        return SignedOcspResponse(OCSP_UNAUTHORIZED, "error", None)
    now = utc_datetime(clock).replace(microsecond=0)
    answered = "unknown"
    cert_status = ocsp.OCSPCertStatus.UNKNOWN
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None
    if status is not None and status.issuer is responder.issuer and status.serial == query.serial:
        if status.revocation is None:
            answered, cert_status = "good", ocsp.OCSPCertStatus.GOOD
        else:
            answered, cert_status = "revoked", ocsp.OCSPCertStatus.REVOKED
            revoked_at = status.revocation.revoked_at
            if status.revocation.reason is not RevocationReason.UNSPECIFIED:
                reason = status.revocation.reason.flag
    delegate = responder.delegate
    next_update = now + settings.ocsp_response_validity
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=query.issuer_name_hash,
            issuer_key_hash=query.issuer_key_hash,
            serial_number=query.serial,
            algorithm=_HASHES[query.hash_algorithm],
            cert_status=cert_status,
            this_update=now,
            next_update=next_update,
            revocation_time=revoked_at,
            revocation_reason=reason,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, delegate.certificate)
        .certificates([delegate.certificate])
    )
    if query.nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(query.nonce), critical=False)
    response = builder.sign(signing_key(delegate.signer), delegate.signer.algorithm.hash)
    return SignedOcspResponse(response.public_bytes(serialization.Encoding.DER), answered, next_update)


@dataclass(frozen=True, slots=True)
class OcspCacheKey:
    """Names one cacheable answer: issuer, serial, status version (None: unknown), CertID hash."""

    issuer: CaKind
    serial: int
    status_version: int | None
    hash_algorithm: str


class OcspResponseCache:
    """Keeps signed responses until their status changes or they are half-way to nextUpdate.

    Keyed by status version, a changed status can never be answered from the cache; `invalidate` also frees
    the stale entry at once. Bounded (least recently used serials go first). Not thread-safe: one per event
    loop.
    """

    def __init__(self, max_serials: int = 100_000) -> None:
        self._max_serials = max_serials
        self._entries: OrderedDict[tuple[CaKind, int], tuple[OcspCacheKey, bytes, datetime]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: OcspCacheKey, now: datetime) -> bytes | None:
        """Return the cached response for `key` if it is still fresh at `now`."""
        slot = (key.issuer, key.serial)
        entry = self._entries.get(slot)
        if entry is None:
            return None
        cached_key, response, fresh_until = entry
        if cached_key != key or now >= fresh_until:
            return None
        self._entries.move_to_end(slot)
        return response

    def put(self, key: OcspCacheKey, response: bytes, fresh_until: datetime) -> None:
        """Store `response` for `key` until `fresh_until`, replacing any answer for an older status."""
        slot = (key.issuer, key.serial)
        self._entries[slot] = (key, response, fresh_until)
        self._entries.move_to_end(slot)
        while len(self._entries) > self._max_serials:
            self._entries.popitem(last=False)

    def invalidate(self, issuer: CaKind, serial: int) -> bool:
        """Drop the cached answer for a serial (call it when its status changes)."""
        return self._entries.pop((issuer, serial), None) is not None

    def clear(self) -> None:
        """Drop every cached answer (for example after the OCSP signer is renewed)."""
        self._entries.clear()


def answer_ocsp(
    responder: OcspResponder,
    query: OcspQuery,
    status: CertificateStatus | None,
    *,
    settings: PkiSettings,
    clock: Clock,
    cache: OcspResponseCache | None = None,
) -> bytes:
    """Return the signed response for `query`, from `cache` when a fresh one is there.

    Requests with a nonce are always signed afresh, since the nonce must be echoed in the signed data.
    Cached answers are served until half their validity has passed, so a client never gets a nearly stale one.
    """
    if cache is None or query.nonce is not None or not responder.serves(query):
        return sign_ocsp_response(responder, query, status, settings=settings, clock=clock)
    known = status is not None and status.issuer is responder.issuer and status.serial == query.serial
    key = OcspCacheKey(
        issuer=responder.issuer,
        serial=query.serial,
        status_version=status.version if known and status is not None else None,
        hash_algorithm=query.hash_algorithm,
    )
    now = utc_datetime(clock)
    cached = cache.get(key, now)
    if cached is not None:
        return cached
    response = sign_ocsp_response(responder, query, status, settings=settings, clock=clock)
    cache.put(key, response, now + settings.ocsp_response_validity / 2)
    return response
