"""Client certificates at the gateway: on the routes that need one, an internal-CA certificate, an expired one, one
from a foreign CA and none at all are each refused (at the TLS handshake, or with 401/403 and a reason), the
enrollment does not move, and the refusals are counted by reason; another customer's valid certificate reaches
the service, which refuses it as not this enrollment's."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import HttpError
from kagi.runtime.settings import Secret, TlsFiles
from services.ca_service.adapters.ca_directory import CaDirectory
from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack
from tests.support.tls import TestPki

CERTIFICATE_ROUTES = [
    ("POST", "/certificate-login", {}),
    ("POST", "/password-login", {"login_password": "Passw0rd"}),
    (
        "POST",
        "/token",
        {
            "mobile_email": "phone@example.jp",
            "mobile_email_confirmation": "phone@example.jp",
            "usage_start_password": "4831",
            "usage_start_password_confirmation": "4831",
        },
    ),
    ("POST", "/otp", {"otp": "123456"}),
    ("GET", "", None),
]


def _write(directory: Path, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> TlsFiles:
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles(cert_file, key_file, directory / "unused")


def expired_customer_certificate(stack: GatewayStack) -> TlsFiles:
    """A certificate signed with the real customer CA's key, with the customer profile, that expired yesterday."""
    passphrase = Secret(stack.pki.passphrase_file.read_bytes().strip())
    ca = CaDirectory(stack.pki.ca_dir).load(passphrase).hierarchy.customer
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired customer")]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return _write(stack.workdir, "expired", certificate, key)


def foreign_certificate(stack: GatewayStack) -> TlsFiles:
    """A client certificate from another CA altogether (a different root)."""
    pki = TestPki.create()
    leaf = pki.customer_leaf("stranger")
    return _write(stack.workdir, "foreign", leaf.cert, leaf.key)


def _handshake_then_request(context: ssl.SSLContext, port: int) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /v1/client-certificate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        if not tls.recv(65536):
            raise ConnectionResetError("closed without an HTTP answer or a TLS alert")


async def _refused_at_handshake(stack: GatewayStack, certificate: TlsFiles) -> str:
    """Connects presenting `certificate` and returns the TLS alert the gateway refused it with."""
    context = ssl.create_default_context(cafile=str(stack.root_file))
    context.load_cert_chain(certificate.cert_file, certificate.key_file)
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        await asyncio.to_thread(_handshake_then_request, context, stack.gateway.https_port)
    return str(refused.value)


def _rejections(stack: GatewayStack, reason: str) -> float:
    value = stack.gateway.metrics.registry.get_sample_value(
        "kagi_gateway_client_certificate_rejections_total", {"reason": reason}
    )
    return value or 0.0


async def _state(stack: GatewayStack, customer: GatewayCustomer) -> str:
    # Step 4 retired the session token: the customer's certificate reads the enrollment.
    async with stack.client(customer.certificate) as client:
        answer = await client.request("GET", f"/v1/enrollments/{customer.enrollment_id}")
    assert answer.status == 200
    return str(answer.body["state"])


async def test_no_certificate_is_401_on_every_certificate_route(stack: GatewayStack) -> None:
    """Without a client certificate each certificate route answers 401 CLIENT_CERT_REQUIRED and the enrollment
    stays CERTIFICATE_ISSUED."""
    customer = await GatewayCustomer(stack).through_step4()
    async with stack.client() as client:
        for method, suffix, body in CERTIFICATE_ROUTES:
            answer = await client.request(method, f"/v1/enrollments/{customer.enrollment_id}{suffix}", body)
            assert answer.status == 401, (suffix, answer.body)
            # GET /v1/enrollments/{id} takes a session token instead, so it asks for either.
            assert answer.reason == ("CREDENTIAL_REQUIRED" if method == "GET" else "CLIENT_CERT_REQUIRED")
        answer = await client.request("GET", "/v1/client-certificate")
        assert (answer.status, answer.reason) == (401, "CLIENT_CERT_REQUIRED")
    assert await _state(stack, customer) == "CERTIFICATE_ISSUED"
    assert _rejections(stack, "missing") >= len(CERTIFICATE_ROUTES)


async def test_internal_ca_certificate_completes_tls_but_every_route_refuses_it(stack: GatewayStack) -> None:
    """An internal-CA certificate (the operator's) chains to the same root, so TLS accepts it; each certificate
    route refuses it with 403 CLIENT_CERT_NOT_CUSTOMER and nothing changes."""
    customer = await GatewayCustomer(stack).through_step4()
    async with stack.client(stack.identity("developer")) as client:
        for method, suffix, body in CERTIFICATE_ROUTES:
            answer = await client.request(method, f"/v1/enrollments/{customer.enrollment_id}{suffix}", body)
            assert (answer.status, answer.reason) == (403, "CLIENT_CERT_NOT_CUSTOMER"), answer.body
        answer = await client.request("GET", "/v1/client-certificate")
        assert (answer.status, answer.reason) == (403, "CLIENT_CERT_NOT_CUSTOMER")
    assert await _state(stack, customer) == "CERTIFICATE_ISSUED"
    assert _rejections(stack, "not_customer_ca") >= len(CERTIFICATE_ROUTES) + 1


async def test_expired_customer_certificate_is_refused_at_the_handshake(stack: GatewayStack) -> None:
    """A certificate the customer CA signed that has expired fails the TLS handshake (certificate expired alert),
    counted as handshake_expired."""
    alert = await _refused_at_handshake(stack, expired_customer_certificate(stack))
    assert "EXPIRED" in alert.upper(), alert
    await asyncio.sleep(0.05)  # the server side counts after its handshake task ends
    assert _rejections(stack, "handshake_expired") == 1


async def test_foreign_ca_certificate_is_refused_at_the_handshake(stack: GatewayStack) -> None:
    """A certificate from a CA outside the bank's hierarchy fails the TLS handshake (unknown CA alert), counted
    as handshake_untrusted_issuer."""
    alert = await _refused_at_handshake(stack, foreign_certificate(stack))
    assert "UNKNOWN_CA" in alert.upper(), alert
    await asyncio.sleep(0.05)
    assert _rejections(stack, "handshake_untrusted_issuer") == 1


async def test_another_customers_certificate_is_refused_by_the_service(stack: GatewayStack) -> None:
    """A valid customer certificate issued for another enrollment passes the gateway's checks, but the service
    refuses it (403 CERTIFICATE_MISMATCH): the gateway relays who the certificate is, the service decides."""
    mine = await GatewayCustomer(stack).through_step4()
    theirs = await GatewayCustomer(stack).through_step4()
    async with stack.client(theirs.certificate) as client:
        answer = await client.request("POST", f"/v1/enrollments/{mine.enrollment_id}/certificate-login", {})
    assert (answer.status, answer.reason) == (403, "CERTIFICATE_MISMATCH"), answer.body
    assert await _state(stack, mine) == "CERTIFICATE_ISSUED"


async def test_a_certificate_is_rechecked_for_expiry_on_every_request(stack: GatewayStack) -> None:
    """TLS checks validity only at a full handshake; a resumed session or a long kept-alive connection would
    keep using a certificate past its notAfter, so each request's check refuses it then (401
    CLIENT_CERT_EXPIRED), and before its notBefore (401 CLIENT_CERT_NOT_YET_VALID)."""
    customer = await GatewayCustomer(stack).through_step4()
    assert customer.certificate is not None
    leaf = x509.load_pem_x509_certificates(customer.certificate.cert_file.read_bytes())[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    verifier = stack.gateway.context.verifier
    assert verifier.check(der, leaf.not_valid_after_utc.timestamp() - 1).serial_hex == customer.serial_hex
    with pytest.raises(HttpError) as expired:
        verifier.check(der, leaf.not_valid_after_utc.timestamp() + 1)
    assert (expired.value.status, expired.value.reason) == (401, "CLIENT_CERT_EXPIRED")
    with pytest.raises(HttpError) as early:
        verifier.check(der, leaf.not_valid_before_utc.timestamp() - 1)
    assert (early.value.status, early.value.reason) == (401, "CLIENT_CERT_NOT_YET_VALID")
