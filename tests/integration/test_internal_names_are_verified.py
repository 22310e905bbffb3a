"""Internal clients verify the role name of the server they reach, not the address they dialled: every internal
server certificate carries `<role>.kagi.internal`, and a client expecting the CA refuses a server whose valid
internal certificate names another role (the OTP service answering on the CA's address), while the right server
is accepted whether it is dialled as 127.0.0.1 or as localhost. The clients are kagi's own: `kagi admin`'s and
the gateway's (the enrollment service opens its channels the same way)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.main import start_gateway
from kagi.cli.admin import AdminContext
from kagi.cli.main import cli
from kagi.cli.stack import FREE_PORTS, RunningStack, start_stack
from kagi.errors import Unavailable
from kagi.runtime.settings import role_dns_name


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningStack]:
    """The CA, OTP and enrollment services on free ports with the dev PKI's certificates."""
    dev = await start_stack(tmp_path, ports=FREE_PORTS, with_gateway=False, management="off")
    try:
        yield dev
    finally:
        await dev.stop(0)


async def _health(ctx: AdminContext, service: str) -> str:
    """Ask a service's health through `kagi admin`'s channel: SERVING, or the code of the failed call."""
    async with ctx.channel(service) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_every_dev_server_certificate_carries_its_role_name(stack: RunningStack) -> None:
    """The CA, OTP and enrollment certificates name `ca.kagi.internal`, `otp.kagi.internal` and
    `enrollment.kagi.internal` (and localhost for tools that check the address they dialled)."""
    for role in ("ca", "otp", "enrollment"):
        leaf = x509.load_pem_x509_certificate(stack.pki.certificate(role).read_bytes())
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", role_dns_name(role)}


async def test_the_right_server_is_accepted_by_any_address(stack: RunningStack) -> None:
    """`kagi admin` reaches each service whether its target says 127.0.0.1 or localhost: it checks the role
    name, which the certificate carries, not the address."""
    for host in ("127.0.0.1", "localhost"):
        targets = {role: f"{host}:{stack.ports[role]}" for role in ("ca", "otp", "enrollment")}
        ctx = AdminContext(stack.state_dir, stack.pki.operator, targets)
        for role in targets:
            assert await _health(ctx, role) == "SERVING", (host, role)


async def test_a_valid_certificate_of_another_role_is_refused(stack: RunningStack) -> None:
    """The OTP service answering where the CA is expected presents a valid internal certificate that lacks
    `ca.kagi.internal`: the handshake fails and no call goes through, with either address."""
    for host in ("127.0.0.1", "localhost"):
        ctx = AdminContext(stack.state_dir, stack.pki.operator, {"ca": f"{host}:{stack.ports['otp']}"})
        assert await _health(ctx, "ca") == "UNAVAILABLE", host


async def test_kagi_admin_refuses_a_server_of_another_role(stack: RunningStack) -> None:
    """The command line says the CA is unreachable when the OTP service answers at KAGI_CA_TARGET, and lists
    certificates when the CA does (the command runs in a thread: the services answer on this test's loop)."""

    def list_certificates(port: int) -> Result:
        env = {"KAGI_STATE_DIR": str(stack.state_dir), "KAGI_CA_TARGET": f"127.0.0.1:{port}"}
        return CliRunner().invoke(cli, ["admin", "list-certificates", "--subject", "ca", "--json"], env=env)

    refused = await asyncio.to_thread(list_certificates, stack.ports["otp"])
    assert refused.exit_code != 0
    assert "SERVICE_UNAVAILABLE" in refused.output
    listed = await asyncio.to_thread(list_certificates, stack.ports["ca"])
    assert listed.exit_code == 0, listed.output
    assert '"subject_id": "ca"' in listed.output


async def test_the_gateway_refuses_an_impostor_ca(stack: RunningStack) -> None:
    """A gateway whose CA target is the OTP service never gets the customer CA (it fetches it from the CA at
    start) and gives up; one whose targets say 127.0.0.1 starts."""
    impostor = stack.gateway_settings(
        ca_target=f"127.0.0.1:{stack.ports['otp']}", https_port=0, http_port=None, startup_timeout_seconds=3.0
    )
    with pytest.raises(Unavailable):
        await start_gateway(impostor)
    right = stack.gateway_settings(
        ca_target=f"127.0.0.1:{stack.ports['ca']}",
        otp_target=f"127.0.0.1:{stack.ports['otp']}",
        enrollment_target=f"127.0.0.1:{stack.ports['enrollment']}",
        https_port=0,
        http_port=None,
    )
    gateway = await start_gateway(right)
    try:
        health = await gateway.context.backends.health()
        assert health == {"ca": "SERVING", "otp": "SERVING", "enrollment": "SERVING"}
    finally:
        await gateway.stop(0)
