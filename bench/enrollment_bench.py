"""Complete enrollments per second (all ten steps, machine-driven) against the KDF ceiling, with p50/p99 per step.

    python bench/enrollment_bench.py [--enrollments 60] [--concurrency 16]

Four configurations, each on fresh state: all services in one process and one process per service, on the
SQLite store and on Redis (a redis-server the script starts on a free port). The services always run in child
processes and the customers are driven from this one, so the clients do not share the services' interpreter;
the machine has 2 cores, which the services and this driver share.

Password, PIN and temporary-credential hashing (argon2id) is deliberately expensive and sets the ceiling: each
enrollment costs 7 argon2id operations (step 1 verifies 2 temporary passwords, step 2 hashes 2 passwords, step 6
verifies 1, step 7 hashes the usage-start password, step 8 verifies it). The ceiling is cores / (7 x one hash).
Applications are registered before the clock starts (the operator's work, not the customer's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import RedisServer, cpu_seconds, free_port, percentile, wait_for_port  # noqa: E402
from kagi.cli.stack import stack_environment  # noqa: E402
from kagi.passwords import OWASP_ARGON2ID, PasswordHasher, Pepper  # noqa: E402
from services.ca_service.creation import ensure_dev_pki  # noqa: E402
from tests.support.enrollment_flow import Customer, Services  # noqa: E402
from tests.support.smtp import SmtpServer  # noqa: E402

KDF_OPERATIONS_PER_ENROLLMENT = 7
STEPS = ["step1", "step2", "step3", "step4", "step5", "step6", "step7", "step8", "step9", "step10"]
KAGI = str(Path(sys.executable).parent / "kagi")


def kdf_cost_seconds(samples: int = 20) -> float:
    """One argon2id hash with the production parameters, CPU seconds (median)."""
    hasher = PasswordHasher([Pepper("bench", b"p" * 32)], OWASP_ARGON2ID)
    times = []
    for _ in range(samples):
        start = time.process_time()
        hasher.hash("Passw0rd")
        times.append(time.process_time() - start)
    return statistics.median(times)


def start_services(
    state: Path, store_url: str, smtp_port: int, layout: str
) -> tuple[list[subprocess.Popen[bytes]], dict[str, str]]:
    """Start the services as child processes: `kagi serve` each, or one process with all three."""
    ports = {"ca": free_port(), "otp": free_port(), "enrollment": free_port(), "gateway": 0, "gateway_http": 0}
    pki = ensure_dev_pki(state, store_url=store_url)
    env = stack_environment(
        pki,
        ports,
        store_url,
        {
            "KAGI_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=false",
            "KAGI_MAIL_POLL_MS": "20",
            "KAGI_LOG_LEVEL": "WARNING",
        },
    )
    full_env = {**os.environ, **env}
    processes: list[subprocess.Popen[bytes]] = []
    if layout == "one process per service":
        for name in ("ca", "otp", "enrollment"):
            processes.append(subprocess.Popen([KAGI, "serve", name], env=full_env))
    else:
        code = (
            "import asyncio, json, os, sys\n"
            "from pathlib import Path\n"
            "from kagi.cli.stack import start_stack\n"
            "from kagi.runtime.serve import serve_until_signalled\n"
            "from kagi.runtime.logging import configure_logging\n"
            "configure_logging('bench', level='WARNING')\n"
            "ports = json.loads(sys.argv[2])\n"
            "async def start():\n"
            "    return await start_stack(Path(sys.argv[1]), ports=ports, store_url=sys.argv[3], with_gateway=False,"
            " extra_env={k: v for k, v in os.environ.items() if k.startswith('KAGI_')})\n"
            "asyncio.run(serve_until_signalled(start))\n"
        )
        processes.append(
            subprocess.Popen([sys.executable, "-c", code, str(state), json.dumps(ports), store_url], env=full_env)
        )
    for name in ("ca", "otp", "enrollment"):
        asyncio.run(wait_for_port(ports[name], exited=lambda: _exited(processes)))
    targets = {name: f"localhost:{ports[name]}" for name in ("ca", "otp", "enrollment")}
    return processes, targets


def _exited(processes: list[subprocess.Popen[bytes]]) -> int | None:
    """Return the exit status of the first service process that has ended, if any."""
    return next((status for status in (p.poll() for p in processes) if status is not None), None)


async def drive(
    services: Services, workdir: Path, enrollments: int, concurrency: int
) -> tuple[float, dict[str, list[float]]]:
    customers = [Customer(services, workdir) for _ in range(enrollments)]
    await asyncio.gather(*(c.register_application() for c in customers))
    latencies: dict[str, list[float]] = defaultdict(list)
    gate = asyncio.Semaphore(concurrency)

    async def enroll(customer: Customer) -> None:
        async with gate:
            for name in STEPS:
                step = getattr(customer, name)
                start = time.perf_counter()
                if name == "step10":
                    await step(time.time())
                else:
                    await step()
                elapsed = time.perf_counter() - start
                if name == "step7":
                    # step 7's time includes waiting for the mail to be delivered and read: keep the RPC alone
                    elapsed = customer.step7_rpc_seconds
                latencies[name].append(elapsed)

    start = time.perf_counter()
    await asyncio.gather(*(enroll(c) for c in customers))
    return time.perf_counter() - start, latencies


async def measure(
    services: Services, workdir: Path, enrollments: int, concurrency: int
) -> tuple[float, dict[str, list[float]]]:
    try:
        return await drive(services, workdir, enrollments, concurrency)
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrollments", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis")
    parser.add_argument("--layouts", default="one,per-service", help="comma-separated: one, per-service")
    args = parser.parse_args()

    kdf = kdf_cost_seconds()
    cores = os.cpu_count() or 1
    ceiling = cores / (KDF_OPERATIONS_PER_ENROLLMENT * kdf)
    print(f"{platform.python_implementation()} {platform.python_version()}, {cores} cores, "
          f"{args.enrollments} enrollments per run, {args.concurrency} in flight")  # fmt: skip
    print(f"argon2id (19 MiB, t=2, p=1): {kdf * 1000:.1f} ms CPU per hash; "
          f"{KDF_OPERATIONS_PER_ENROLLMENT} per enrollment = {KDF_OPERATIONS_PER_ENROLLMENT * kdf * 1000:.0f} ms; "
          f"KDF ceiling on {cores} cores = {ceiling:.1f} enrollments/s\n")  # fmt: skip

    rows = []
    step_rows = []
    layouts = {"one": "all services in one process", "per-service": "one process per service"}
    for store in args.stores.split(","):
        for layout in (layouts[name] for name in args.layouts.split(",")):
            with tempfile.TemporaryDirectory(prefix="kagi-bench-") as tmp:
                base = Path(tmp)
                redis = RedisServer(base) if store == "redis" else None
                smtp = SmtpServer().start()
                processes: list[subprocess.Popen[bytes]] = []
                try:
                    url = redis.url() if redis else "sqlite:"
                    processes, targets = start_services(base / "state", url, smtp.port, layout)
                    workdir = base / "client"
                    workdir.mkdir()
                    services = Services(targets, base / "state" / "tls", smtp)
                    services_before = cpu_seconds(p.pid for p in processes)
                    driver_before = time.process_time()
                    elapsed, latencies = asyncio.run(measure(services, workdir, args.enrollments, args.concurrency))
                    # CPU spent while the enrollments ran (registrations included), without start-up
                    service_cpu = cpu_seconds(p.pid for p in processes) - services_before
                    driver_cpu = time.process_time() - driver_before
                finally:
                    for process in processes:
                        process.send_signal(signal.SIGTERM)
                    for process in processes:
                        process.wait(timeout=20)
                    smtp.stop()
                    if redis:
                        redis.stop()
            rate = args.enrollments / elapsed
            rows.append(
                (store, layout, rate, rate / ceiling, service_cpu / args.enrollments, driver_cpu / args.enrollments)
            )
            for name in STEPS:
                values = latencies[name]
                step_rows.append((store, layout, name, percentile(values, 0.5), percentile(values, 0.99)))

    print("| store | layout | enrollments/s | of KDF ceiling | service CPU ms/enrollment | driver CPU ms/enrollment |")
    print("|---|---|---:|---:|---:|---:|")
    for store, layout, rate, share, service_cpu, driver_cpu in rows:
        print(f"| {store} | {layout} | {rate:.1f} | {share:.0%} | {service_cpu * 1000:.0f} | {driver_cpu * 1000:.0f} |")
    print("\n| store | layout | step | p50 ms | p99 ms |")
    print("|---|---|---|---:|---:|")
    for store, layout, name, p50, p99 in step_rows:
        print(f"| {store} | {layout} | {name[4:]} | {p50 * 1000:.1f} | {p99 * 1000:.1f} |")


if __name__ == "__main__":
    if not shutil.which("redis-server"):
        sys.exit("redis-server is needed (apt-get install redis-server)")
    main()
