"""Redis Cluster and Sentinel: OTP verifications spread over a 3-shard Cluster, CA issuances on it, and WAIT 1.

    python bench/cluster_bench.py [--tokens 1200] [--inflight 32] [--seconds 4]

Everything runs on 127.0.0.1, every Redis with AOF `appendfsync always` (what kagi requires), started by this
script with tests/support/redis_topology.py: a 3-master / 3-replica Cluster, a Sentinel set (master, replica,
three sentinels), and one plain redis-server for comparison. About two minutes on 2 cores.

1. OTP verifications: VerifyCode through the real gRPC API (mTLS) from separate client processes, against two
   OTP server processes (replicas of the service on one port, SO_REUSEPORT), built as `start_otp` builds them.
   The same tokens (created once per store through the use cases) are verified on one Redis (`redis://`), on
   the Cluster (`redis+cluster://`, every commit followed by WAIT 1) and on the Cluster without the replica wait
   (`?wait_replicas=0`); each scenario runs in a 60-second step of its own (the servers' clock is offset by
   hours), a cold-cache pass first (untimed), then two timed passes (steps c and c+1). Per shard: the master's
   EVALSHA + HMGET calls (INFO commandstats deltas), which are every store call a verification makes; the table
   says how far the busiest master is above the quietest one (the goal: within 20%).
2. CA issuances: `kagi serve ca` (one worker) on the Cluster, IssueCertificate from a client process (as
   bench/ca_grpc_bench.py does it); the busiest master's share of the store's calls, and why.
3. WAIT 1: the same commit loop (one create-if-absent per commit) through `redis+sentinel://` with the replica
   wait every Sentinel or Cluster URL gets, and with `?wait_replicas=0`: one commit at a time (latency), and
   32 in flight (rate).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # ca_grpc_bench imports its neighbour by name

import redis
from redis.crc import key_slot

from bench import ca_grpc_bench as ca
from bench import otp_grpc_bench as otp
from bench.harness import RedisServer, free_port, machine_busy_seconds, percentile
from kagi.runtime.logging import configure_logging
from kagi.runtime.settings import ListenSettings, Secret, TlsFiles
from kagi.store import Create, open_store
from kagi.store.redis import bucket_tags
from services.ca_service.domain.keys import KeyAlgorithm
from services.otp_service.domain import OtpPolicy
from services.otp_service.main import OtpSettings
from tests.support.redis_topology import RedisClusterProcesses, SentinelSet
from tests.support.tls import TestPki

OTP_WORKERS = 2
"""OTP server processes (replicas of the service) per scenario."""
CONNECTIONS = 16
"""Client connections per scenario (a token always goes over the same one)."""
SPREAD_GOAL = 0.20
"""The busiest master may serve at most this much more than the quietest one."""


def store_calls(addresses: Sequence[str]) -> dict[str, int]:
    """Return, per server, the EVALSHA and HMGET calls it has served (every call the store driver makes)."""
    counts: dict[str, int] = {}
    for address in addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), socket_timeout=10) as client:
            stats = client.info("commandstats")
        counts[address] = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "hmget"))
    return counts


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Return each server's calls between two readings."""
    return {address: after[address] - before.get(address, 0) for address in after}


def masters_of(cluster: RedisClusterProcesses) -> list[str]:
    """Return the Cluster's masters, in slot order."""
    served = cluster.masters()
    return sorted(served, key=lambda address: min(first for first, _ in served[address]))


def buckets_per_master(cluster: RedisClusterProcesses, namespace: str) -> list[int]:
    """Return how many of the namespace's 64 buckets (kagi.store.redis) each master serves, in slot order."""
    served = cluster.masters()
    slots = [key_slot(("{" + tag + "}").encode()) for tag in bucket_tags(namespace)]
    return [
        sum(1 for slot in slots if any(first <= slot <= last for first, last in served[address]))
        for address in masters_of(cluster)
    ]


# -- 1. OTP verifications ----------------------------------------------------------------------------------------


@dataclass
class OtpRow:
    """One scenario's timed verifications."""

    store: str
    run: otp.Run
    per_server: dict[str, int]
    server_cpu_us: float

    @property
    def spread(self) -> float:
        """Return how much more the busiest server served than the quietest (0.0: equal)."""
        counts = list(self.per_server.values())
        return max(counts) / max(min(counts), 1) - 1


def otp_scenario(
    label: str,
    settings: OtpSettings,
    tokens: list[tuple[str, bytes]],
    client_tls: TlsFiles,
    *,
    index: int,
    inflight: int,
    servers: Sequence[str],
) -> OtpRow:
    """Verify every token once untimed (cold caches), then twice timed; count each server's store calls."""
    offset = otp.scenario_offset(index)
    port = free_port()
    workers = otp.start_servers(
        replace(settings, listen=replace(settings.listen, port=port)), OTP_WORKERS, offset, "", "asyncio"
    )
    clients = otp.Clients(port, client_tls, OTP_WORKERS, CONNECTIONS)
    step = int((time.time() + offset) // otp.PERIOD)
    try:
        clients.run(otp.verification_calls(tokens, step, [-1], CONNECTIONS), inflight)
        before, cpu = store_calls(servers), workers.cpu_seconds()
        run = clients.run(otp.verification_calls(tokens, step, [0, 1], CONNECTIONS), inflight)
        per_server = delta(store_calls(servers), before)
        server_cpu_us = (workers.cpu_seconds() - cpu) / max(run.ok, 1) * 1e6
        if (time.time() + offset) // otp.PERIOD != step:
            print(f"warning: {label} crossed a step boundary; rerun with fewer tokens", file=sys.stderr)
    finally:
        clients.close()
        workers.stop()
    print(f"  OTP on {label}: {run.rate:,.0f} verifications/s", file=sys.stderr, flush=True)
    return OtpRow(label, run, per_server, server_cpu_us)


def otp_settings(url: str, tls: TlsFiles, state_dir: Path) -> OtpSettings:
    """Return the OTP servers' settings on URL (the bench's policy accepts the code of the next step too)."""
    return OtpSettings(
        listen=ListenSettings("127.0.0.1", 0, tls),
        store_url=url,
        state_dir=state_dir,
        pepper=Secret(otp.PEPPER),
        kek=otp.KEK,
        policy=OtpPolicy(issuer="Bench", future_steps=1),
    )


# -- 2. CA issuances ---------------------------------------------------------------------------------------------


@dataclass
class CaRow:
    """Issuances on the Cluster and where their store calls went."""

    rate: float
    per_master: dict[str, int]

    @property
    def busiest_share(self) -> float:
        """Return the busiest master's share of the store calls."""
        return max(self.per_master.values()) / max(sum(self.per_master.values()), 1)


def ca_scenario(base: Path, cluster: RedisClusterProcesses, seconds: float) -> CaRow:
    """Run `kagi serve ca` on the Cluster and load it with issuances; count each master's store calls."""
    dev = ca.dev_pki(base, KeyAlgorithm.EC_P256)
    state_dir = base / "ca-state"
    state_dir.mkdir()
    masters = masters_of(cluster)
    tls = dev.tls("enrollment")
    with ca.ca_server(dev, cluster.url, state_dir, 1) as (target, pids):
        before = store_calls(masters)
        spec = {
            "kind": "issue",
            "target": target,
            "tls": [str(p) for p in (tls.cert_file, tls.key_file, dev.root)],
            "seconds": seconds,
            "warmup": 1.0,
            "pids": pids,
        }
        measured = ca.run_client(spec)
        per_master = delta(store_calls(masters), before)
    print(f"  CA on the Cluster: {measured['rate']:,.0f} issuances/s", file=sys.stderr, flush=True)
    return CaRow(measured["rate"], per_master)


# -- 3. WAIT 1 per commit ----------------------------------------------------------------------------------------


@dataclass
class WaitRow:
    """The commit loop on one URL."""

    label: str
    sequential: list[float]
    rate: float


async def commit_loop(label: str, url: str, *, sequential: int, concurrent: int, inflight: int) -> WaitRow:
    """Commit SEQUENTIAL creates one at a time (timing each), then CONCURRENT with INFLIGHT outstanding."""
    store = open_store(url, namespace=f"wait{os.getpid()}{len(label)}", state_dir=None)
    try:
        await store.ping()
        latencies = []
        for i in range(sequential):
            started = time.perf_counter()
            await store.commit([Create("bench", f"s{i}", b"x" * 64)])
            latencies.append(time.perf_counter() - started)
        pending = iter(range(concurrent))

        async def worker() -> None:
            for i in pending:
                await store.commit([Create("bench", f"c{i}", b"x" * 64)])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        rate = concurrent / (time.perf_counter() - started)
    finally:
        await store.close()
    print(f"  commits, {label}: p50 {percentile(latencies, 0.5) * 1000:.2f} ms, {rate:,.0f}/s", file=sys.stderr)
    return WaitRow(label, latencies, rate)


# -- the run -----------------------------------------------------------------------------------------------------


def main() -> None:
    """Start the topologies, run the three measurements and print the tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1200, help="OTP tokens per store (3 verifications each)")
    parser.add_argument("--inflight", type=int, default=32, help="calls (commits) in flight")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long the CA issuances are measured")
    parser.add_argument("--commits", type=int, default=300, help="commits one at a time, per WAIT setting")
    args = parser.parse_args()
    started, busy = time.perf_counter(), machine_busy_seconds()
    load_before = os.getloadavg()[0]
    configure_logging("cluster-bench", level="WARNING")
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        base = Path(tmp)
        pki = TestPki.create()
        server_tls = pki.write(base / "tls", "otp", pki.service("otp"), pki.internal)
        client_tls = pki.write(base / "tls", "enrollment", pki.service("enrollment"), pki.internal)
        single = RedisServer(base, aof_always=True)
        cluster = RedisClusterProcesses(base / "cluster")
        sentinels = SentinelSet(base / "sentinel")
        try:
            t0 = time.perf_counter()
            cluster.start()
            sentinels.start()
            print(f"topologies up in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            masters = masters_of(cluster)
            buckets = buckets_per_master(cluster, "otp")
            stores = [
                ("one Redis", single.url(), [f"127.0.0.1:{single.port}"], True),
                ("Cluster, WAIT 1", cluster.url, masters, True),
                ("Cluster, no WAIT", cluster.url + "?wait_replicas=0", masters, False),
            ]
            otp_rows: list[OtpRow] = []
            tokens: list[tuple[str, bytes]] = []
            for index, (label, url, servers, fresh) in enumerate(stores, start=1):
                settings = otp_settings(url, server_tls, base / "otp-state")
                if fresh:
                    t0 = time.perf_counter()
                    tokens = asyncio.run(otp.create_tokens(settings, args.tokens))
                    print(f"  {len(tokens)} tokens on {label} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                otp_rows.append(
                    otp_scenario(
                        label, settings, tokens, client_tls, index=index, inflight=args.inflight, servers=servers
                    )
                )
            ca_row = ca_scenario(base, cluster, args.seconds)
            wait_rows = [
                asyncio.run(
                    commit_loop(
                        label, url, sequential=args.commits, concurrent=args.commits * 4, inflight=args.inflight
                    )
                )
                for label, url in (
                    ("Sentinel, WAIT 1", sentinels.url),
                    ("Sentinel, no WAIT", sentinels.url + "?wait_replicas=0"),
                )
            ]
        finally:
            sentinels.stop()
            cluster.stop()
            single.stop()

    elapsed = time.perf_counter() - started
    busy = machine_busy_seconds() - busy
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; Python {platform.python_version()}, {os.cpu_count()} CPUs,")
    print(f"load average {load_before:.1f} at the start (the machine is shared with other work)")
    print("every Redis: AOF appendfsync always; the Cluster: 3 masters, 3 replicas; 2 OTP server processes")
    print()
    print(f"OTP VerifyCode over gRPC, {args.tokens} tokens x 2 timed codes, {args.inflight} in flight")
    print()
    print(
        "| store | ok | failed | per second | p50 ms | p99 ms | server CPU µs/call | store calls per shard | spread |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for row in otp_rows:
        run = row.run
        shards = " / ".join(f"{n:,}" for n in row.per_server.values())
        spread = f"{row.spread:.0%}" if len(row.per_server) > 1 else ""
        print(
            f"| {row.store} | {run.ok:,} | {sum(run.failures.values())} | {run.rate:,.0f} | {run.percentile(50):.2f}"
            f" | {run.percentile(99):.2f} | {row.server_cpu_us:,.0f} | {shards} | {spread} |"
        )
    clustered = [row for row in otp_rows if len(row.per_server) > 1]
    worst = max(row.spread for row in clustered)
    verdict = "within" if worst <= SPREAD_GOAL else "NOT within"
    print()
    print(f"busiest shard vs quietest: at most {worst:.0%} more ({verdict} the {SPREAD_GOAL:.0%} goal)")
    print(f"the OTP's 64 buckets per master: {' / '.join(str(n) for n in buckets)}")
    single_rate = otp_rows[0].run.rate
    for row in otp_rows[1:]:
        print(f"{row.store}: {row.run.rate / single_rate:.0%} of one Redis's rate")
    print()
    print(f"CA IssueCertificate on the Cluster (1 worker, EC P-256, {args.seconds:g} s)")
    print()
    print("| issuances/s | store calls per master | busiest master's share |")
    print("|---:|---|---:|")
    shards = " / ".join(f"{n:,}" for n in ca_row.per_master.values())
    print(f"| {ca_row.rate:,.0f} | {shards} | {ca_row.busiest_share:.0%} |")
    print()
    print(f"One create-if-absent per commit through redis+sentinel:// ({args.commits} one at a time, then")
    print(f"{args.commits * 4} with {args.inflight} in flight)")
    print()
    print(f"| replica wait | p50 ms | p99 ms | commits/s with {args.inflight} in flight |")
    print("|---|---:|---:|---:|")
    for wait in wait_rows:
        p50, p99 = percentile(wait.sequential, 0.5) * 1000, percentile(wait.sequential, 0.99) * 1000
        print(f"| {wait.label} | {p50:.2f} | {p99:.2f} | {wait.rate:,.0f} |")
    with_wait, without = wait_rows
    cost = (percentile(with_wait.sequential, 0.5) - percentile(without.sequential, 0.5)) * 1000
    print()
    print(f"WAIT 1 adds {cost:.2f} ms per commit at the median (one at a time)")
    print()
    cores = os.cpu_count() or 1
    print(f"total {elapsed:.0f} s; the CPUs were busy {busy:.0f} of {elapsed * cores:.0f} CPU-s (this run and others)")


if __name__ == "__main__":
    main()
