"""Internal gRPC ports trust only the internal CA: a customer certificate (issued by the customer CA, under the
same root) fails the TLS handshake on the CA, OTP and enrollment ports, health and reflection included; internal
certificates and grpcurl with the developer credential still work; a server whose chain does not name its CA
refuses to start rather than fall back to trusting the root."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.stack import FREE_PORTS, RunningStack, start_stack
from kagi.errors import InvalidArgument
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.grpc_server import GrpcServer, client_trust_anchor
from kagi.runtime.settings import ListenSettings, TlsFiles
from tests.support.tls import TestPki
from tests.support.tools import tool

SERVICES = ("ca", "otp", "enrollment")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningStack]:
    """The CA, OTP and enrollment services on free ports, each with the dev PKI's mTLS files."""
    dev = await start_stack(tmp_path, ports=FREE_PORTS, with_gateway=False)
    try:
        yield dev
    finally:
        await dev.stop(0)


def _dev_tls(stack: RunningStack, name: str) -> TlsFiles:
    tls = stack.tls_dir
    return TlsFiles(tls / f"{name}.pem", tls / f"{name}-key.pem", tls / "ca.pem")


async def _customer_tls(stack: RunningStack, directory: Path) -> TlsFiles:
    """A customer certificate as the enrollment service obtains one: issued by the customer CA, with its chain."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    async with open_channel(stack.target("ca"), _dev_tls(stack, "enrollment")) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
        issued = await stub.IssueCertificate(
            ca_pb2.IssueCertificateRequest(
                request_id=uuid.uuid4().hex,
                csr=csr.public_bytes(serialization.Encoding.PEM),
                profile="customer",
                customer=ca_pb2.CustomerIdentity(
                    user_id="u-trust", company_name="株式会社 鈴木製作所", user_name="鈴木 花子", login_id="suzuki42"
                ),
            )
        )
        chain = await stub.GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    leaf = x509.load_pem_x509_certificate(issued.certificate.certificate_pem.encode())
    assert leaf.issuer == x509.load_pem_x509_certificate(chain.customer_ca_pem.encode()).subject
    cert_file, key_file = directory / "customer.pem", directory / "customer-key.pem"
    cert_file.write_text(issued.certificate.certificate_pem + chain.customer_ca_pem)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles(cert_file, key_file, stack.tls_dir / "ca.pem")


async def _health(target: str, tls: TlsFiles) -> grpc.StatusCode | int:
    """The health status for the whole server, or the status code of the failed call."""
    async with open_channel(target, tls) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return int(reply.status)


async def _grpcurl(tls: TlsFiles, target: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        tool("grpcurl"), "-max-time", "10", "-cacert", str(tls.ca_file), "-cert", str(tls.cert_file),
        "-key", str(tls.key_file), target, *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode(errors="replace")


async def test_a_customer_certificate_fails_the_handshake_on_every_service_port(
    stack: RunningStack, tmp_path: Path
) -> None:
    """On the CA, OTP and enrollment ports a customer certificate gets UNAVAILABLE (the handshake fails) for
    grpc.health.v1.Health/Check and for a service method alike, while the internal gateway certificate gets
    SERVING from the same port: the port is up, the customer certificate is what is refused."""
    customer = await _customer_tls(stack, tmp_path)
    gateway = _dev_tls(stack, "gateway")
    for name in SERVICES:
        target = stack.target(name)
        assert await _health(target, gateway) == health_pb2.HealthCheckResponse.SERVING, name
        assert await _health(target, customer) == grpc.StatusCode.UNAVAILABLE, name
    async with open_channel(stack.target("ca"), customer) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ca_pb2_grpc.CertificateAuthorityServiceStub(channel).GetCaCertificates(
                ca_pb2.GetCaCertificatesRequest(), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    async with open_channel(stack.target("otp"), customer) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await otp_pb2_grpc.OtpServiceStub(channel).GetToken(otp_pb2.GetTokenRequest(token_id="t"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_reflection_refuses_a_customer_certificate_and_serves_the_developer(
    stack: RunningStack, tmp_path: Path
) -> None:
    """grpcurl with the developer credential lists each service through reflection; with a customer
    certificate grpcurl fails to dial on every port (the server ends the TLS handshake) and reflection answers
    nothing."""
    customer = await _customer_tls(stack, tmp_path)
    developer = _dev_tls(stack, "developer")
    for name in SERVICES:
        code, out, err = await _grpcurl(developer, stack.target(name), "list")
        assert code == 0, (name, err)
        assert "grpc.health.v1.Health" in out.split(), name
        code, out, err = await _grpcurl(customer, stack.target(name), "list")
        assert code != 0, (name, out)
        assert "grpc.health.v1.Health" not in out
        # grpcurl cannot even dial: the server ends the handshake once it sees the certificate.
        assert "failed to dial" in err.lower(), err


async def test_internal_certificates_are_still_served(stack: RunningStack) -> None:
    """Internal certificates (the developer's operator identity, each service's own) pass the handshake and are
    served on every port; the clients verify the servers against the root."""
    for name in SERVICES:
        for role in ("developer", "gateway", "enrollment", "ca-service", "otp"):
            assert await _health(stack.target(name), _dev_tls(stack, role)) == health_pb2.HealthCheckResponse.SERVING
    async with open_channel(stack.target("ca"), _dev_tls(stack, "developer")) as channel:
        reply = await ca_pb2_grpc.CertificateAuthorityServiceStub(channel).GetCaCertificates(
            ca_pb2.GetCaCertificatesRequest(), timeout=5
        )
    assert reply.root_pem == (stack.tls_dir / "ca.pem").read_text()


async def test_the_trust_anchor_is_the_internal_ca_never_the_root(tmp_path: Path) -> None:
    """By default a server trusts the CA that issued its own certificate (the internal CA, from its chain file);
    KAGI_<C>_TLS_CLIENT_CA (client_ca_file) names it explicitly; a chain without the issuer (the leaf alone, or
    the leaf with the root) stops the server from starting (CLIENT_CA_UNKNOWN) instead of trusting the root."""
    pki = TestPki.create()
    chained = pki.write(tmp_path / "chained", "ca", pki.service("ca"), pki.internal)
    assert client_trust_anchor(chained) == pki.internal.pem()
    explicit = tmp_path / "internal-ca.pem"
    explicit.write_bytes(pki.internal.pem())
    leaf_only = tmp_path / "leaf-only.pem"
    leaf_only.write_bytes(
        chained.cert_file.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    alone = TlsFiles(leaf_only, chained.key_file, chained.ca_file)
    assert client_trust_anchor(TlsFiles(leaf_only, chained.key_file, chained.ca_file, explicit)) == pki.internal.pem()
    with pytest.raises(InvalidArgument) as unknown:
        client_trust_anchor(alone)
    assert unknown.value.reason == "CLIENT_CA_UNKNOWN"
    server = GrpcServer(ListenSettings("127.0.0.1", 0, alone), [], domain="test.kagi")
    with pytest.raises(InvalidArgument):
        await server.start()
    await server.stop(0)
    with_root = pki.write(tmp_path / "with-root", "ca", pki.service("ca"), pki.root)
    with pytest.raises(InvalidArgument):
        client_trust_anchor(with_root)
