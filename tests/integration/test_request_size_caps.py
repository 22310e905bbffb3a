"""Requests are capped at 64 KiB on every kagi server, before the role check and the method; answers stay large
where they need to be (CRLs, list pages), and the largest legitimate requests (a CSR or a client certificate at
its own 16 KiB cap) still fit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.stack import FREE_PORTS, RunningStack, start_stack
from kagi.enrollment.v1 import enrollment_pb2, enrollment_pb2_grpc, user_pb2, user_pb2_grpc
from kagi.otp.v1 import otp_pb2
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.grpc_server import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, GrpcServer, ServiceBinding
from kagi.runtime.identity import Role, allow
from kagi.runtime.settings import ListenSettings, TlsFiles
from services.ca_service.domain.csr import MAX_CSR_BYTES
from services.enrollment_service.domain.client_certificates import MAX_CERTIFICATE_PEM_BYTES
from tests.integration.ca.ca_service_harness import customer_identity, make_csr
from tests.support.tls import TestPki

OVERSIZED = 100 * 1024
SERVICE = "kagi.ca.v1.CertificateAuthorityService"


class _Counting(ca_pb2_grpc.CertificateAuthorityServiceServicer):
    """A servicer that counts the calls that reach it and answers GetCrl with a 1 MiB CRL."""

    def __init__(self) -> None:
        self.calls = 0

    async def GetCertificate(
        self, request: ca_pb2.GetCertificateRequest, context: object
    ) -> ca_pb2.GetCertificateResponse:
        self.calls += 1
        return ca_pb2.GetCertificateResponse(
            certificate=ca_pb2.Certificate(serial_number=str(len(request.serial_number)))
        )

    async def GetCrl(self, request: ca_pb2.GetCrlRequest, context: object) -> ca_pb2.GetCrlResponse:
        self.calls += 1
        return ca_pb2.GetCrlResponse(crl=b"\x30" * (1024 * 1024), crl_number=1)


@pytest.fixture
async def probe(tmp_path: Path) -> AsyncIterator[tuple[GrpcServer, _Counting, dict[str, TlsFiles]]]:
    """A server with the counting servicer (GetCertificate and GetCrl for the operator only), and identities."""
    pki = TestPki.create()
    identities = {
        role: pki.write(tmp_path / role, role, pki.service(role), pki.internal)
        for role in ("ca", "operator", "gateway")
    }
    servicer = _Counting()  # type: ignore[abstract]
    binding = ServiceBinding(
        name=SERVICE,
        register=lambda server: ca_pb2_grpc.add_CertificateAuthorityServiceServicer_to_server(servicer, server),
        allowed_roles={"GetCertificate": allow(Role.OPERATOR), "GetCrl": allow(Role.OPERATOR)},
    )
    server = GrpcServer(ListenSettings("127.0.0.1", 0, identities["ca"]), [binding], domain="ca.kagi")
    await server.start()
    try:
        yield server, servicer, identities
    finally:
        await server.stop(0)


async def test_an_oversized_request_is_refused_before_the_role_check_and_the_method(
    probe: tuple[GrpcServer, _Counting, dict[str, TlsFiles]],
) -> None:
    """A 100 KiB request gets RESOURCE_EXHAUSTED whoever sends it: the gateway (not on the allow-list) gets that
    rather than PERMISSION_DENIED, and the method never runs; a request just under 64 KiB is served."""
    server, servicer, identities = probe
    for role in ("gateway", "operator"):
        async with open_channel(f"localhost:{server.port}", identities[role]) as channel:
            stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number="a" * OVERSIZED), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, role
    assert servicer.calls == 0
    async with open_channel(f"localhost:{server.port}", identities["operator"]) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
        fits = MAX_REQUEST_BYTES - 64
        reply = await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number="a" * fits), timeout=5)
    assert reply.certificate.serial_number == str(fits)
    assert servicer.calls == 1


async def test_answers_stay_large_for_clients(probe: tuple[GrpcServer, _Counting, dict[str, TlsFiles]]) -> None:
    """A 1 MiB answer (a CRL) is sent by the server and received by a kagi client channel: only requests are
    capped, answers may be up to MAX_RESPONSE_BYTES (16 MiB)."""
    server, _, identities = probe
    assert MAX_RESPONSE_BYTES >= 16 * 1024 * 1024 > MAX_REQUEST_BYTES == 64 * 1024
    async with open_channel(f"localhost:{server.port}", identities["operator"]) as channel:
        reply = await ca_pb2_grpc.CertificateAuthorityServiceStub(channel).GetCrl(ca_pb2.GetCrlRequest(), timeout=10)
    assert len(reply.crl) == 1024 * 1024


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningStack]:
    """The CA, OTP and enrollment services on free ports with the dev PKI."""
    dev = await start_stack(tmp_path, ports=FREE_PORTS, with_gateway=False)
    try:
        yield dev
    finally:
        await dev.stop(0)


def _tls(stack: RunningStack, name: str) -> TlsFiles:
    return TlsFiles(stack.tls_dir / f"{name}.pem", stack.tls_dir / f"{name}-key.pem", stack.tls_dir / "ca.pem")


def _methods(*files: FileDescriptor) -> list[tuple[str, bool]]:
    """Every RPC of the services in `files`, as (path, server-streaming)."""
    return [
        (f"/{service.full_name}/{method.name}", method.server_streaming)
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    ]


async def _raw_call(channel: grpc.aio.Channel, path: str, streaming: bool, payload: bytes) -> grpc.StatusCode:
    identity: Any = None  # raw bytes both ways
    try:
        if streaming:
            call = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)(
                payload, timeout=10
            )
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)(
                payload, timeout=10
            )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_method_of_every_service_refuses_a_100_kib_request(stack: RunningStack) -> None:
    """On the CA, OTP and enrollment ports, every RPC (IssueCertificate, WatchRevocations, the UserService,
    grpc.health.v1.Health/Check, ...) answers a 100 KiB request RESOURCE_EXHAUSTED, even for the operator."""
    health = [("/grpc.health.v1.Health/Check", False)]
    ports = {
        "ca": _methods(ca_pb2.DESCRIPTOR) + health,
        "otp": _methods(otp_pb2.DESCRIPTOR) + health,
        "enrollment": _methods(enrollment_pb2.DESCRIPTOR, user_pb2.DESCRIPTOR) + health,
    }
    payload = bytes(OVERSIZED)
    for name, methods in ports.items():
        assert len(methods) > 1
        async with open_channel(stack.target(name), _tls(stack, "developer")) as channel:
            codes = await asyncio.gather(*(_raw_call(channel, path, streaming, payload) for path, streaming in methods))
            assert dict(zip((path for path, _ in methods), codes, strict=True)) == {
                path: grpc.StatusCode.RESOURCE_EXHAUSTED for path, _ in methods
            }
            # The port is up and serves requests of a normal size.
            status = await _raw_call(
                channel, "/grpc.health.v1.Health/Check", False, health_pb2.HealthCheckRequest().SerializeToString()
            )
            assert status == grpc.StatusCode.OK


def _padded_csr(size: int) -> bytes:
    csr = make_csr()
    return csr + b"\n" * (size - len(csr))


async def test_csr_and_certificate_carrying_requests_still_fit(stack: RunningStack) -> None:
    """A CSR at the CA's own 16 KiB cap is issued; one over it is refused by the CA (CSR_TOO_LARGE), not by the
    transport; the enrollment service's CSR- and certificate-carrying requests at those caps reach the service
    (a domain answer, never RESOURCE_EXHAUSTED)."""
    assert MAX_CSR_BYTES * 2 < MAX_REQUEST_BYTES
    assert MAX_CERTIFICATE_PEM_BYTES * 2 < MAX_REQUEST_BYTES
    async with open_channel(stack.target("ca"), _tls(stack, "enrollment")) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
        issued = await stub.IssueCertificate(
            ca_pb2.IssueCertificateRequest(
                request_id=uuid.uuid4().hex,
                csr=_padded_csr(MAX_CSR_BYTES),
                profile="customer",
                customer=customer_identity("u-size"),
            )
        )
        assert issued.certificate.state == ca_pb2.Certificate.STATE_ACTIVE
        with pytest.raises(grpc.aio.AioRpcError) as too_large:
            await stub.IssueCertificate(
                ca_pb2.IssueCertificateRequest(
                    request_id=uuid.uuid4().hex,
                    csr=_padded_csr(MAX_CSR_BYTES + 1),
                    profile="customer",
                    customer=customer_identity("u-size"),
                )
            )
        assert too_large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    csr_text = _padded_csr(MAX_CSR_BYTES).decode()
    certificate_text = issued.certificate.certificate_pem.ljust(MAX_CERTIFICATE_PEM_BYTES)
    async with open_channel(stack.target("enrollment"), _tls(stack, "gateway")) as channel:
        enrollment = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
        users = user_pb2_grpc.UserServiceStub(channel)
        calls = [
            enrollment.IssueCertificate(
                enrollment_pb2.IssueCertificateRequest(
                    request_id=uuid.uuid4().hex, enrollment_id="e" * 36, session_token="s" * 64, csr_pem=csr_text
                ),
                timeout=10,
            ),
            users.RenewCertificate(
                user_pb2.RenewCertificateRequest(
                    request_id=uuid.uuid4().hex, access_token="a" * 2048, csr_pem=csr_text, login_password="p" * 128
                ),
                timeout=10,
            ),
            users.Authenticate(
                user_pb2.AuthenticateRequest(
                    client_certificate_pem=certificate_text, login_id="suzuki42", login_password="p" * 128
                ),
                timeout=10,
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await call
            assert answered.value.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
