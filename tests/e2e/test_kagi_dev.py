"""`kagi dev` as a developer runs it: one command brings up the three services and the gateway on the design's
ports with a CA and credentials under the state directory; grpcurl lists the services with the printed
credentials; Ctrl-C stops it cleanly; a second start reuses the same CA."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path

import pytest

from tests.support.tools import run, tool

PORTS = (50051, 50052, 50053, 8443, 8080, 9090)


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def _start(state: Path) -> asyncio.subprocess.Process:
    errors = state.parent / f"kagi-dev-{state.name}.stderr"
    with errors.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            tool("kagi"), "dev", "--state-dir", str(state), stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    assert process.stdout is not None
    banner = b""
    async with asyncio.timeout(60):
        while b"Press Ctrl-C to stop." not in banner:
            line = await process.stdout.readline()
            if not line:
                await process.wait()
                tail = errors.read_text(errors="replace")[-3000:]
                raise AssertionError(f"kagi dev exited early ({process.returncode}): {banner.decode()}\n{tail}")
            banner += line
    return process


async def _stop(process: asyncio.subprocess.Process) -> bytes:
    process.send_signal(signal.SIGINT)
    assert process.stdout is not None
    async with asyncio.timeout(30):
        rest = await process.stdout.read()
        assert await process.wait() == 0
    return rest


async def test_kagi_dev_runs_everything_and_grpcurl_reaches_it(tmp_path: Path) -> None:
    """The printed grpcurl line works against the enrollment service, health answers SERVING on every service,
    the gateway answers /healthz, the one management listener (127.0.0.1:9090) answers /readyz for every
    component and /metrics, and SIGINT stops everything with exit status 0."""
    if not all(_free(port) for port in PORTS):
        pytest.fail(f"kagi dev needs ports {PORTS} free on 127.0.0.1")
    state = tmp_path / ".kagi"
    process = await _start(state)
    try:
        tls = state / "tls"
        creds = [
            "-cacert",
            str(tls / "ca.pem"),
            "-cert",
            str(tls / "developer.pem"),
            "-key",
            str(tls / "developer-key.pem"),
        ]
        listed = (await run([tool("grpcurl"), *creds, "localhost:50053", "list"])).split()
        assert "kagi.enrollment.v1.EnrollmentService" in listed
        for port in (50051, 50052, 50053):
            health = json.loads(
                await run([tool("grpcurl"), *creds, f"localhost:{port}", "grpc.health.v1.Health/Check"])
            )
            assert health["status"] == "SERVING"
        ready = json.loads(await run([tool("curl"), "-sS", "http://127.0.0.1:9090/readyz"]))
        assert ready["ready"] is True
        assert sorted(ready["components"]) == ["ca", "enrollment", "gateway", "otp"]
        metrics = await run([tool("curl"), "-sS", "http://127.0.0.1:9090/metrics"])
        assert "kagi_gateway_http_requests_total" in metrics
        health = await run([tool("curl"), "-sS", "--cacert", str(tls / "ca.pem"), "https://localhost:8443/healthz"])
        assert json.loads(health) == {"status": "ok"}
        root = await run([tool("curl"), "-sS", "http://127.0.0.1:8080/pki/ca.pem"])
        assert root == (tls / "ca.pem").read_text()
    finally:
        rest = await _stop(process)
    assert b"kagi dev stopped." in rest
    assert all(_free(port) for port in PORTS)

    first_root = (state / "tls" / "ca.pem").read_bytes()
    process = await _start(state)
    await _stop(process)
    assert (state / "tls" / "ca.pem").read_bytes() == first_root
