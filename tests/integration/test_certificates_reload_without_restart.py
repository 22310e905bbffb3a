"""Certificates are rotated without a restart and without a failed call.

A service's certificate is replaced the way an operator does it (`kagi admin issue-credential --force` into
the same directory: each file renamed over the old one) while a client keeps making real calls: no call fails,
and new handshakes show the new certificate's serial (openssl s_client). A client's certificate is replaced
the same way under load: its channel moves to the new one, and once the old certificate is revoked (which every
service then refuses) the calls still succeed. A pair that does not check out (a key of another certificate)
never takes effect, and SIGHUP makes a process read its files again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.main import cli
from kagi.cli.stack import FREE_PORTS, RunningStack, start_stack
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime import tls_reload
from kagi.runtime.grpc_client import ReloadingChannel, open_channel
from kagi.runtime.serve import serve_until_signalled
from kagi.runtime.settings import TlsFiles, role_dns_name
from tests.support.rotation import replace_file, serial_of, served_certificate

DEADLINE = 60.0


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningStack]:
    """The CA, OTP and enrollment services on free ports with the dev PKI's credentials."""
    dev = await start_stack(tmp_path, ports=FREE_PORTS, with_gateway=False, management="off")
    try:
        yield dev
    finally:
        await dev.stop(0)


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` for up to DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not await condition():
        if loop.time() > end:
            raise AssertionError(f"not within {DEADLINE:.0f} s: {what}")
        await asyncio.sleep(0.2)


async def _issue_credential(stack: RunningStack, role: str, files: TlsFiles) -> None:
    """Run `kagi admin issue-credential --force` for `role` into the files in use (in a thread: the services
    answer on this test's loop)."""
    name = files.cert_file.name.removesuffix(".pem")
    args = ["admin", "issue-credential", "--role", role, "--name", name, "--out", str(files.cert_file.parent)]
    args += ["--dns", "localhost", "--ip", "127.0.0.1", "--force", "--json"]
    env = {"KAGI_STATE_DIR": str(stack.state_dir), "KAGI_CA_TARGET": stack.target("ca")}
    result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
    assert result.exit_code == 0, result.output


class Load:
    """Real calls (GetToken) one after another on one channel until stopped; counts successes, keeps failures."""

    def __init__(self, channel: grpc.aio.Channel, token_id: str) -> None:
        self._stub = otp_pb2_grpc.OtpServiceStub(channel)
        self._token_id = token_id
        self.succeeded = 0
        self.failures: list[str] = []
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._stub.GetToken(otp_pb2.GetTokenRequest(token_id=self._token_id), timeout=30)
                self.succeeded += 1
            except grpc.aio.AioRpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stopping.set()
        await self._task


async def _token(channel: grpc.aio.Channel) -> str:
    created = await otp_pb2_grpc.OtpServiceStub(channel).CreateToken(
        otp_pb2.CreateTokenRequest(
            user_id=f"u-{uuid.uuid4().hex[:8]}", delivery_email="taro@example.jp", usage_start_password="12345678"
        ),
        timeout=30,
    )
    return str(created.token.token_id)


def _s_client_identity(stack: RunningStack) -> list[str]:
    """openssl options for a gRPC port: HTTP/2 (ALPN h2), the developer's credential (the services ask every
    caller for one) and kagi's root."""
    return [
        *("-alpn", "h2", "-CAfile", str(stack.pki.root)),
        *("-cert", str(stack.pki.certificate("operator")), "-key", str(stack.pki.key("operator"))),
    ]


async def test_a_services_certificate_is_rotated_under_load(stack: RunningStack) -> None:
    """The OTP service's credential is reissued into its files while calls run: none fails, and new
    handshakes present the new serial, with no restart."""
    files = stack.pki.tls("otp")
    old = serial_of(files.cert_file.read_text())
    port = stack.ports["otp"]
    assert serial_of(await served_certificate(port, extra=_s_client_identity(stack))) == old
    channel = open_channel(stack.target("otp"), stack.pki.tls("enrollment"), server_name=role_dns_name("otp"))
    try:
        load = Load(channel, await _token(channel))
        await _until(lambda: _positive(load), "the load makes calls")
        await _issue_credential(stack, "otp", files)
        new = serial_of(files.cert_file.read_text())
        assert new != old

        async def presents_new() -> bool:
            return serial_of(await served_certificate(port, extra=_s_client_identity(stack))) == new

        await _until(presents_new, "new handshakes present the new certificate")
        # New connections of kagi's own clients get it too, and work.
        async with open_channel(f"127.0.0.1:{port}", stack.pki.tls("enrollment"), server_name="otp.kagi.internal") as c:
            await otp_pb2_grpc.OtpServiceStub(c).GetToken(otp_pb2.GetTokenRequest(token_id=load._token_id), timeout=30)
        calls_before = load.succeeded
        await _until(lambda: _more(load, calls_before + 20), "calls go on after the rotation")
        await load.stop()
    finally:
        await channel.close()
    assert load.failures == []


async def test_a_clients_certificate_is_rotated_under_load(stack: RunningStack) -> None:
    """The enrollment service's credential (a client of the OTP service here) is reissued under load: the
    channel moves to the new certificate; the old one is then revoked, and calls still all succeed."""
    files = stack.pki.tls("enrollment")
    old = serial_of(files.cert_file.read_text())
    channel = open_channel(stack.target("otp"), files, server_name=role_dns_name("otp"))
    assert isinstance(channel, ReloadingChannel)
    try:
        load = Load(channel, await _token(channel))
        await _until(lambda: _positive(load), "the load makes calls")
        await _issue_credential(stack, "enrollment", files)
        new = serial_of(files.cert_file.read_text())

        async def moved() -> bool:
            return channel.certificate_serial == new

        await _until(moved, "the channel presents the new certificate")
        async with open_channel(stack.target("ca"), stack.pki.tls("operator"), server_name="ca.kagi.internal") as ca:
            await ca_pb2_grpc.CertificateAuthorityServiceStub(ca).RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    request_id=uuid.uuid4().hex,
                    serial_number=format(old, "x"),
                    reason=ca_pb2.REVOCATION_REASON_SUPERSEDED,
                ),
                timeout=30,
            )
        calls_before = load.succeeded
        await asyncio.sleep(3)  # past the 2 s within which every service refuses a revoked caller
        await _until(lambda: _more(load, calls_before + 20), "calls go on after the old certificate is revoked")
        await load.stop()
    finally:
        await channel.close()
    assert load.failures == []


async def test_a_pair_that_does_not_match_never_takes_effect(stack: RunningStack, tmp_path: Path) -> None:
    """A key file replaced by another certificate's key: the server keeps presenting its old certificate and
    calls keep working; once the matching pair is in place, it is taken."""
    files = stack.pki.tls("otp")
    old = serial_of(files.cert_file.read_text())
    port = stack.ports["otp"]
    original_key = files.key_file.read_bytes()
    replace_file(files.key_file, stack.pki.key("gateway").read_bytes())
    await asyncio.sleep(tls_reload.CHECK_INTERVAL_SECONDS * 2)
    for _ in range(3):
        assert serial_of(await served_certificate(port, extra=_s_client_identity(stack))) == old
    async with open_channel(stack.target("otp"), stack.pki.tls("enrollment"), server_name="otp.kagi.internal") as c:
        await _token(c)
    replace_file(files.key_file, original_key)
    async with open_channel(stack.target("otp"), stack.pki.tls("enrollment"), server_name="otp.kagi.internal") as c:
        await _token(c)


async def test_sighup_reloads_at_once(tmp_path: Path) -> None:
    """Under `kagi serve`'s signal handling, SIGHUP asks every watcher to read its files at its next use."""
    seen: list[int] = []

    class Component:
        async def stop(self, grace: float = 5.0) -> None:
            """Stop nothing."""

    async def start() -> Component:
        before = tls_reload._reload_requests
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.2)
        seen.append(tls_reload._reload_requests - before)
        os.kill(os.getpid(), signal.SIGTERM)
        return Component()

    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(serve_until_signalled(start, grace=0), timeout=30)
    assert seen == [1]


async def _positive(load: Load) -> bool:
    return load.succeeded > 0 or bool(load.failures)


async def _more(load: Load, count: int) -> bool:
    return load.succeeded >= count or bool(load.failures)
