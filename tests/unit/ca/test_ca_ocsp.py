"""The OCSP responder core: parsing, good/revoked/unknown answers, nonce, issuer check, and the cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from kagi.clock import utc_datetime
from services.ca_service.adapters.file_signer import PrivateKeySigner
from services.ca_service.domain.errors import MalformedOcspRequest
from services.ca_service.domain.hierarchy import issue_ocsp_signer
from services.ca_service.domain.issuance import prepare_issuance, sign_certificate
from services.ca_service.domain.ocsp import (
    MAX_OCSP_REQUEST_BYTES,
    OCSP_MALFORMED_REQUEST,
    OCSP_UNAUTHORIZED,
    OcspCacheKey,
    OcspResponder,
    OcspResponseCache,
    answer_ocsp,
    parse_ocsp_request,
    select_responder,
    sign_ocsp_response,
)
from services.ca_service.domain.revocation import CertificateStatus, RevocationReason, revoke
from services.ca_service.domain.serials import new_serial
from services.ca_service.domain.settings import CaKind

SHA1 = hashes.SHA1()  # noqa: S303 - OCSP CertIDs name certificates with SHA-1 by default (RFC 6960)


@pytest.fixture
def leaf(hierarchy, customer, make_csr, settings, clock):
    """A customer certificate issued by the customer CA."""
    prepared = prepare_issuance(hierarchy.customer, make_csr(), customer, "customer", settings=settings, clock=clock)
    return sign_certificate(hierarchy.customer, prepared, settings=settings)


@pytest.fixture
def responder(customer_ocsp):
    """The customer CA's responder."""
    return OcspResponder(customer_ocsp)


def _request(leaf, issuer, *, nonce: bytes | None = b"nonce-0123456789", algorithm=None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf.certificate, issuer.certificate, algorithm or SHA1)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status(leaf, version=1) -> CertificateStatus:
    return CertificateStatus(CaKind.CUSTOMER, leaf.serial, leaf.not_after, version=version)


def test_request_is_parsed_with_its_nonce(leaf, hierarchy):
    """A one-certificate request yields serial, CertID hashes, hash name and nonce."""
    query = parse_ocsp_request(_request(leaf, hierarchy.customer))
    assert query.serial == leaf.serial
    assert query.hash_algorithm == "sha1"
    assert query.nonce == b"nonce-0123456789"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30\x03\x02\x01\x00", b"not der at all", b"\x30" + b"\x00" * (MAX_OCSP_REQUEST_BYTES + 1)],
    ids=["empty", "wrong-structure", "garbage", "oversize"],
)
def test_malformed_requests_are_refused(data):
    """Empty, undecodable and oversize requests raise MalformedOcspRequest (answered malformedRequest)."""
    with pytest.raises(MalformedOcspRequest) as error:
        parse_ocsp_request(data)
    assert error.value.reason == "OCSP_REQUEST_MALFORMED"
    assert (
        ocsp.load_der_ocsp_response(OCSP_MALFORMED_REQUEST).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


def test_good_certificate_is_answered_good_signed_by_the_delegate(
    leaf, hierarchy, responder, customer_ocsp, settings, clock
):
    """A good certificate gets "good", signed by the delegated signer whose certificate is included."""
    query = parse_ocsp_request(_request(leaf, hierarchy.customer))
    der = answer_ocsp(responder, query, _status(leaf), settings=settings, clock=clock)
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == leaf.serial
    assert response.certificates == [customer_ocsp.certificate]
    assert (
        response.responder_key_hash
        == customer_ocsp.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    public_key = customer_ocsp.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    now = utc_datetime(clock).replace(microsecond=0)
    assert response.this_update_utc == now
    assert response.next_update_utc == now + settings.ocsp_response_validity


@pytest.mark.parametrize("nonce", [b"", b"n" * 33], ids=["empty", "33-octets"])
def test_nonce_outside_rfc_8954_bounds_is_malformed(leaf, hierarchy, nonce):
    """A nonce of 0 or more than 32 octets makes the request malformed (RFC 8954 section 2.1)."""
    with pytest.raises(MalformedOcspRequest):
        parse_ocsp_request(_request(leaf, hierarchy.customer, nonce=nonce))


def test_nonce_is_echoed(leaf, hierarchy, responder, settings, clock):
    """The request's nonce comes back in the response extensions."""
    query = parse_ocsp_request(_request(leaf, hierarchy.customer, nonce=b"\x01\x02\x03\x04" * 8))
    response = ocsp.load_der_ocsp_response(answer_ocsp(responder, query, _status(leaf), settings=settings, clock=clock))
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x01\x02\x03\x04" * 8


def test_revoked_certificate_is_answered_with_time_and_reason(leaf, hierarchy, responder, settings, clock):
    """A revoked certificate gets "revoked" with its revocation time and reason."""
    revoked = revoke(_status(leaf), RevocationReason.KEY_COMPROMISE, utc_datetime(clock))
    query = parse_ocsp_request(_request(leaf, hierarchy.customer))
    response = ocsp.load_der_ocsp_response(answer_ocsp(responder, query, revoked, settings=settings, clock=clock))
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == revoked.revocation.revoked_at
    assert response.revocation_reason is x509.ReasonFlags.key_compromise


def test_unspecified_revocation_carries_no_reason(leaf, hierarchy, responder, settings, clock):
    """A revocation for an unspecified reason is "revoked" without a reason field."""
    revoked = revoke(_status(leaf), RevocationReason.UNSPECIFIED, utc_datetime(clock))
    query = parse_ocsp_request(_request(leaf, hierarchy.customer))
    response = ocsp.load_der_ocsp_response(answer_ocsp(responder, query, revoked, settings=settings, clock=clock))
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is None


def test_never_issued_serial_is_unknown_not_good(leaf, hierarchy, responder, settings, clock):
    """A random serial the CA has no record of is "unknown"; so is a status of another serial or CA."""
    probe = ocsp.load_der_ocsp_request(_request(leaf, hierarchy.customer, algorithm=hashes.SHA256()))
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(probe.issuer_name_hash, probe.issuer_key_hash, new_serial(), hashes.SHA256())
        .build()
    )
    query = parse_ocsp_request(request.public_bytes(serialization.Encoding.DER))
    for status in (
        None,
        CertificateStatus(CaKind.CUSTOMER, new_serial(), utc_datetime(clock) + timedelta(days=1)),
        CertificateStatus(CaKind.INTERNAL, query.serial, utc_datetime(clock) + timedelta(days=1)),
    ):
        response = ocsp.load_der_ocsp_response(answer_ocsp(responder, query, status, settings=settings, clock=clock))
        assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN


def test_wrong_issuer_is_unauthorized(leaf, hierarchy, responder, settings, clock):
    """A CertID naming another issuer finds no responder and is answered "unauthorized" (RFC 6960 2.3)."""
    query = parse_ocsp_request(_request(leaf, hierarchy.internal))
    assert select_responder(query, [responder]) is None
    assert sign_ocsp_response(responder, query, _status(leaf), settings=settings, clock=clock) == OCSP_UNAUTHORIZED
    unauthorized = ocsp.load_der_ocsp_response(OCSP_UNAUTHORIZED)
    assert unauthorized.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_the_right_responder_is_selected(leaf, hierarchy, responder, settings, clock):
    """Of the customer and internal responders, the customer's serves a customer certificate (SHA-256 CertID too)."""
    internal = OcspResponder(
        issue_ocsp_signer(hierarchy.internal, PrivateKeySigner.generate(), settings=settings, clock=clock)
    )
    for algorithm in (SHA1, hashes.SHA256()):
        query = parse_ocsp_request(_request(leaf, hierarchy.customer, algorithm=algorithm))
        assert select_responder(query, [internal, responder]) is responder


def test_cache_serves_the_same_answer_until_the_status_changes(leaf, hierarchy, responder, settings, clock):
    """Without a nonce, a second query is served the cached bytes; a new status version gets a fresh answer."""
    cache = OcspResponseCache()
    query = parse_ocsp_request(_request(leaf, hierarchy.customer, nonce=None))
    first = answer_ocsp(responder, query, _status(leaf, version=1), settings=settings, clock=clock, cache=cache)
    clock.advance(60)
    assert answer_ocsp(responder, query, _status(leaf, version=1), settings=settings, clock=clock, cache=cache) is first
    revoked = revoke(_status(leaf, version=2), RevocationReason.SUPERSEDED, utc_datetime(clock))
    after = answer_ocsp(responder, query, revoked, settings=settings, clock=clock, cache=cache)
    assert ocsp.load_der_ocsp_response(after).certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert len(cache) == 1


def test_cache_entries_expire_half_way_to_next_update(leaf, hierarchy, responder, settings, clock):
    """After half the response validity a cached answer is re-signed with a new thisUpdate."""
    cache = OcspResponseCache()
    query = parse_ocsp_request(_request(leaf, hierarchy.customer, nonce=None))
    first = answer_ocsp(responder, query, _status(leaf), settings=settings, clock=clock, cache=cache)
    clock.advance((settings.ocsp_response_validity / 2).total_seconds())
    second = answer_ocsp(responder, query, _status(leaf), settings=settings, clock=clock, cache=cache)
    assert second != first
    assert ocsp.load_der_ocsp_response(second).this_update_utc > ocsp.load_der_ocsp_response(first).this_update_utc


def test_nonce_requests_bypass_the_cache(leaf, hierarchy, responder, settings, clock):
    """Each nonce request gets its own signed answer echoing its own nonce, and nothing is cached."""
    cache = OcspResponseCache()
    for nonce in (b"a" * 16, b"b" * 16):
        query = parse_ocsp_request(_request(leaf, hierarchy.customer, nonce=nonce))
        der = answer_ocsp(responder, query, _status(leaf), settings=settings, clock=clock, cache=cache)
        assert ocsp.load_der_ocsp_response(der).extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert len(cache) == 0


def test_cache_can_be_invalidated_and_is_bounded(leaf, hierarchy, responder, settings, clock):
    """invalidate drops a serial's answer; the least recently used serials go beyond the bound."""
    cache = OcspResponseCache(max_serials=2)
    query = parse_ocsp_request(_request(leaf, hierarchy.customer, nonce=None))
    answer_ocsp(responder, query, _status(leaf), settings=settings, clock=clock, cache=cache)
    assert cache.invalidate(CaKind.CUSTOMER, leaf.serial)
    assert not cache.invalidate(CaKind.CUSTOMER, leaf.serial)
    now = utc_datetime(clock)
    for serial in (1, 2, 3):
        cache.put(OcspCacheKey(CaKind.CUSTOMER, serial, 1, "sha1"), b"r", now + timedelta(minutes=1))
    assert len(cache) == 2
    assert cache.get(OcspCacheKey(CaKind.CUSTOMER, 1, 1, "sha1"), now) is None
    assert cache.get(OcspCacheKey(CaKind.CUSTOMER, 3, 1, "sha1"), now) == b"r"
