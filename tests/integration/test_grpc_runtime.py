"""The shared gRPC stack: mTLS is required, each RPC's allow-list is enforced by role, domain errors become
status codes with ErrorInfo, unknown errors leak nothing, and health and reflection answer grpcurl."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.errors import InvalidArgument, KagiError
from kagi.runtime.grpc_client import error_from_rpc, open_channel, request_metadata
from kagi.runtime.grpc_server import GrpcServer, ServiceBinding, current_caller
from kagi.runtime.identity import Role, allow
from kagi.runtime.logging import request_id_var
from kagi.runtime.settings import ListenSettings, TlsFiles
from tests.support.tls import TestPki
from tests.support.tools import run, tool

SERVICE = "kagi.ca.v1.CertificateAuthorityService"


class _Probe(ca_pb2_grpc.CertificateAuthorityServiceServicer):
    """A servicer whose methods exercise the stack rather than a CA."""

    async def GetCertificate(
        self, request: ca_pb2.GetCertificateRequest, context: object
    ) -> ca_pb2.GetCertificateResponse:
        role = current_caller().role
        return ca_pb2.GetCertificateResponse(
            certificate=ca_pb2.Certificate(serial_number=request.serial_number, subject_id=role.value if role else "")
        )

    async def ListCertificates(
        self, request: ca_pb2.ListCertificatesRequest, context: object
    ) -> ca_pb2.ListCertificatesResponse:
        raise InvalidArgument("bad page", reason="BAD_PAGE", fields={"page_size": "must be between 1 and 1000"})

    async def GetCrl(self, request: ca_pb2.GetCrlRequest, context: object) -> ca_pb2.GetCrlResponse:
        raise RuntimeError("secret internals: /var/lib/kagi/ca-key.pem")

    async def GetCaCertificates(
        self, request: ca_pb2.GetCaCertificatesRequest, context: object
    ) -> ca_pb2.GetCaCertificatesResponse:
        return ca_pb2.GetCaCertificatesResponse(root_pem=request_id_var.get())


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create()


@pytest.fixture
def identities(pki: TestPki, tmp_path: Path) -> dict[str, TlsFiles]:
    files = {
        role: pki.write(tmp_path / role, role, pki.service(role), pki.internal)
        for role in ("ca", "operator", "enrollment", "gateway")
    }
    files["customer"] = pki.write(tmp_path / "customer", "customer", pki.customer_leaf("u1"), pki.customer)
    return files


@pytest.fixture
async def server(identities: dict[str, TlsFiles]) -> AsyncIterator[GrpcServer]:
    binding = ServiceBinding(
        name=SERVICE,
        register=lambda s: ca_pb2_grpc.add_CertificateAuthorityServiceServicer_to_server(_Probe(), s),
        allowed_roles={
            "GetCertificate": allow(Role.OPERATOR, Role.ENROLLMENT),
            "ListCertificates": allow(Role.OPERATOR),
            "GetCrl": allow(Role.OPERATOR),
            "GetCaCertificates": allow(Role.OPERATOR),
        },
    )
    srv = GrpcServer(ListenSettings("127.0.0.1", 0, identities["ca"]), [binding], domain="ca.kagi")
    await srv.start()
    yield srv
    await srv.stop(0)


def _stub(server: GrpcServer, tls: TlsFiles) -> tuple[grpc.aio.Channel, ca_pb2_grpc.CertificateAuthorityServiceStub]:
    channel = open_channel(f"localhost:{server.port}", tls)
    return channel, ca_pb2_grpc.CertificateAuthorityServiceStub(channel)


async def test_allowed_role_is_served_and_sees_its_identity(
    server: GrpcServer, identities: dict[str, TlsFiles]
) -> None:
    """An operator certificate may call GetCertificate and the servicer sees the caller's SPIFFE role."""
    channel, stub = _stub(server, identities["operator"])
    async with channel:
        reply = await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number="0a"))
    assert reply.certificate.subject_id == "operator"


async def test_role_outside_the_allow_list_is_permission_denied(
    server: GrpcServer, identities: dict[str, TlsFiles]
) -> None:
    """The gateway's identity is not on GetCertificate's list: PERMISSION_DENIED with reason CALLER_NOT_ALLOWED."""
    channel, stub = _stub(server, identities["gateway"])
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number="0a"))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_from_rpc(failure.value).reason == "CALLER_NOT_ALLOWED"


async def test_method_missing_from_the_table_is_denied_to_everyone(
    server: GrpcServer, identities: dict[str, TlsFiles]
) -> None:
    """IssueCertificate has no allow-list entry in this server, so even an operator is refused (deny by default)."""
    channel, stub = _stub(server, identities["operator"])
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.IssueCertificate(ca_pb2.IssueCertificateRequest(request_id="r"))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_customer_certificate_is_never_a_service_identity(
    server: GrpcServer, identities: dict[str, TlsFiles]
) -> None:
    """A customer-CA certificate chains to the same root, but the server trusts only the internal CA: the TLS
    handshake fails (UNAVAILABLE) and nothing is served."""
    channel, stub = _stub(server, identities["customer"])
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number="0a"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_no_client_certificate_fails_the_handshake(server: GrpcServer, identities: dict[str, TlsFiles]) -> None:
    """Without a client certificate the mTLS handshake fails and nothing is served."""
    credentials = grpc.ssl_channel_credentials(root_certificates=identities["operator"].ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number="0a"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_domain_error_carries_reason_and_field_violations(
    server: GrpcServer, identities: dict[str, TlsFiles]
) -> None:
    """A domain InvalidArgument arrives as INVALID_ARGUMENT with ErrorInfo reason and a BadRequest per field."""
    channel, stub = _stub(server, identities["operator"])
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.ListCertificates(ca_pb2.ListCertificatesRequest())
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc(failure.value)
    assert isinstance(error, InvalidArgument)
    assert error.reason == "BAD_PAGE"
    assert error.fields == {"page_size": "must be between 1 and 1000"}


async def test_unexpected_exception_is_internal_and_leaks_nothing(
    server: GrpcServer, identities: dict[str, TlsFiles]
) -> None:
    """An unexpected exception becomes INTERNAL with the bare message 'internal error': no path, no trace."""
    channel, stub = _stub(server, identities["operator"])
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetCrl(ca_pb2.GetCrlRequest())
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details() == "internal error"
    assert type(error_from_rpc(failure.value)) is KagiError


async def test_request_id_is_carried_to_the_server(server: GrpcServer, identities: dict[str, TlsFiles]) -> None:
    """The client's current request id travels in metadata and is the server's request id too."""
    channel, stub = _stub(server, identities["operator"])
    token = request_id_var.set("req-1234")
    try:
        async with channel:
            reply = await stub.GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    finally:
        request_id_var.reset(token)
    assert reply.root_pem == "req-1234"


async def test_request_id_is_carried_by_a_channel_without_interceptor(
    server: GrpcServer, identities: dict[str, TlsFiles]
) -> None:
    """A channel opened with request_ids=False sends the current request id when each call passes
    `request_metadata()`, as the enrollment service's clients do."""
    channel = open_channel(
        f"localhost:{server.port}", identities["operator"], server_name="localhost", request_ids=False
    )
    stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
    token = request_id_var.set("req-5678")
    try:
        async with channel:
            reply = await stub.GetCaCertificates(ca_pb2.GetCaCertificatesRequest(), metadata=request_metadata())
    finally:
        request_id_var.reset(token)
    assert reply.root_pem == "req-5678"


async def test_health_reports_serving(server: GrpcServer, identities: dict[str, TlsFiles]) -> None:
    """The standard health service answers SERVING for the server and for each kagi service on it."""
    channel = open_channel(f"localhost:{server.port}", identities["gateway"])
    async with channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_readiness_failure_reports_not_serving(identities: dict[str, TlsFiles]) -> None:
    """When the readiness probe fails (a store that is down), health says NOT_SERVING, and SERVING once it recovers."""
    state = {"up": False}

    async def probe() -> None:
        if not state["up"]:
            raise ConnectionError("store down")

    srv = GrpcServer(
        ListenSettings("127.0.0.1", 0, identities["ca"]), [], domain="t", readiness=probe, readiness_interval=60
    )
    await srv.start()
    try:
        async with open_channel(f"localhost:{srv.port}", identities["operator"]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            state["up"] = True
            assert await srv.check_readiness()
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await srv.stop(0)


def test_plaintext_is_refused_off_loopback() -> None:
    """Plaintext mode is for loopback development only: any other bind address is a configuration error."""
    with pytest.raises(InvalidArgument) as failure:
        ListenSettings("0.0.0.0", 50051, None)  # noqa: S104 - the point is that this is refused
    assert "host" in failure.value.fields
    ListenSettings("::1", 50051, None)


async def test_grpcurl_lists_services_through_reflection(server: GrpcServer, identities: dict[str, TlsFiles]) -> None:
    """grpcurl, a real third-party client, lists the services via reflection and checks health over mTLS."""
    grpcurl = tool("grpcurl")
    tls = identities["operator"]
    base = [grpcurl, "-cacert", str(tls.ca_file), "-cert", str(tls.cert_file), "-key", str(tls.key_file)]
    target = f"localhost:{server.port}"
    listed = await run([*base, target, "list"])
    assert SERVICE in listed.split()
    assert "grpc.health.v1.Health" in listed.split()
    checked = await run([*base, target, "grpc.health.v1.Health/Check"])
    assert json.loads(checked)["status"] == "SERVING"
