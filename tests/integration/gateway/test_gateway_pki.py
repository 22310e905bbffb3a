"""The public PKI files at the gateway: CA certificates (PEM, and DER where AIA caIssuers points), CRLs where the
CRL distribution points point, OCSP by POST and by RFC 5019 GET with cache headers (max-age up to nextUpdate,
ETag, Last-Modified for good and revoked; no-cache for unknown), on the HTTPS port and on a plain-HTTP port that
serves nothing else but /healthz."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import urllib.parse
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from kagi.ca.v1 import ca_pb2
from kagi.clients.revocation import Status
from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack


async def _get(url: str, **headers: str) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers, await response.read()


def _leaf(customer: GatewayCustomer) -> x509.Certificate:
    assert customer.certificate is not None
    return x509.load_pem_x509_certificates(customer.certificate.cert_file.read_bytes())[0]


def _ocsp_request(certificate: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())  # noqa: S303 - RFC 5019
    return builder.build().public_bytes(serialization.Encoding.DER)


async def _until_the_gateway_knows(stack: GatewayStack, serial_hex: str) -> None:
    """Wait (2 s at most, the revocation stream's promise) until the gateway's registry has SERIAL_HEX revoked."""
    registry = stack.gateway.context.revocation
    deadline = time.monotonic() + 2
    while await registry.status(int(serial_hex, 16), serial_hex) is not Status.REVOKED:
        assert time.monotonic() < deadline, "the revocation did not reach the gateway within 2 s"
        await asyncio.sleep(0.02)


async def test_ca_certificates_are_published_as_the_ca_has_them(stack: GatewayStack) -> None:
    """/pki/ca.pem and /pki/customer-ca.pem are the CA's root and customer CA; the .crt files are the same
    certificates in DER with application/pkix-cert."""
    published = await stack.ca().GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    async with stack.client() as client:
        root = await client.request("GET", "/pki/ca.pem")
        customer = await client.request("GET", "/pki/customer-ca.pem")
        assert root.raw.decode() == published.root_pem
        assert customer.raw.decode() == published.customer_ca_pem
        for name, pem in (("root", published.root_pem), ("customer", published.customer_ca_pem)):
            der = await client.request("GET", f"/pki/{name}-ca.crt")
            assert der.headers["Content-Type"] == "application/pkix-cert"
            assert x509.load_der_x509_certificate(der.raw) == x509.load_pem_x509_certificate(pem.encode())


async def test_urls_in_an_issued_certificate_resolve_over_plain_http(stack: GatewayStack) -> None:
    """The AIA caIssuers URL of a customer certificate gives its issuer (DER), its CRL distribution point a DER
    CRL signed by that issuer, and its AIA OCSP URL answers "good" for it, all on the plain-HTTP port."""
    customer = await GatewayCustomer(stack).through_step4()
    leaf = _leaf(customer)
    access = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_method: d.access_location.value for d in access}
    status, headers, body = await _get(urls[AuthorityInformationAccessOID.CA_ISSUERS])
    assert status == 200
    issuer = x509.load_der_x509_certificate(body)
    leaf.verify_directly_issued_by(issuer)

    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    crl_url = points[0].full_name[0].value
    assert crl_url.startswith(stack.http_url)
    status, headers, body = await _get(crl_url)
    assert (status, headers["Content-Type"]) == (200, "application/pkix-crl")
    assert x509.load_der_x509_crl(body).is_signature_valid(issuer.public_key())

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            urls[AuthorityInformationAccessOID.OCSP],
            data=_ocsp_request(leaf, issuer),
            headers={"Content-Type": "application/ocsp-request"},
        ) as response,
    ):
        assert response.headers["Content-Type"] == "application/ocsp-response"
        answer = ocsp.load_der_ocsp_response(await response.read())
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD


async def test_ocsp_get_answers_carry_cache_headers_up_to_next_update(stack: GatewayStack) -> None:
    """An RFC 5019 GET (base64, URL-encoded) for a good and then a revoked certificate answers with max-age no
    later than nextUpdate, an ETag, Last-Modified = thisUpdate and Expires = nextUpdate; an unknown serial's
    answer is no-cache; an undecodable request is 400 malformedRequest."""
    customer = await GatewayCustomer(stack).through_step4()
    leaf = _leaf(customer)
    async with stack.client() as client:
        issuer = x509.load_pem_x509_certificate((await client.request("GET", "/pki/customer-ca.pem")).raw)
        path = "/pki/ocsp/" + urllib.parse.quote(base64.b64encode(_ocsp_request(leaf, issuer)).decode(), safe="")
        for expected in (ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED):
            if expected is ocsp.OCSPCertStatus.REVOKED:
                await stack.revoke(customer.serial_hex)
                # The gateway answers nonce-less requests from its cache until the revocation stream says
                # revoked (gateway.ocsp_cache): ask once the stream has brought the revocation here.
                await _until_the_gateway_knows(stack, customer.serial_hex)
            answer = await client.request("GET", path)
            assert answer.status == 200
            parsed = ocsp.load_der_ocsp_response(answer.raw)
            assert parsed.certificate_status is expected
            assert parsed.next_update_utc is not None
            max_age = int(re.search(r"max-age=(\d+)", answer.headers["Cache-Control"]).group(1))  # type: ignore[union-attr]
            assert 0 < max_age <= (parsed.next_update_utc - datetime.now(UTC)).total_seconds() + 1
            assert "public" in answer.headers["Cache-Control"]
            assert answer.headers["ETag"].strip('"')
            assert parsedate_to_datetime(answer.headers["Last-Modified"]) == parsed.this_update_utc
            assert parsedate_to_datetime(answer.headers["Expires"]) == parsed.next_update_utc

        unknown = (
            x509.CertificateBuilder()
            .subject_name(leaf.subject)
            .issuer_name(issuer.subject)
            .public_key(leaf.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(leaf.not_valid_before_utc)
            .not_valid_after(leaf.not_valid_after_utc)
        )
        # Only the serial matters to the CertID; the signature of this stand-in is never checked.
        stand_in = unknown.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        unknown_path = "/pki/ocsp/" + urllib.parse.quote(
            base64.b64encode(_ocsp_request(stand_in, issuer)).decode(), safe=""
        )
        answer = await client.request("GET", unknown_path)
        assert answer.status == 200
        assert ocsp.load_der_ocsp_response(answer.raw).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
        assert answer.headers["Cache-Control"] == "no-cache"

        answer = await client.request("GET", "/pki/ocsp/%%%not-base64")
        assert answer.status == 400
        assert ocsp.load_der_ocsp_response(answer.raw).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


async def test_crl_is_cacheable_and_answers_if_none_match(stack: GatewayStack) -> None:
    """The CRL carries an ETag and Last-Modified; asking again with If-None-Match gives 304 Not Modified."""
    status, headers, _ = await _get(f"{stack.http_url}/pki/crl/customer.crl")
    assert status == 200
    assert "max-age=" in headers["Cache-Control"]
    status, _, body = await _get(f"{stack.http_url}/pki/crl/customer.crl", **{"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")


async def test_plain_http_port_serves_pki_and_healthz_only(stack: GatewayStack) -> None:
    """The plain-HTTP port answers /pki/* and /healthz, and 404 for the customer API, /readyz, /metrics and
    /openapi.json (the customer API and /openapi.json exist only over HTTPS; /readyz and /metrics only on the
    management listener)."""
    assert (await _get(f"{stack.http_url}/healthz"))[0] == 200
    assert (await _get(f"{stack.http_url}/pki/ca.pem"))[0] == 200
    for path in ("/v1/enrollments/x", "/v1/client-certificate", "/readyz", "/metrics", "/openapi.json"):
        status, _, body = await _get(stack.http_url + path)
        assert status == 404, path
        assert b'"NOT_FOUND"' in body
    async with stack.client() as client:
        assert (await client.request("GET", "/openapi.json")).status == 200
    assert (await stack.management_get("/readyz")).status == 200


async def test_crl_follows_a_revocation_without_waiting_for_the_cache(stack: GatewayStack) -> None:
    """A CRL fetched before a revocation is not served after it: the revocation stream drops the cached copy,
    so the next download lists the serial (within the CA's publication delay)."""
    customer = await GatewayCustomer(stack).through_step4()
    status, _, before = await _get(f"{stack.http_url}/pki/crl/customer.crl")
    assert status == 200
    serial = int(customer.serial_hex, 16)
    assert serial not in {entry.serial_number for entry in x509.load_der_x509_crl(before)}
    await stack.revoke(customer.serial_hex)
    deadline = time.monotonic() + 3
    while True:
        _, _, after = await _get(f"{stack.http_url}/pki/crl/customer.crl")
        if serial in {entry.serial_number for entry in x509.load_der_x509_crl(after)}:
            break
        assert time.monotonic() < deadline, "the CRL did not list the revocation within 3 s"
        await asyncio.sleep(0.05)
