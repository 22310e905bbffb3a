"""Complete enrollments per second (all ten steps, machine-driven) against the KDF ceiling, with p50/p99 per step.

    python bench/enrollment_bench.py [--enrollments 60] [--concurrency 16]

Four configurations, each on fresh state: all services in one process and one process per service, on the
SQLite store and on Redis (a redis-server the script starts on a free port). The services always run in child
processes and the customers are driven from this one, so the clients do not share the services' interpreter;
the machine has 2 cores, which the services and this driver share.

Password, PIN and temporary-credential hashing (argon2id) is deliberately expensive and sets the ceiling: each
enrollment costs 7 argon2id operations (step 1 verifies 2 temporary passwords, step 2 hashes 2 passwords, step 6
verifies 1, step 7 hashes the usage-start password, step 8 verifies it). The ceiling is cores / (7 x one hash), one
hash's CPU being the median of 20 timed before and 20 after each configuration. On a shared machine `--wait-quiet
600` starts each configuration once the machine is idle (or after the wait). Applications are registered before the
clock starts (the operator's work, not the customer's), and the CPU columns count the timed enrollments only.
`--profile` samples the service processes with py-spy (in the dev extras) while they run and prints the functions
they spent their busy samples in (a thread blocked inside C, in SQLite's fsync or a socket read, counts as busy
there: `perf record -e cpu-clock` tells CPU alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    RedisServer,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    percentile,
    wait_for_port,
)
from kagi.cli.stack import stack_environment  # noqa: E402
from kagi.passwords import OWASP_ARGON2ID, PasswordHasher, Pepper  # noqa: E402
from services.ca_service.creation import ensure_dev_pki  # noqa: E402
from tests.support.enrollment_flow import Customer, Services  # noqa: E402
from tests.support.smtp import SmtpServer  # noqa: E402

KDF_OPERATIONS_PER_ENROLLMENT = 7
STEPS = ["step1", "step2", "step3", "step4", "step5", "step6", "step7", "step8", "step9", "step10"]
KAGI = str(Path(sys.executable).parent / "kagi")


def kdf_samples(samples: int = 20) -> list[float]:
    """Time argon2id hashes with the production parameters, one at a time: CPU seconds each."""
    hasher = PasswordHasher([Pepper("bench", b"p" * 32)], OWASP_ARGON2ID)
    times = []
    for _ in range(samples):
        start = time.process_time()
        hasher.hash("Passw0rd")
        times.append(time.process_time() - start)
    return times


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
            # The outbox polls at its default interval: a step's mail rings the sender and goes out at once.
            "KAGI_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=false",
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


@dataclass
class Run:
    """One configuration's timed enrollments: wall time, step latencies, and the CPU each party used meanwhile."""

    elapsed: float
    latencies: dict[str, list[float]]
    service_cpu: float  # the service processes
    driver_cpu: float  # this process (customers, SMTP server) and the openssl processes it ran
    store_cpu: float  # the redis-server (0 on SQLite, which runs inside the services)
    machine_cpu: float  # every process on the machine


def wait_for_quiet(within: float, *, busy: float = 0.10, window: float = 3.0) -> None:
    """Wait up to WITHIN seconds until the machine's CPU is under BUSY (a fraction of all cores) over a WINDOW."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = machine_busy_seconds()
        time.sleep(window)
        if (machine_busy_seconds() - before) / (window * cores) < busy:
            return


def own_cpu_seconds() -> float:
    """Return the CPU seconds this process and its reaped children (the customers' openssl runs) have used."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


async def measure(
    services: Services,
    workdir: Path,
    enrollments: int,
    concurrency: int,
    service_pids: list[int],
    store_pids: list[int],
    profile: Path | None,
) -> Run:
    """Register the applications (untimed), then time the customers' ten steps and the CPU spent meanwhile."""
    try:
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

        spies = start_profiler(profile, service_pids)
        before = (cpu_seconds(service_pids), own_cpu_seconds(), cpu_seconds(store_pids), machine_busy_seconds())
        start = time.perf_counter()
        await asyncio.gather(*(enroll(c) for c in customers))
        elapsed = time.perf_counter() - start
        after = (cpu_seconds(service_pids), own_cpu_seconds(), cpu_seconds(store_pids), machine_busy_seconds())
        stop_profiler(spies)
        used = [b - a for a, b in zip(before, after, strict=True)]
        return Run(elapsed, latencies, *used)
    finally:
        await services.close()


def start_profiler(directory: Path | None, pids: list[int]) -> list[subprocess.Popen[bytes]]:
    """Start py-spy on each service process (raw stacks, 100 Hz, not pausing it) when DIRECTORY is given."""
    if directory is None:
        return []
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spies = []
    for pid in pids:
        argv = [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--nonblocking"]
        argv += ["--output", str(directory / f"{pid}.txt")]
        spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def stop_profiler(spies: list[subprocess.Popen[bytes]]) -> None:
    """Stop py-spy (SIGINT makes it write its stacks) and wait for it."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(timeout=60)


# A thread parked in one of these is waiting, not working: py-spy's --nonblocking sampling still reports it.
_WAITING = ("EpollSelector.select", "_worker (concurrent/futures/thread.py)", "Condition.wait", "Thread._bootstrap (")
# The frames that run the work (the event loop's callbacks, an executor's work items), not the work itself.
_RUNNERS = ("Handle._run (", "_WorkItem.run (", "_worker (concurrent/futures/thread.py)", "Thread.run (")


def profile_summary(directory: Path, top: int) -> list[str]:
    """Return the functions the services spent their busy samples in: by own time and with their callees."""
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    busy = 0
    for path in directory.glob("*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            # py-spy names the project's files by their full path, the libraries' by their module path.
            frames = [re.sub(r":\d+\)$", ")", f.replace(f" ({ROOT}/", " (")) for f in stack.split(";")]
            if not frames or frames[-1].startswith(_WAITING):
                continue
            busy += int(count)
            own[frames[-1]] += int(count)
            # Below the event loop's or the worker thread's own frames: what the work was, not how it was run.
            runners = [i for i, f in enumerate(frames) if f.startswith(_RUNNERS)]
            for frame in set(frames[runners[-1] + 1 if runners else 0 :]):
                within[frame] += int(count)
    lines = [f"{busy} busy samples; own time:"]
    lines += [f"  {n / busy:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("with callees:")
    lines += [f"  {n / busy:6.1%}  {name}" for name, n in within.most_common(top)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrollments", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis")
    parser.add_argument("--layouts", default="one,per-service", help="comma-separated: one, per-service")
    parser.add_argument(
        "--profile", action="store_true", help="sample the service processes with py-spy and print where they spent it"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each configuration, wait up to SECONDS for the machine's CPU to be under 10%% busy",
    )
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    print(f"{platform.python_implementation()} {platform.python_version()}, {cores} cores, "
          f"{args.enrollments} enrollments per run, {args.concurrency} in flight")  # fmt: skip
    print(f"each enrollment costs {KDF_OPERATIONS_PER_ENROLLMENT} argon2id (19 MiB, t=2, p=1) operations; one is "
          "timed 20 times before and 20 after each\nconfiguration (the median kept), and the KDF ceiling is "
          "cores / (7 x one)\n")  # fmt: skip

    rows = []
    step_rows = []
    profiles = []
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
                    wait_for_quiet(args.wait_quiet)
                    kdf_before = kdf_samples()
                    profile = base / "profile" if args.profile else None
                    if profile is not None:
                        profile.mkdir()
                    run = asyncio.run(
                        measure(
                            services,
                            workdir,
                            args.enrollments,
                            args.concurrency,
                            [p.pid for p in processes],
                            [redis.process.pid] if redis else [],
                            profile,
                        )
                    )
                    if profile is not None:
                        profiles.append((store, layout, profile_summary(profile, 15)))
                finally:
                    for process in processes:
                        process.send_signal(signal.SIGTERM)
                    for process in processes:
                        process.wait(timeout=20)
                    smtp.stop()
                    if redis:
                        redis.stop()
            # The median of the hashes timed before and after: this host's speed drifts by 10-20% within minutes.
            kdf = statistics.median(kdf_before + kdf_samples())
            rows.append((store, layout, kdf, run))
            for name in STEPS:
                values = run.latencies[name]
                step_rows.append((store, layout, name, percentile(values, 0.5), percentile(values, 0.99)))

    n = args.enrollments
    print("*of KDF ceiling*: the rate over cores / (7 x argon2id). *by CPU*: 7 x argon2id over the CPU the stack")
    print("(services, driver, redis-server) used per enrollment: the share of the ceiling the rate reaches when the")
    print("stack has the cores to itself. *others*: CPU of every other process on the machine meanwhile.\n")
    print("| store | layout | enrollments/s | of KDF ceiling | by CPU | argon2id ms | service CPU ms/enrollment "
          "| driver CPU ms/enrollment | redis-server CPU ms/enrollment | others CPU ms/enrollment |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for store, layout, kdf, run in rows:
        rate = n / run.elapsed
        ceiling = cores / (KDF_OPERATIONS_PER_ENROLLMENT * kdf)
        stack = (run.service_cpu + run.driver_cpu + run.store_cpu) / n
        others = max(0.0, run.machine_cpu - run.service_cpu - run.driver_cpu - run.store_cpu) / n
        print(f"| {store} | {layout} | {rate:.1f} | {rate / ceiling:.0%} "
              f"| {KDF_OPERATIONS_PER_ENROLLMENT * kdf / stack:.0%} | {kdf * 1000:.1f} "
              f"| {run.service_cpu / n * 1000:.0f} | {run.driver_cpu / n * 1000:.0f} | {run.store_cpu / n * 1000:.0f} "
              f"| {others * 1000:.0f} |")  # fmt: skip
    print("\n| store | layout | step | p50 ms | p99 ms |")
    print("|---|---|---|---:|---:|")
    for store, layout, name, p50, p99 in step_rows:
        print(f"| {store} | {layout} | {name[4:]} | {p50 * 1000:.1f} | {p99 * 1000:.1f} |")
    for store, layout, lines in profiles:
        print(f"\nprofile of the services, {store}, {layout}: " + "\n".join(lines))


if __name__ == "__main__":
    if not shutil.which("redis-server"):
        sys.exit("redis-server is needed (apt-get install redis-server)")
    main()
