"""What a replica acknowledgement (`WAIT 1`) costs per write, on one Redis, a Sentinel set and a Redis Cluster.

    python bench/store_topology_bench.py [--ops N] [--concurrency 1,32] [--budget SECONDS]

Starts, on free loopback ports, one redis-server, a Sentinel set (master, replica, three sentinels) and a
3-master / 3-replica Cluster, all with AOF `appendfsync always` (tests/support/redis_topology.py), then
measures create-if-absent and compare-and-swap through the store at each in-flight level, with and without
`wait_replicas` (the default under Sentinel and Cluster is 1). On the Cluster the keys are spread by
aggregate (each key its own), so the load spreads over the three masters. Every cell stops after N operations
or its time budget. Prints a markdown table; figures belong in docs/benchmarks.md with machine and date.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kagi.store import Entry, KeyValueStore, Placement, open_store
from tests.support.redis_topology import RedisClusterProcesses, RedisProcess, SentinelSet, topology_port

VALUE = b"x" * 200


async def measure(store: KeyValueStore, ops: int, in_flight: int, budget: float) -> dict[str, float]:
    """Return operations per second of create and CAS at IN_FLIGHT, on a fresh collection."""
    collection = "bench"
    prefix = uuid.uuid4().hex[:8]
    entries: dict[int, Entry] = {}
    rates = {}
    for name in ("create", "cas"):
        indexes: Iterator[int] = iter(range(ops if name == "create" else len(entries)))
        done = 0
        started = time.perf_counter()
        deadline = started + budget

        async def worker(name: str = name, indexes: Iterator[int] = indexes, deadline: float = deadline) -> None:
            nonlocal done
            for i in indexes:  # shared iterator: each index is taken by exactly one worker
                if name == "create":
                    entries[i] = await store.create(collection, f"{prefix}-{i:08}", VALUE)
                else:
                    entry = entries[i]
                    entries[i] = await store.compare_and_swap(collection, entry.key, VALUE, version=entry.version)
                done += 1
                if time.perf_counter() > deadline:
                    return

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        rates[name] = done / (time.perf_counter() - started)
    return rates


async def main() -> None:
    """Start the topologies, run every cell and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000, help="operations per cell (default 3000)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated in-flight levels (default 1,32)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per cell at most (default 2)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    spread = Placement(spread={"bench": lambda key: key})
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        server = RedisProcess(
            root / "server", topology_port(), ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        )
        sentinels = SentinelSet(root / "sentinel")
        cluster = RedisClusterProcesses(root / "cluster")
        server.start()
        sentinels.start()
        cluster.start()
        targets = [
            ("one server", f"redis://{server.address}/0", Placement()),
            ("sentinel, no wait", sentinels.url + "?wait_replicas=0", Placement()),
            ("sentinel, WAIT 1", sentinels.url, Placement()),
            ("cluster, no wait", cluster.url + "?wait_replicas=0", spread),
            ("cluster, WAIT 1", cluster.url, spread),
        ]
        rows = []
        try:
            for label, url, placement in targets:
                for in_flight in levels:
                    store = open_store(url, namespace=f"b{uuid.uuid4().hex[:8]}", state_dir=None, placement=placement)
                    try:
                        rates = await measure(store, args.ops, in_flight, args.budget)
                    finally:
                        await store.close()
                    rows.append((label, in_flight, rates["create"], rates["cas"]))
        finally:
            cluster.stop()
            sentinels.stop()
            server.kill()
    print(f"Python {platform.python_version()}, {platform.machine()}, AOF appendfsync always everywhere\n")
    print("| target | in flight | create/s | CAS/s |")
    print("|---|---:|---:|---:|")
    for label, in_flight, create, cas in rows:
        print(f"| {label} | {in_flight} | {create:,.0f} | {cas:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
