"""The gateway against nginx and against direct gRPC: mTLS handshakes per second and kept-alive requests per second.

    python bench/gateway_bench.py [--seconds 5] [--threads 16] [--workers 1,2] [--profile] [--quick]
    python bench/gateway_bench.py --limits [--rounds 2] [--quick]   # connection limits on vs off

What runs where (all on 127.0.0.1; the machine's cores are shared by everything below):

- this process: the CA, OTP and enrollment services (in-process, mTLS, SQLite), idle except when the gateway or
  the direct-gRPC load calls them;
- the gateway: `kagi serve gateway` as a child process (KAGI_GATEWAY_WORKERS worker processes on one port);
- nginx (Debian's, `apt-get install nginx`): a non-daemon child with a generated config in a temporary
  directory: the same server certificate, `ssl_verify_client on` against the same root and customer CA, and the
  customer CA's CRL (plus the root's, which nginx's CRL checking requires), so both servers check revocation;
- the load generator: this script again (`--loadgen`), a separate process; blocking TLS sockets in threads
  (OpenSSL does the crypto with the GIL released), or grpc.aio for the direct calls.

Measurements, each for `--seconds` after a one-second warm-up:

1. full mTLS handshakes: connect, full TLS 1.3 handshake with the client certificate, one small GET of
   /v1/client-certificate (the gateway checks issuer, validity and revocation; nginx returns a fixed body), close;
2. resumed handshakes: the same with the client resuming its last TLS 1.3 session ticket;
3. kept-alive requests: GET /v1/enrollments/{id} with the client certificate on kept-alive connections (the
   gateway calls the enrollment service's GetEnrollment) against the same GetEnrollment called directly over
   gRPC with the gateway's identity and the relayed certificate metadata.

"server CPU/op" is the CPU time (user + system) the server's processes used per operation, read from /proc: the
figure that does not depend on how the cores were shared with the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402 - after the sys.path line, so a plain checkout runs
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from bench.harness import cpu_seconds, free_port, percentile, process_tree, wait_for_port  # noqa: E402
from kagi.enrollment.v1 import enrollment_pb2 as pb  # noqa: E402
from kagi.enrollment.v1 import enrollment_pb2_grpc  # noqa: E402
from kagi.runtime.grpc_client import open_channel  # noqa: E402
from kagi.runtime.logging import configure_logging  # noqa: E402
from kagi.runtime.settings import Secret, TlsFiles  # noqa: E402
from services.ca_service.adapters.ca_directory import CaDirectory  # noqa: E402
from services.ca_service.creation import DevPki  # noqa: E402
from services.ca_service.domain.settings import CaKind  # noqa: E402
from tests.support.enrollment_flow import Customer, Stack, open_stack  # noqa: E402

KAGI = str(Path(sys.executable).parent / "kagi")


# -- the load generator (a separate process) ----------------------------------------------------------------


def _read_response(tls: ssl.SSLSocket, buffer: bytearray) -> bytes:
    """Reads one HTTP/1.1 response (Content-Length framed) from `tls`; leftover bytes stay in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the body")
        rest += chunk
    buffer[:] = rest[length:]
    return head.split(b" ", 2)[1]


def _handshake_worker(spec: dict[str, Any], context: ssl.SSLContext, stop: float, out: dict[str, Any]) -> None:
    request = f"GET {spec['path']} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    session: ssl.SSLSession | None = None
    latencies: list[float] = []
    while time.perf_counter() < stop:
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", spec["port"])) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with context.wrap_socket(
                    raw, server_hostname="localhost", session=session if spec["resume"] else None
                ) as tls:
                    tls.sendall(request)
                    status = _read_response(tls, bytearray())
                    if status != b"200":
                        out["bad"] += 1
                        continue
                    reused = tls.session_reused
                    if spec["resume"]:
                        session = tls.session
        except (OSError, ConnectionError):
            out["errors"] += 1
            continue
        if started >= spec["measure_from"]:
            out["done"] += 1
            out["reused"] += int(reused)
            latencies.append(time.perf_counter() - started)
    out["latencies"].extend(latencies)


def _keepalive_worker(spec: dict[str, Any], context: ssl.SSLContext, stop: float, out: dict[str, Any]) -> None:
    request = f"GET {spec['path']} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    latencies: list[float] = []
    while time.perf_counter() < stop:
        try:
            with socket.create_connection(("127.0.0.1", spec["port"])) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    buffer = bytearray()
                    while time.perf_counter() < stop:
                        started = time.perf_counter()
                        tls.sendall(request)
                        if _read_response(tls, buffer) != b"200":
                            out["bad"] += 1
                            continue
                        if started >= spec["measure_from"]:
                            out["done"] += 1
                            latencies.append(time.perf_counter() - started)
        except (OSError, ConnectionError):
            out["errors"] += 1
    out["latencies"].extend(latencies)


async def _grpc_load(spec: dict[str, Any], stop: float, out: dict[str, Any]) -> None:
    tls = TlsFiles(Path(spec["cert"]), Path(spec["key"]), Path(spec["ca"]))
    channel = open_channel(spec["target"], tls, server_name="localhost")
    stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
    request = pb.GetEnrollmentRequest(enrollment_id=spec["enrollment_id"])
    metadata = tuple(tuple(pair) for pair in spec["metadata"])
    latencies: list[float] = []

    async def caller() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await stub.GetEnrollment(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError:
                out["errors"] += 1
                continue
            if started >= spec["measure_from"]:
                out["done"] += 1
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(spec["threads"])))
    await channel.close()
    out["latencies"].extend(latencies)


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement from its spec and return the counts (called in the child process)."""
    warmup, seconds = spec["warmup"], spec["seconds"]
    start = time.perf_counter()
    spec["measure_from"] = start + warmup
    stop = start + warmup + seconds
    out: dict[str, Any] = {"done": 0, "errors": 0, "bad": 0, "reused": 0, "latencies": []}
    cpu_before = time.process_time()
    if spec["kind"] == "grpc":
        asyncio.run(_grpc_load(spec, stop, out))
    else:
        context = ssl.create_default_context(cafile=spec["ca"])
        context.load_cert_chain(spec["cert"], spec["key"])
        worker = _keepalive_worker if spec["kind"] == "keepalive" else _handshake_worker
        threads = [threading.Thread(target=worker, args=(spec, context, stop, out)) for _ in range(spec["threads"])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    latencies = sorted(out.pop("latencies"))
    out["rate"] = out["done"] / seconds
    out["p50_ms"] = 1000 * percentile(latencies, 0.5) if latencies else 0.0
    out["p99_ms"] = 1000 * percentile(latencies, 0.99) if latencies else 0.0
    out["loadgen_cpu"] = time.process_time() - cpu_before
    return out


# -- the services, the customer, the servers under test ---------------------------------------------------


@dataclass
class Services:
    """The in-process CA, OTP and enrollment services (as `kagi dev` builds them) and a scratch folder."""

    stack: Stack
    directory: Path

    @property
    def pki(self) -> DevPki:
        """Return the CA hierarchy and the internal certificates."""
        assert self.stack.dev is not None
        return self.stack.dev.pki

    @property
    def components(self) -> dict[str, Any]:
        """Return the running services by name."""
        assert self.stack.dev is not None
        return self.stack.dev.components

    @property
    def environment(self) -> dict[str, str]:
        """Return the KAGI_* variables the services were built from, with their ports."""
        assert self.stack.dev is not None
        return self.stack.dev.env

    def target(self, name: str) -> str:
        """Return a service's host:port."""
        return self.stack.targets[name]

    async def stop(self) -> None:
        """Stop the services and the SMTP server their mail goes to."""
        await self.stack.close()
        self.stack.smtp.stop()


async def start_services(directory: Path) -> Services:
    """Start the CA, OTP and enrollment services in this process on free ports."""
    return Services(await open_stack(directory / "state"), directory)


@dataclass
class BenchCustomer:
    """An enrollment at CERTIFICATE_ISSUED with its client certificate files."""

    enrollment_id: str
    certificate: TlsFiles
    metadata: list[tuple[str, str]]


async def enroll(services: Services) -> BenchCustomer:
    """Take steps 1-4 over gRPC (as the gateway would); the certificate and its key are then files."""
    customer = Customer(services.stack, services.directory)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3, customer.step4):
        await step()
    return BenchCustomer(customer.enrollment_id, customer.tls_files(), customer.cert_metadata)


def _customer_bundle(services: Services) -> Path:
    passphrase = Secret(services.pki.passphrase_file.read_bytes().strip())
    hierarchy = CaDirectory(services.pki.ca_dir).load(passphrase).hierarchy
    bundle = services.directory / "customer-bundle.pem"
    bundle.write_bytes(hierarchy.root.pem + hierarchy.customer.pem)
    return bundle


async def _nginx_crls(services: Services) -> Path:
    """The CRLs nginx checks against: the customer CA's (from the CA service) and the root's (nginx checks the
    whole chain; the root's CRL was signed offline when the CA was made, and the CA directory holds it)."""
    root_crl = CaDirectory(services.pki.ca_dir).root_crl()
    if root_crl is None:
        raise RuntimeError(f"no root CRL in {services.pki.ca_dir}")
    customer_crl = await services.components["ca"].runtime.publication.crl(CaKind.CUSTOMER)
    path = services.directory / "nginx-crls.pem"
    pem = b"".join(
        x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM) for der in (root_crl, customer_crl.der)
    )
    path.write_bytes(pem)
    return path


@contextlib.asynccontextmanager
async def nginx(services: Services, workers: int) -> AsyncIterator[tuple[int, list[int]]]:
    """Run Debian's nginx in the foreground with a generated config; yield (port, pids)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    directory = services.directory / f"nginx-{workers}"
    directory.mkdir(exist_ok=True)
    port = free_port()
    tls = services.pki.tls("gateway")
    config = directory / "nginx.conf"
    config.write_text(
        f"""
daemon off;
worker_processes {workers};
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tls.cert_file};
        ssl_certificate_key {tls.key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {_customer_bundle(services)};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_crl {await _nginx_crls(services)};
        ssl_session_cache shared:kagi:10m;
        ssl_session_tickets on;
        location = /v1/client-certificate {{
            default_type application/json;
            return 200 '{{"serial_number":"$ssl_client_serial"}}';
        }}
    }}
}}
"""
    )
    process = await asyncio.create_subprocess_exec(
        binary, "-c", str(config), "-p", str(directory), stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_for_port(port, exited=lambda: process.returncode)
        yield port, process_tree(process.pid)
    finally:
        process.send_signal(signal.SIGQUIT)
        await process.wait()


@contextlib.asynccontextmanager
async def gateway(
    services: Services, workers: int, *, profile: Path | None = None, extra_env: dict[str, str] | None = None
) -> AsyncIterator[tuple[int, list[int]]]:
    """Run `kagi serve gateway` with `workers` worker processes; yield (port, pids).

    With `profile`, the (single) gateway process runs under cProfile and writes its statistics there on exit.
    """
    port = free_port()
    env = {
        **os.environ,
        # The stack's own configuration (identity, backends' targets) with this run's port and worker count.
        **services.environment,
        "KAGI_GATEWAY_PORT": str(port),
        "KAGI_GATEWAY_HTTP_PORT": "-1",
        "KAGI_GATEWAY_WORKERS": str(workers),
        "KAGI_LOG_LEVEL": "WARNING",
        # The benchmark comes from one address at rates no customer reaches; no management listener needed.
        "KAGI_GATEWAY_RATE_LIMITS": "off",
        "KAGI_GATEWAY_MANAGEMENT_ADDR": "off",
        **(extra_env or {}),
    }
    command = [KAGI, "serve", "gateway"]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), *command]
    process = await asyncio.create_subprocess_exec(*command, env=env)
    try:
        await wait_for_port(port, exited=lambda: process.returncode)
        await asyncio.sleep(1.0 + workers)  # every worker up, its revocation stream connected
        yield port, process_tree(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


async def measure(spec: dict[str, Any], server_pids: list[int]) -> dict[str, Any]:
    """Run the load generator in a child process and read the server's CPU time around it."""
    before_server, before_self = cpu_seconds(server_pids), time.process_time()
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--loadgen", json.dumps(spec), stdout=asyncio.subprocess.PIPE
    )
    output, _ = await process.communicate()
    result: dict[str, Any] = json.loads(output)
    total = spec["warmup"] + spec["seconds"]
    result["server_cpu"] = cpu_seconds(server_pids) - before_server
    result["services_cpu"] = time.process_time() - before_self
    # CPU was also spent during the warm-up: count the measured share of it (the rate is steady by then).
    share = spec["seconds"] / total / max(1, result["done"]) * 1e6
    result["server_cpu_per_op_us"] = result["server_cpu"] * share
    result["services_cpu_per_op_us"] = result["services_cpu"] * share
    result["loadgen_cpu_per_op_us"] = result["loadgen_cpu"] * share
    return result


# -- the run ------------------------------------------------------------------------------------------------


def _row(name: str, server: str, result: dict[str, Any], extra: str = "", *, services: bool = True) -> str:
    behind = f"{result['services_cpu_per_op_us']:,.0f}" if services else "-"
    return (
        f"| {name} | {server} | {result['rate']:,.0f} | {result['p50_ms']:.1f} / {result['p99_ms']:.1f} | "
        f"{result['server_cpu_per_op_us']:,.0f} | {behind} | {result['loadgen_cpu_per_op_us']:,.0f} | "
        f"{result['errors'] + result['bad']} | {extra} |"
    )


async def run_profile(args: argparse.Namespace) -> None:
    """Profile one gateway process under the kept-alive GetEnrollment load and print where its
    CPU goes (cProfile's own overhead inflates every figure; the proportions are what matter)."""
    configure_logging("bench", level="WARNING")
    with tempfile.TemporaryDirectory(prefix="kagi-gateway-profile-") as temporary:
        directory = Path(temporary)
        services = await start_services(directory)
        try:
            customer = await enroll(services)
            spec = {
                "seconds": args.seconds, "warmup": 1.0, "threads": args.threads, "kind": "keepalive",
                "ca": str(services.pki.root_file), "cert": str(customer.certificate.cert_file),
                "key": str(customer.certificate.key_file), "path": f"/v1/enrollments/{customer.enrollment_id}",
            }  # fmt: skip
            profile = directory / "gateway.prof"
            async with gateway(services, 1, profile=profile) as (port, pids):
                result = await measure({**spec, "port": port}, pids)
        finally:
            await services.stop()
        print(f"\nkept-alive GetEnrollment under cProfile: {result['rate']:,.0f}/s\n")
        stats = pstats.Stats(str(profile))
        stats.sort_stats("tottime").print_stats(25)


LIMITS_OFF = {
    "KAGI_GATEWAY_HEADER_TIMEOUT_SECONDS": "0",
    "KAGI_GATEWAY_MAX_CONNECTIONS": "0",
    "KAGI_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "0",
}


async def run_limits(args: argparse.Namespace) -> None:
    """Measure the kept-alive routes with the connection limits and the request deadline on (the
    defaults) and off, alternating on, off, on, off, so that drift of the machine falls on both alike."""
    configure_logging("bench", level="WARNING")
    with tempfile.TemporaryDirectory(prefix="kagi-gateway-limits-") as temporary:
        directory = Path(temporary)
        services = await start_services(directory)
        try:
            customer = await enroll(services)
            common = {
                "seconds": args.seconds, "warmup": 1.0, "threads": args.threads, "kind": "keepalive",
                "ca": str(services.pki.root_file), "cert": str(customer.certificate.cert_file),
                "key": str(customer.certificate.key_file),
            }  # fmt: skip
            routes = {
                "GET /v1/enrollments/{id}": f"/v1/enrollments/{customer.enrollment_id}",
                "GET /v1/client-certificate (no backend)": "/v1/client-certificate",
            }
            totals: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for _round in range(args.rounds):
                for mode, extra in (("on", {}), ("off", LIMITS_OFF)):
                    async with gateway(services, 1, extra_env=extra) as (port, pids):
                        for name, path in routes.items():
                            r = await measure({**common, "path": path, "port": port}, pids)
                            totals.setdefault((name, mode), []).append(r)
        finally:
            await services.stop()
    print(
        f"\nkagi gateway, connection limits and request deadline on vs off, {dt.datetime.now(dt.UTC):%Y-%m-%d}: "
        f"{os.cpu_count()} cores; 1 worker; {args.rounds} alternating rounds of {args.seconds:g} s per route and "
        f"mode, {args.threads} kept-alive connections\n"
    )
    print("| kept-alive route | limits | per second | p50 / p99 ms | gateway CPU/op (µs) | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for name in routes:
        rates = {}
        for mode in ("on", "off"):
            runs = totals[(name, mode)]
            rate = sum(r["rate"] for r in runs) / len(runs)
            cpu = sum(r["server_cpu_per_op_us"] for r in runs) / len(runs)
            p50 = sum(r["p50_ms"] for r in runs) / len(runs)
            p99 = sum(r["p99_ms"] for r in runs) / len(runs)
            errors = sum(r["errors"] + r["bad"] for r in runs)
            rates[mode] = (rate, cpu)
            print(f"| {name} | {mode} | {rate:,.0f} | {p50:.1f} / {p99:.1f} | {cpu:,.0f} | {errors} |")
        (on_rate, on_cpu), (off_rate, off_cpu) = rates["on"], rates["off"]
        cost = f"{1 - on_rate / off_rate:+.1%} rate | | {on_cpu / off_cpu - 1:+.1%} CPU/op"
        print(f"| {name} | cost of the limits | {cost} | |")
    print()


async def run(args: argparse.Namespace) -> None:
    """Set everything up, takes every measurement and print the table."""
    configure_logging("bench", level="WARNING")
    with tempfile.TemporaryDirectory(prefix="kagi-gateway-bench-") as temporary:
        directory = Path(temporary)
        services = await start_services(directory)
        try:
            customer = await enroll(services)
            common = {
                "seconds": args.seconds,
                "warmup": 1.0,
                "threads": args.threads,
                "ca": str(services.pki.root_file),
            }
            common |= {"cert": str(customer.certificate.cert_file), "key": str(customer.certificate.key_file)}
            handshake = {**common, "kind": "handshake", "path": "/v1/client-certificate", "resume": False}
            resumed = {**handshake, "resume": True}
            keepalive = {**common, "kind": "keepalive", "path": f"/v1/enrollments/{customer.enrollment_id}"}
            local = {**keepalive, "path": "/v1/client-certificate"}
            rows: list[str] = []
            results: dict[str, dict[str, Any]] = {}
            for workers in args.workers:
                async with nginx(services, workers) as (port, pids):
                    results[f"nginx-full-{workers}"] = r = await measure({**handshake, "port": port}, pids)
                    rows.append(_row("full mTLS handshake + GET", f"nginx, {workers} worker(s)", r))
                    results[f"nginx-resumed-{workers}"] = r = await measure({**resumed, "port": port}, pids)
                    reuse = f"{r['reused'] / max(1, r['done']):.0%} resumed"
                    rows.append(_row("resumed TLS 1.3 handshake + GET", f"nginx, {workers} worker(s)", r, reuse))
                async with gateway(services, workers) as (port, pids):
                    results[f"gateway-full-{workers}"] = r = await measure({**handshake, "port": port}, pids)
                    rows.append(_row("full mTLS handshake + GET", f"gateway, {workers} worker(s)", r))
                    results[f"gateway-resumed-{workers}"] = r = await measure({**resumed, "port": port}, pids)
                    reuse = f"{r['reused'] / max(1, r['done']):.0%} resumed"
                    rows.append(_row("resumed TLS 1.3 handshake + GET", f"gateway, {workers} worker(s)", r, reuse))
                    results[f"gateway-keepalive-{workers}"] = r = await measure({**keepalive, "port": port}, pids)
                    rows.append(_row("kept-alive GET /v1/enrollments/{id}", f"gateway, {workers} worker(s)", r))
                    results[f"gateway-local-{workers}"] = r = await measure({**local, "port": port}, pids)
                    rows.append(
                        _row("kept-alive GET /v1/client-certificate (no backend)", f"gateway, {workers} worker(s)", r)
                    )
            grpc_spec = {
                **common,
                "kind": "grpc",
                "target": services.target("enrollment"),
                "cert": str(services.pki.tls("gateway").cert_file),
                "key": str(services.pki.tls("gateway").key_file),
                "enrollment_id": customer.enrollment_id,
                "metadata": customer.metadata,
            }
            results["grpc"] = r = await measure(grpc_spec, [os.getpid()])
            rows.append(_row("GetEnrollment directly over gRPC (mTLS)", "enrollment service", r, services=False))
        finally:
            await services.stop()

    cores = os.cpu_count()
    print(
        f"\nkagi gateway benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d}: {platform.processor() or platform.machine()}, "
        f"{cores} cores shared by servers and load generator; Python {platform.python_version()}, "
        f"{ssl.OPENSSL_VERSION}, nginx {_nginx_version()}; {args.seconds:g} s per row, {args.threads} client "
        f"threads/calls in flight\n"
    )
    print(
        "| measurement | server | per second | p50 / p99 ms | server CPU/op (µs) | services CPU/op (µs) "
        "| load generator CPU/op (µs) | errors | note |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(row)
    print()
    first = args.workers[0]
    for workers in args.workers:
        nginx_rate = results[f"nginx-full-{workers}"]["rate"]
        ratio = results[f"gateway-full-{workers}"]["rate"] / nginx_rate if nginx_rate else 0.0
        print(f"- full handshakes, {workers} worker(s): gateway at {ratio:.0%} of nginx (target 65%)")
    for workers in args.workers:
        ratio = results[f"gateway-keepalive-{workers}"]["rate"] / max(1.0, results["grpc"]["rate"])
        print(f"- kept-alive, {workers} worker(s): gateway at {ratio:.0%} of direct gRPC (target 50%)")
    if len(args.workers) > 1:
        scale = results[f"gateway-keepalive-{args.workers[-1]}"]["rate"] / max(
            1.0, results[f"gateway-keepalive-{first}"]["rate"]
        )
        print(f"- kept-alive scaling {first} -> {args.workers[-1]} workers, GetEnrollment route: x{scale:.2f}")
        scale = results[f"gateway-local-{args.workers[-1]}"]["rate"] / max(
            1.0, results[f"gateway-local-{first}"]["rate"]
        )
        print(f"- kept-alive scaling {first} -> {args.workers[-1]} workers, gateway-only route: x{scale:.2f}")


def _nginx_version() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    completed = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return completed.stderr.strip().rsplit("/", 1)[-1]


def main() -> None:
    """Parse the command line: a benchmark run, or (internally) one load-generator measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row (after 1 s warm-up)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (or gRPC calls) in flight")
    parser.add_argument("--workers", type=lambda text: [int(x) for x in text.split(",")], default=[1, 2])
    parser.add_argument("--profile", action="store_true", help="profile one gateway under kept-alive load instead")
    parser.add_argument(
        "--limits", action="store_true", help="only compare the kept-alive routes with the connection limits on and off"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating on/off rounds of --limits")
    parser.add_argument("--quick", action="store_true", help="2 s per row (with --limits: 3 s, 2 rounds)")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        print(json.dumps(loadgen(json.loads(args.loadgen))))
        return
    if args.quick:
        args.seconds = 3.0 if args.limits else 2.0
        args.workers = args.workers[:1]
    if args.limits:
        asyncio.run(run_limits(args))
        return
    asyncio.run(run_profile(args) if args.profile else run(args))


if __name__ == "__main__":
    main()
