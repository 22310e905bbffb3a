"""A revoked internal credential is refused by every service: the CA, the OTP service and the enrollment service
refuse its calls (UNAUTHENTICATED, CALLER_CERTIFICATE_REVOKED) within the design's 2 s of `kagi admin revoke`,
on new connections and on a connection it opened before, while other credentials keep working; the OTP and
enrollment services learn it from the CA's revocation stream, the CA from its own records. With the CA gone,
the services fail closed (UNAVAILABLE, CALLER_REVOCATION_UNKNOWN) instead of trusting a caller they cannot check,
and the revoked credential stays refused.

The stack runs for real on free ports with mTLS (in this process, or as `kagi serve` processes with two workers
each on Redis); the credentials are issued and revoked by the real `kagi admin` program; the clients are grpc.aio
channels with each credential's files."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.stack import FREE_PORTS, RunningStack, start_stack
from kagi.enrollment.v1 import enrollment_pb2, enrollment_pb2_grpc
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import TlsFiles, role_dns_name
from tests.conftest import RedisServer
from tests.support.reliability import Cluster, Recorder
from tests.support.tools import run, tool

SERVICES = ("ca", "otp", "enrollment")
POLL_LIMIT = 10.0
"""How long the test waits for a refusal: generous on a loaded machine (the design promises 2 s)."""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningStack]:
    """The CA, OTP and enrollment services on free ports with mTLS, as `kagi dev` runs them."""
    running = await start_stack(tmp_path / "kagi", ports=FREE_PORTS, with_gateway=False, management="off")
    try:
        yield running
    finally:
        await running.stop(0)


@dataclass(frozen=True)
class Admin:
    """`kagi admin` as the operator of a running stack: its state directory (the operator's files) and CA."""

    state_dir: Path
    ports: Mapping[str, int]

    def env(self) -> dict[str, str]:
        """Return the environment the commands run in (nothing of the test's own KAGI_ variables)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGI_")}
        env["KAGI_CA_TARGET"] = f"localhost:{self.ports['ca']}"
        return env

    async def issue(self, out: Path, name: str) -> tuple[TlsFiles, str]:
        """Issue an `operator` credential (allowed on all three services); return its files and serial."""
        reply = await run(
            [tool("kagi"), "admin", "--state-dir", str(self.state_dir), "issue-credential", "--role", "operator",
             "--name", name, "--out", str(out), "--json"],
            env=self.env(),
        )  # fmt: skip
        summary = json.loads(reply)
        tls = TlsFiles(Path(summary["certificate_file"]), Path(summary["key_file"]), Path(summary["ca_file"]))
        return tls, str(summary["serial_number"])

    async def revoke(self, serial: str, reason: str = "keyCompromise") -> None:
        """Revoke SERIAL with `kagi admin revoke`."""
        await run(
            [tool("kagi"), "admin", "--state-dir", str(self.state_dir), "revoke", "--serial", serial,
             "--reason", reason, "--yes"],
            env=self.env(),
        )  # fmt: skip


def _admin(stack: RunningStack) -> Admin:
    return Admin(stack.state_dir, stack.ports)


@dataclass
class Client:
    """One credential's channels to the three services; `fresh` opens new ones (a new connection each)."""

    ports: Mapping[str, int]
    tls: TlsFiles
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    opened: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, service: str, *, fresh: bool = False) -> grpc.aio.Channel:
        """Return this credential's channel to SERVICE (a new one when `fresh`)."""
        if fresh or service not in self.channels:
            channel = open_channel(f"localhost:{self.ports[service]}", self.tls, server_name=role_dns_name(service))
            self.opened.append(channel)
            if not fresh:
                self.channels[service] = channel
            return channel
        return self.channels[service]

    async def call(self, service: str, *, fresh: bool = False) -> str:
        """Make one operator call; return "served" (any answer past authentication) or "CODE REASON"."""
        channel = self.channel(service, fresh=fresh)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "ca": lambda: ca_pb2_grpc.CertificateAuthorityServiceStub(channel).ListCertificates(
                ca_pb2.ListCertificatesRequest(subject_id="operator", page_size=1), timeout=10
            ),
            "otp": lambda: otp_pb2_grpc.OtpServiceStub(channel).ListTokens(
                otp_pb2.ListTokensRequest(user_id="u-nobody"), timeout=10
            ),
            "enrollment": lambda: enrollment_pb2_grpc.EnrollmentServiceStub(channel).ListApplications(
                enrollment_pb2.ListApplicationsRequest(page_size=1), timeout=10
            ),
        }
        try:
            await calls[service]()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAVAILABLE,
            ):
                return "served"  # refused by the method (an unknown user...), so the caller got through
            return f"{exc.code().name} {_reason(exc)}"
        if fresh:
            await channel.close()
        return "served"

    async def close(self) -> None:
        """Close every channel."""
        for channel in self.opened:
            await channel.close()


def _reason(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is None:
        return exc.details() or ""
    from google.rpc import error_details_pb2

    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return status.message


async def _until(answer: Callable[[], Awaitable[str]], expected: str) -> float:
    """Poll until `answer()` gives `expected`; return how long that took (fail after POLL_LIMIT seconds)."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < POLL_LIMIT:
        last = await answer()
        if last == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {last!r} after {POLL_LIMIT} s, expected {expected!r}")


async def test_a_revoked_credential_is_refused_by_every_service_on_old_and_new_connections(
    stack: RunningStack, tmp_path: Path
) -> None:
    """An extra operator credential made with `kagi admin issue-credential` calls the CA, the OTP service and the
    enrollment service; `kagi admin revoke` revokes it (keyCompromise); then each service refuses it,
    UNAUTHENTICATED with reason CALLER_CERTIFICATE_REVOKED, on the connection it had opened before and on new
    connections, within a poll of at most 10 s (the measured time is printed: the design's bound is 2 s). A
    second credential of the same role, and the stack's own operator credential, keep being served."""
    admin = _admin(stack)
    revoked_tls, serial = await admin.issue(tmp_path / "creds", "doomed")
    other_tls, _ = await admin.issue(tmp_path / "creds", "other")
    doomed, other = Client(stack.ports, revoked_tls), Client(stack.ports, other_tls)
    own = Client(stack.ports, stack.pki.operator)
    try:
        for service in SERVICES:
            assert await doomed.call(service) == "served", service
            assert await other.call(service) == "served", service

        started = time.monotonic()
        await admin.revoke(serial)
        acknowledged = time.monotonic()

        refused = "UNAUTHENTICATED CALLER_CERTIFICATE_REVOKED"
        latencies: dict[str, float] = {}
        for service in SERVICES:

            async def both(service: str = service) -> str:
                existing = await doomed.call(service)
                fresh = await doomed.call(service, fresh=True)
                return existing if existing == fresh else f"existing {existing!r}, new {fresh!r}"

            await _until(both, refused)
            latencies[service] = time.monotonic() - acknowledged
        # The measured figures (docs/operations.md quotes them): from the revocation's acknowledgement.
        print(
            f"`kagi admin revoke` took {acknowledged - started:.2f} s; the revoked credential was refused, on its "
            "old and a new connection, after: " + ", ".join(f"{name} {s:.3f} s" for name, s in latencies.items())
        )
        for service in SERVICES:
            assert await doomed.call(service, fresh=True) == refused, service
            assert await other.call(service) == "served", service
            assert await other.call(service, fresh=True) == "served", service
            assert await own.call(service) == "served", service
    finally:
        for client in (doomed, other, own):
            await client.close()


async def test_without_the_ca_the_services_fail_closed_and_a_revoked_credential_stays_refused(
    stack: RunningStack, tmp_path: Path
) -> None:
    """Once the CA is stopped, the OTP and enrollment services cannot follow its revocations nor ask it: a call
    with a valid credential is UNAVAILABLE (CALLER_REVOCATION_UNKNOWN), which callers retry, never served
    unchecked; a credential revoked before stays UNAUTHENTICATED (CALLER_CERTIFICATE_REVOKED). The services'
    metric `kagi_internal_revocation_stream_connected` says 1 while they follow the stream, 0 once it is gone."""
    admin = _admin(stack)
    revoked_tls, serial = await admin.issue(tmp_path / "creds", "doomed")
    valid_tls, _ = await admin.issue(tmp_path / "creds", "valid")
    doomed, valid = Client(stack.ports, revoked_tls), Client(stack.ports, valid_tls)
    try:
        await admin.revoke(serial)
        for service in ("otp", "enrollment"):
            await _until(lambda service=service: doomed.call(service), "UNAUTHENTICATED CALLER_CERTIFICATE_REVOKED")
            assert await valid.call(service) == "served"

        assert REGISTRY.get_sample_value("kagi_internal_revocation_stream_connected") == 1
        await stack.components.pop("ca").stop(0)
        for service in ("otp", "enrollment"):
            await _until(lambda service=service: valid.call(service), "UNAVAILABLE CALLER_REVOCATION_UNKNOWN")
            assert await doomed.call(service) == "UNAUTHENTICATED CALLER_CERTIFICATE_REVOKED"
        assert REGISTRY.get_sample_value("kagi_internal_revocation_stream_connected") == 0
    finally:
        await doomed.close()
        await valid.close()


async def test_kagi_serve_processes_with_two_workers_each_refuse_a_revoked_credential(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """The CA, OTP and enrollment services (and the gateway) run as `kagi serve` processes on Redis with two
    worker processes each, every worker following the revocation stream itself. After `kagi admin revoke`,
    the revoked credential is refused by each service on its old connection and on 20 new connections in a row
    (whichever worker takes each one), within a poll of at most 10 s; another credential is still served.
    The measured time is printed."""
    cluster = Cluster(tmp_path / "cluster", redis_factory(), Recorder())
    clients: list[Client] = []
    try:
        await cluster.start({f"KAGI_{c}_WORKERS": "2" for c in ("CA", "OTP", "ENROLLMENT")})
        assert cluster.pki is not None
        admin = Admin(cluster.pki.state_dir, cluster.ports)
        revoked_tls, serial = await admin.issue(tmp_path / "creds", "doomed")
        other_tls, _ = await admin.issue(tmp_path / "creds", "other")
        doomed, other = Client(cluster.ports, revoked_tls), Client(cluster.ports, other_tls)
        clients += [doomed, other]
        for service in SERVICES:
            assert await doomed.call(service) == "served", service

        await admin.revoke(serial)
        acknowledged = time.monotonic()
        refused = "UNAUTHENTICATED CALLER_CERTIFICATE_REVOKED"
        latencies: dict[str, float] = {}
        for service in SERVICES:

            async def everywhere(service: str = service) -> str:
                answers = {await doomed.call(service)} | {await doomed.call(service, fresh=True) for _ in range(20)}
                return answers.pop() if len(answers) == 1 else f"mixed: {sorted(answers)}"

            await _until(everywhere, refused)
            latencies[service] = time.monotonic() - acknowledged
        print(
            "two workers per service: the revoked credential was refused on its old and 20 new connections after: "
            + ", ".join(f"{name} {s:.3f} s" for name, s in latencies.items())
        )
        for service in SERVICES:
            assert await other.call(service, fresh=True) == "served", service
    finally:
        for client in clients:
            await client.close()
        cluster.stop()
