"""Revocation through the gateway: once the CA revokes a customer certificate (RevokeCertificate as the operator),
every gateway replica refuses it within two seconds (on new connections, on kept-alive ones, on resumed TLS
sessions), `openssl ocsp` against the gateway says revoked, and the CRL the gateway serves lists it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

from gateway.main import start_gateway
from kagi.runtime.settings import TlsFiles
from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack, curl, gateway_settings
from tests.support.tools import run, tool

REVOCATION_DEADLINE = 2.0
_END = "-----END CERTIFICATE-----\n"


def _request_over(
    context: ssl.SSLContext, port: int, session: ssl.SSLSession | None
) -> tuple[int, ssl.SSLSession, bool]:
    """One HTTP/1.1 request on a new TLS connection, resuming `session` when given (blocking: run in a thread)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(b"GET /v1/client-certificate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        status = int(received.split(b" ", 2)[1])
        assert tls.session is not None
        return status, tls.session, tls.session_reused


async def _refused_within(stack: GatewayStack, port: int, certificate: TlsFiles, started: float) -> float:
    """Polls with new curl connections to one replica until the certificate is refused; returns the delay."""
    while time.monotonic() - started < 10:
        if await _curl_to(stack, port, certificate) == 401:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError("the revoked certificate was still accepted after 10 s")


async def _curl_to(stack: GatewayStack, port: int, certificate: TlsFiles) -> int:
    output = await run(
        [tool("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(stack.root_file),
         "--cert", str(certificate.cert_file), "--key", str(certificate.key_file),
         f"https://localhost:{port}/v1/client-certificate"]
    )  # fmt: skip
    return int(output.strip())


async def test_revoked_certificate_is_refused_on_every_replica_within_two_seconds(stack: GatewayStack) -> None:
    """Two gateway replicas accept the certificate; after the CA revokes it, each refuses it (401
    CLIENT_CERT_REVOKED) on a new connection within 2 s, and so do a kept-alive connection and a TLS session
    resumed from before the revocation."""
    customer = await GatewayCustomer(stack).through_step4()
    assert customer.certificate is not None
    replica = await start_gateway(gateway_settings(stack, http_port=None))
    try:
        ports = [stack.gateway.https_port, replica.https_port]
        for port in ports:
            assert await _curl_to(stack, port, customer.certificate) == 200
        kept_alive = stack.client(customer.certificate)
        assert (await kept_alive.request("GET", "/v1/client-certificate")).status == 200
        context = ssl.create_default_context(cafile=str(stack.root_file))
        context.load_cert_chain(customer.certificate.cert_file, customer.certificate.key_file)
        status, session, _ = await asyncio.to_thread(_request_over, context, ports[0], None)
        assert status == 200

        await stack.revoke(customer.serial_hex)
        started = time.monotonic()
        elapsed = await asyncio.gather(*(_refused_within(stack, port, customer.certificate, started) for port in ports))
        assert max(elapsed) < REVOCATION_DEADLINE, elapsed

        answer = await kept_alive.request("GET", "/v1/client-certificate")
        assert (answer.status, answer.reason) == (401, "CLIENT_CERT_REVOKED")
        await kept_alive.close()
        status, _, reused = await asyncio.to_thread(_request_over, context, ports[0], session)
        assert reused, "the client should have resumed its TLS 1.3 session"
        assert status == 401
    finally:
        await replica.stop(0)


async def test_openssl_ocsp_and_the_crl_report_the_revocation(stack: GatewayStack) -> None:
    """`openssl ocsp` says good before and revoked after, over the plain-HTTP port and over HTTPS; the DER CRL
    from /pki/crl/customer.crl (plain HTTP, application/pkix-crl) lists the serial once revoked."""
    customer = await GatewayCustomer(stack).through_step4()
    assert customer.certificate is not None
    work = stack.workdir
    leaf = work / "leaf.pem"
    leaf.write_text(customer.certificate.cert_file.read_text().split("-----END CERTIFICATE-----")[0] + _END)
    issuer = work / "customer-ca.pem"
    await run([tool("curl"), "-sS", "-o", str(issuer), f"{stack.http_url}/pki/customer-ca.pem"])

    async def ocsp(url: str) -> str:
        return await run(
            [tool("openssl"), "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-url", url,
             "-CAfile", str(stack.root_file)]
        )  # fmt: skip

    assert f"{leaf}: good" in await ocsp(f"{stack.http_url}/pki/ocsp")
    await stack.revoke(customer.serial_hex)
    assert f"{leaf}: revoked" in await ocsp(f"{stack.http_url}/pki/ocsp")
    assert f"{leaf}: revoked" in await ocsp(f"{stack.https_url}/pki/ocsp")

    crl = work / "customer.crl"
    deadline = time.monotonic() + 5
    while True:
        await run([tool("curl"), "-sS", "-o", str(crl), f"{stack.http_url}/pki/crl/customer.crl"])
        text = await run([tool("openssl"), "crl", "-inform", "DER", "-in", str(crl), "-noout", "-text"])
        if customer.serial_hex.upper().lstrip("0") in text.replace(":", "").upper():
            break
        assert time.monotonic() < deadline, "the CRL does not list the revoked certificate"
        await asyncio.sleep(0.2)
    answer = await curl(stack, "GET", "/pki/crl/customer.crl")
    assert answer.headers["content-type"] == "application/pkix-crl"
