"""The gateway's cached OCSP answers against nginx serving the same response as a static file.

    python bench/ocsp_bench.py [--seconds 10] [--connections 32] [--quick]

What runs where (all on 127.0.0.1; the machine's cores are shared by everything below):

- this process: the CA, OTP and enrollment services (in-process, mTLS, SQLite), as bench/gateway_bench.py
  starts them; the CA answers the gateway's cache misses and holds its revocation stream;
- the gateway: `kagi serve gateway` as a child process, one worker, measured on its plain-HTTP PKI port (where
  the certificates' AIA OCSP URL points), its OCSP response cache on (the default) or off
  (KAGI_GATEWAY_OCSP_CACHE_SIZE=0: every request is an AnswerOcsp call to the CA, as before the cache);
- nginx (Debian's, `apt-get install nginx-light`): one worker, plain HTTP, serving the same signed DER response,
  fetched from the CA once, as a static file at /pki/ocsp (GET) and for POSTs to it;
- the load generator: wrk (Debian's, `apt-get install wrk`), one thread, the same command line for the gateway
  and nginx: an RFC 5019 GET of the base64 request, or a POST of the DER request, on kept-alive connections;
  and GET /healthz on the gateway's same port, the floor of its HTTP stack (no OCSP work at all);
- for comparison, the CA's AnswerOcsp called directly over gRPC with mTLS, by bench/ca_grpc_bench.py's client
  process (64 calls in flight), for the same nonce-less request.

Each row runs for `--seconds` after a one-second warm-up. "server CPU µs/req" is the CPU time (user + system)
of the server's processes per request, read from /proc: the figure that does not depend on how the two cores
were shared with the load generator. The gateway's own counter (kagi_gateway_ocsp_answers_total) shows where
its answers came from.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402 - after the sys.path lines, so a plain checkout runs
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402

from bench import ca_grpc_bench  # noqa: E402
from bench.gateway_bench import Services, enroll, gateway, start_services  # noqa: E402
from bench.harness import cpu_seconds, free_port, process_tree, wait_for_port  # noqa: E402
from kagi.ca.v1 import ca_pb2, ca_pb2_grpc  # noqa: E402
from kagi.runtime.grpc_client import open_channel  # noqa: E402
from kagi.runtime.logging import configure_logging  # noqa: E402

WARMUP = 1.0


@dataclass
class Result:
    """One wrk run: requests per second, latency percentiles, failures, the server's CPU per request."""

    rate: float
    p50_ms: float
    p99_ms: float
    failures: int
    cpu_us: float


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise SystemExit(f"{name} is not installed (apt-get install {package})")
    return path


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _parse_wrk(output: str) -> tuple[float, float, float, int]:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _milliseconds(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _milliseconds(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    failures = 0
    if found := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        failures += int(found.group(1))
    if found := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        failures += sum(int(value) for value in found.groups())
    return rate, p50, p99, failures


async def wrk(url: str, script: Path, seconds: float, connections: int, server_pids: list[int]) -> Result:
    """Run wrk (one thread) against URL with SCRIPT after a warm-up; return what it and /proc measured."""
    binary = _tool("wrk", "wrk")
    base = [binary, "-t1", f"-c{connections}", "--latency", "-s", str(script)]

    async def once(duration: float) -> str:
        # Asynchronously: the CA in this process keeps answering the gateway (its revocation stream) meanwhile.
        process = await asyncio.create_subprocess_exec(
            *base, f"-d{duration:g}s", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"wrk failed: {output.decode(errors='replace')[-2000:]}")
        return output.decode()

    await once(WARMUP)
    before = cpu_seconds(server_pids)
    output = await once(seconds)
    used = cpu_seconds(server_pids) - before
    rate, p50, p99, failures = _parse_wrk(output)
    return Result(rate, p50, p99, failures, used / max(1.0, rate * seconds) * 1e6)


def wrk_scripts(directory: Path, request: bytes) -> dict[str, Path]:
    """Write the wrk scripts: a POST of the DER request, and a plain GET (its path is in the URL)."""
    der = directory / "request.der"
    der.write_bytes(request)
    post = directory / "post.lua"
    post.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/ocsp-request"\n'
        f'local file = io.open("{der}", "rb")\n'
        "wrk.body = file:read('*a')\n"
        "file:close()\n"
    )
    get = directory / "get.lua"
    get.write_text('wrk.method = "GET"\n')
    return {"POST": post, "GET": get}


def nginx_home(home: Path, response: bytes, port: int) -> Path:
    """Write RESPONSE and an nginx config serving it at /pki/ocsp on PORT into HOME; return the config."""
    # nginx's workers drop to an unprivileged user when started as root: they must reach the (public) response,
    # so this folder holds nothing else.
    home.chmod(0o755)
    (home / "response.der").write_bytes(response)
    (home / "response.der").chmod(0o644)
    config = home / "nginx.conf"
    config.write_text(
        f"""
daemon off;
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {home};
        location /pki/ocsp {{
            default_type application/ocsp-response;
            add_header Cache-Control "max-age=3600, public, no-transform, must-revalidate";
            try_files /response.der =404;
            # The static module refuses POST (405); an error_page redirect serves the file as a GET instead.
            error_page 405 =200 $uri;
        }}
    }}
}}
"""
    )
    return config


@contextlib.asynccontextmanager
async def nginx(response: bytes) -> AsyncIterator[tuple[int, list[int]]]:
    """Run Debian's nginx in the foreground, one worker, serving RESPONSE at /pki/ocsp; yield (port, pids)."""
    binary = _tool("nginx", "nginx-light")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kagi-ocsp-nginx-") as temporary:
        home = Path(temporary)
        config = nginx_home(home, response, port)
        process = await asyncio.create_subprocess_exec(binary, "-c", str(config), "-p", str(home))
        try:
            await wait_for_port(port, exited=lambda: process.returncode)
            yield port, process_tree(process.pid)
        finally:
            process.send_signal(signal.SIGQUIT)
            await process.wait()


async def ocsp_request(services: Services, leaf_pem: bytes) -> bytes:
    """Return a nonce-less SHA-1 OCSP request for the customer certificate (as RFC 5019 clients send)."""
    leaf = x509.load_pem_x509_certificates(leaf_pem)[0]
    channel = open_channel(services.target("ca"), services.pki.tls("gateway"))
    try:
        stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
        published = await stub.GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    finally:
        await channel.close()
    issuer = x509.load_pem_x509_certificate(published.customer_ca_pem.encode())
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303 - RFC 5019's CertID
    return builder.build().public_bytes(serialization.Encoding.DER)


async def _metric(url: str, name: str) -> dict[str, float]:
    """Return the samples of one metric family from a Prometheus text page, by their label text."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            samples[key[len(name) :]] = float(value)
    return samples


async def _until_stream_live(metrics_url: str) -> None:
    """Wait until the gateway's revocation stream is connected: without it the cache is not used at all."""
    deadline = time.monotonic() + 30
    while (await _metric(metrics_url, "kagi_gateway_revocation_stream_connected")).get("", 0.0) != 1.0:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway's revocation stream did not connect")
        await asyncio.sleep(0.1)


async def _fetch(url: str, der: bytes) -> bytes:
    headers = {"Content-Type": "application/ocsp-request"}
    async with aiohttp.ClientSession() as session, session.post(url, data=der, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
        return body


async def run(args: argparse.Namespace) -> None:
    """Start everything, take every measurement, print the table."""
    configure_logging("bench", level="WARNING")
    rows: list[tuple[str, str, Result | None, str]] = []
    with tempfile.TemporaryDirectory(prefix="kagi-ocsp-bench-") as temporary:
        directory = Path(temporary)
        services = await start_services(directory)
        try:
            customer = await enroll(services)
            request = await ocsp_request(services, customer.certificate.cert_file.read_bytes())
            scripts = wrk_scripts(directory, request)
            get_path = "/pki/ocsp/" + urllib.parse.quote(base64.b64encode(request).decode(), safe="")
            sources: dict[str, dict[str, float]] = {}
            response = b""
            for mode, size in (("cached", None), ("no cache", "0")):
                http_port, management_port = free_port(), free_port()
                extra = {
                    "KAGI_GATEWAY_HTTP_PORT": str(http_port),
                    "KAGI_GATEWAY_MANAGEMENT_ADDR": f"127.0.0.1:{management_port}",
                }
                if size is not None:
                    extra["KAGI_GATEWAY_OCSP_CACHE_SIZE"] = size
                async with gateway(services, 1, extra_env=extra) as (_https_port, pids):
                    metrics_url = f"http://127.0.0.1:{management_port}/metrics"
                    await _until_stream_live(metrics_url)
                    base = f"http://127.0.0.1:{http_port}"
                    response = await _fetch(base + "/pki/ocsp", request)  # fills the cache
                    assert ocsp.load_der_ocsp_response(response).certificate_status is ocsp.OCSPCertStatus.GOOD
                    for method in ("GET", "POST"):
                        url = base + (get_path if method == "GET" else "/pki/ocsp")
                        result = await wrk(url, scripts[method], args.seconds, args.connections, pids)
                        label = "gateway, cache on" if mode == "cached" else "gateway, cache off (AnswerOcsp each)"
                        rows.append((f"{method} /pki/ocsp", label, result, ""))
                    if mode == "cached":
                        # The gateway's floor on this port: a route that does nothing (same middleware, no OCSP).
                        result = await wrk(base + "/healthz", scripts["GET"], args.seconds, args.connections, pids)
                        rows.append(("GET /healthz", "gateway", result, "the HTTP stack alone, for scale"))
                    sources[mode] = await _metric(metrics_url, "kagi_gateway_ocsp_answers_total")
            async with nginx(response) as (port, pids):
                base = f"http://127.0.0.1:{port}"
                for method in ("GET", "POST"):
                    url = base + (get_path if method == "GET" else "/pki/ocsp")
                    result = await wrk(url, scripts[method], args.seconds, args.connections, pids)
                    rows.append((f"{method} /pki/ocsp", "nginx, static DER file", result, ""))
            identity = services.pki.tls("gateway")
            # In a thread: the client process blocks its caller, and the CA it loads runs on this event loop.
            direct = await asyncio.to_thread(
                ca_grpc_bench.run_client,
                {
                    "target": services.target("ca"),
                    "tls": [str(path) for path in (identity.cert_file, identity.key_file, services.pki.root_file)],
                    "kind": "ocsp",
                    "ocsp_request": request.hex(),
                    "warmup": WARMUP,
                    "seconds": args.seconds,
                    "pids": [os.getpid()],
                },
            )
            rows.append(
                (
                    "AnswerOcsp over gRPC (mTLS)",
                    "CA service, directly",
                    Result(direct["rate"], float("nan"), float("nan"), 0, direct["server_cpu_ms"] * 1000),
                    f"{ca_grpc_bench.IN_FLIGHT} calls in flight (CA signed-answer cache on)",
                )
            )
        finally:
            await services.stop()

    print(
        f"\nkagi OCSP benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d}: {_cpu_model()}, {os.cpu_count()} cores shared "
        f"by servers and load generator; Python {platform.python_version()}, nginx {_version('nginx')}, "
        f"{_version('wrk')}; {args.seconds:g} s per row after {WARMUP:g} s of warm-up; wrk -t1 -c{args.connections} "
        f"(kept-alive)\n"
    )
    print("| request | server | requests/s | p50 / p99 ms | server CPU µs/req | failures | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for what, server, result, note in rows:
        assert result is not None
        latency = "-" if result.p50_ms != result.p50_ms else f"{result.p50_ms:.2f} / {result.p99_ms:.2f}"
        print(
            f"| {what} | {server} | {result.rate:,.0f} | {latency} | {result.cpu_us:,.0f} | {result.failures} "
            f"| {note} |"
        )
    print()
    for mode, samples in sources.items():
        answered = ", ".join(f"{key.strip('{}')}: {value:,.0f}" for key, value in sorted(samples.items()))
        print(f"- gateway {mode}: answers by source ({answered})")
    by = {(what, server): result for what, server, result, _ in rows if result is not None}
    for method in ("GET", "POST"):
        cached = by[(f"{method} /pki/ocsp", "gateway, cache on")]
        static = by[(f"{method} /pki/ocsp", "nginx, static DER file")]
        uncached = by[(f"{method} /pki/ocsp", "gateway, cache off (AnswerOcsp each)")]
        print(
            f"- {method}: cached gateway at {cached.rate / static.rate:.0%} of nginx's rate; "
            f"x{cached.rate / max(1.0, uncached.rate):.1f} the uncached gateway"
        )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    if name == "nginx":
        completed = subprocess.run([_tool("nginx", "nginx-light"), "-v"], capture_output=True, text=True, check=False)
        return completed.stderr.strip().rsplit("/", 1)[-1]
    completed = subprocess.run([_tool("wrk", "wrk"), "-v"], capture_output=True, text=True, check=False)
    return (completed.stdout + completed.stderr).strip().splitlines()[0].split(" [")[0]


def main() -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row (after 1 s warm-up)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's kept-alive connections")
    parser.add_argument("--quick", action="store_true", help="2 s per row")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 2.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
