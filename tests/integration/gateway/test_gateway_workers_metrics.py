"""`kagi serve gateway` with KAGI_GATEWAY_WORKERS=2: the workers share the public port and the management port, and
a scrape of /metrics, whichever worker answers it, counts the requests every worker served (prometheus-client's
multiprocess mode in a directory the parent makes and removes)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.gateway.gateway_support import GatewayStack, HttpsClient, client_context
from tests.support.ports import free_port
from tests.support.tools import tool


async def _scrape(url: str) -> tuple[float, dict[str, float]]:
    """One scrape on a new connection: the GET /healthz 200 count, and the per-worker request gauge by pid."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(url) as response,
    ):
        assert response.status == 200
        text = await response.text()
    healthz = 0.0
    by_pid: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "kagi_gateway_http_requests_total" and labels.get("route") == "/healthz":
                if labels.get("method") == "GET" and labels.get("status") == "200":
                    healthz += sample.value
            elif sample.name == "kagi_gateway_worker_requests":
                by_pid[labels.get("pid", "")] += sample.value
    return healthz, dict(by_pid)


async def test_a_scrape_sees_every_worker(stack: GatewayStack, tmp_path: Path) -> None:
    """Two gateway workers behind one port: requests on new connections until both workers have served some
    (each worker's series of kagi_gateway_worker_requests, labelled by pid, above 0); then eight scrapes of the
    shared management port, landing on either worker, each count exactly the requests sent (GET /healthz 200
    summed over the workers, and the per-worker series summed). SIGTERM stops the set with status 0 and the
    parent removes the metrics directory."""
    https_port, management_port = free_port(), free_port()
    tls = stack.pki.tls("gateway")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "KAGI_STORE_URL")}
    env |= {
        "KAGI_GATEWAY_TLS_CERT": str(tls.cert_file),
        "KAGI_GATEWAY_TLS_KEY": str(tls.key_file),
        "KAGI_GATEWAY_TLS_CA": str(tls.ca_file),
        "KAGI_GATEWAY_PORT": str(https_port),
        "KAGI_GATEWAY_HTTP_PORT": "-1",
        "KAGI_CA_TARGET": stack.target("ca"),
        "KAGI_OTP_TARGET": stack.target("otp"),
        "KAGI_ENROLLMENT_TARGET": stack.target("enrollment"),
        "KAGI_GATEWAY_WORKERS": "2",
        "KAGI_GATEWAY_MANAGEMENT_ADDR": f"127.0.0.1:{management_port}",
        "KAGI_GATEWAY_RATE_LIMITS": "off",
        "KAGI_LOG_LEVEL": "WARNING",
        "TMPDIR": str(temp),
    }
    stderr = (tmp_path / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(tool("kagi"), "serve", "gateway", env=env, stderr=stderr)
    metrics_url = f"http://127.0.0.1:{management_port}/metrics"
    client = HttpsClient(f"https://localhost:{https_port}", client_context(stack.root_file), force_close=True)
    sent = 0
    try:
        async with asyncio.timeout(60):
            by_pid: dict[str, float] = {}
            while len(by_pid) < 2 or min(by_pid.values()) == 0:
                assert process.returncode is None, (tmp_path / "gateway.log").read_text()
                for _ in range(10):
                    try:
                        answer = await client.request("GET", "/healthz")
                    except aiohttp.ClientConnectionError:  # no worker listens yet
                        await asyncio.sleep(0.1)
                        continue
                    assert answer.status == 200
                    sent += 1
                try:
                    _, by_pid = await _scrape(metrics_url)
                except aiohttp.ClientConnectionError:
                    continue
        assert sent > 0
        for _ in range(8):
            healthz, by_pid = await _scrape(metrics_url)
            assert healthz == sent
            assert len(by_pid) == 2, by_pid
            assert all(value > 0 for value in by_pid.values())
            assert sum(by_pid.values()) == sent
    finally:
        await client.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            status = await process.wait()
        stderr.close()
    assert status == 0, (tmp_path / "gateway.log").read_text()
    assert list(temp.iterdir()) == []  # the metrics directory went with the workers
