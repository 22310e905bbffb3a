"""`kagi serve otp` with KAGI_OTP_WORKERS=2: the workers share the gRPC port and the management port, and a scrape
of /metrics, whichever worker answers it, counts the gRPC calls every worker served (prometheus-client's
multiprocess mode) and shows each live worker's process figures (kagi_worker_*, one series per pid)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kagi.cli.stack import RunningStack, start_stack
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from tests.support.ports import free_port
from tests.support.tools import tool

CALLS = 24
METHOD = {"grpc_service": "kagi.otp.v1.OtpService", "grpc_method": "GetToken"}


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[RunningStack]:
    """Return the CA, OTP and enrollment services on free ports (no gateway), the OTP service stopped: the test
    runs its own, in two worker processes, on the same store."""
    stack = await start_stack(tmp_path / "state", ports={}, with_gateway=False, management="off")
    await stack.components.pop("otp").stop(0)
    yield stack
    await stack.stop(0)


async def _scrape(url: str) -> tuple[float, dict[str, float]]:
    """One scrape on a new connection: the GetToken calls counted, and each worker's memory by pid."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(url) as response,
    ):
        assert response.status == 200
        text = await response.text()
    calls = 0.0
    memory: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kagi_grpc_server_calls_total" and METHOD.items() <= sample.labels.items():
                calls += sample.value
            elif sample.name == "kagi_worker_resident_memory_bytes":
                memory[sample.labels["pid"]] = sample.value
    return calls, dict(memory)


async def test_a_scrape_sees_the_calls_of_every_worker(services: RunningStack, tmp_path: Path) -> None:
    """Two OTP workers behind one port: CALLS calls, each on a new connection (the kernel spreads them over the
    workers); then eight scrapes of the shared management port, landing on either worker, each count exactly
    CALLS calls of GetToken (an unknown token: refused) and show the resident memory of two live worker pids. SIGTERM
    stops the set with status 0."""
    grpc_port, management_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= services.env | {
        "KAGI_OTP_PORT": str(grpc_port),
        "KAGI_OTP_WORKERS": "2",
        "KAGI_OTP_MANAGEMENT_ADDR": f"127.0.0.1:{management_port}",
        "KAGI_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "otp.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(tool("kagi"), "serve", "otp", env=env, stderr=stderr)
    metrics_url = f"http://127.0.0.1:{management_port}/metrics"
    operator = services.pki.tls("operator")
    try:
        async with asyncio.timeout(90):
            sent, refused = 0, ""
            while sent < CALLS:
                assert process.returncode is None, log.read_text()
                channel = open_channel(f"localhost:{grpc_port}", operator, server_name="localhost")
                try:
                    stub = otp_pb2_grpc.OtpServiceStub(channel)
                    await stub.GetToken(otp_pb2.GetTokenRequest(token_id="tok_" + "0" * 26), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:  # the workers are still starting
                        await asyncio.sleep(0.2)
                        continue
                    refused = exc.code().name
                    sent += 1
                finally:
                    await channel.close()
            scrapes = []
            while len(scrapes) < 8:
                calls, memory = await _scrape(metrics_url)
                if len(memory) < 2:  # a worker samples its process figures at start, then every 5 s
                    await asyncio.sleep(0.5)
                    continue
                scrapes.append((calls, sorted(memory)))
        assert refused in ("NOT_FOUND", "INVALID_ARGUMENT")
        assert {calls for calls, _ in scrapes} == {CALLS}, scrapes
        assert all(len(pids) == 2 for _, pids in scrapes), scrapes
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 60)
    assert returncode == 0, log.read_text()
