"""Operations per second of the store drivers: create-if-absent, get and compare-and-swap, at 1 and C in flight.

    python bench/store_bench.py [--ops N] [--concurrency 1,32] [--redis-url redis://127.0.0.1:6379/0]

SQLite runs on a fresh file in a temporary directory (WAL, synchronous=FULL: one fsync per write). Redis
runs on a redis-server this script starts on a free loopback port with persistence off (AOF and RDB), unless
--redis-url names one; with AOF `appendfsync always` its writes would pay an fsync each too. Every cell stops
after N operations or its time budget, whichever comes first, so the whole run stays well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.harness import RedisServer
from kagi.store import Entry, KeyValueStore
from kagi.store.redis import RedisStore
from kagi.store.sqlite import SQLiteStore

VALUE = b"x" * 256  # about the size of a kagi record (JSON of an enrollment or an OTP seed reference)


@dataclass(frozen=True)
class Result:
    """One cell of the table."""

    driver: str
    operation: str
    in_flight: int
    ops: int
    seconds: float

    @property
    def rate(self) -> float:
        """Return operations per second."""
        return self.ops / self.seconds if self.seconds else 0.0


async def run_cell(
    op: Callable[[int], Awaitable[object]], total: int, in_flight: int, budget: float
) -> tuple[int, float]:
    """Call `op(i)` for i in 0..total-1 with `in_flight` workers until done or out of budget."""
    next_index = iter(range(total))
    done = 0
    started = time.perf_counter()
    deadline = started + budget

    async def worker() -> None:
        nonlocal done
        for i in next_index:  # shared iterator: each index is taken by exactly one worker
            await op(i)
            done += 1
            if time.perf_counter() > deadline:
                return

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done, time.perf_counter() - started


async def bench_driver(
    name: str, store: KeyValueStore, ops: int, concurrency: list[int], budget: float
) -> list[Result]:
    """Measure create, get and CAS on one store at every concurrency level, then close it."""
    try:
        return [r for in_flight in concurrency for r in await bench_level(name, store, ops, in_flight, budget)]
    finally:
        await store.close()


async def bench_level(name: str, store: KeyValueStore, ops: int, in_flight: int, budget: float) -> list[Result]:
    """Measure create, get and CAS at one concurrency level, on a fresh collection."""
    collection = f"bench-{uuid.uuid4().hex[:8]}"
    entries: dict[int, Entry] = {}

    async def create(i: int) -> None:
        entries[i] = await store.create(collection, f"key-{i:08}", VALUE)

    async def get(i: int) -> None:
        await store.get(collection, f"key-{i % len(entries):08}")

    async def cas(i: int) -> None:
        # Each index is one key updated at its known version, so no attempt loses a race: this measures
        # the write path, not contention.
        entry = entries[i]
        entries[i] = await store.compare_and_swap(collection, entry.key, VALUE, version=entry.version)

    results = []
    done, seconds = await run_cell(create, ops, in_flight, budget)
    results.append(Result(name, "create-if-absent", in_flight, done, seconds))
    # A budget cut stops every worker after its current call, so the created indexes are 0..done-1.
    created = len(entries)
    done, seconds = await run_cell(get, ops, in_flight, budget)
    results.append(Result(name, "get", in_flight, done, seconds))
    done, seconds = await run_cell(cas, created, in_flight, budget)
    results.append(Result(name, "compare-and-swap", in_flight, done, seconds))
    return results


def redis_version(url: str | None) -> str:
    """Name the local redis-server binary's version (or the URL's server, unknown)."""
    if url:
        return "external"
    binary = shutil.which("redis-server")
    if binary is None:
        return "absent"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.split()[2].removeprefix("v=") if out else "unknown"


async def main() -> None:
    """Parse the flags, runs every cell and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000, help="operations per cell (default 3000)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated in-flight levels (default 1,32)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per cell at most (default 2)")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kagi-bench-") as scratch:
        sqlite_store = SQLiteStore(Path(scratch) / "bench.db", namespace="bench")
        results += await bench_driver("sqlite", sqlite_store, args.ops, concurrency, args.budget)
        with contextlib.ExitStack() as stack:
            url = args.redis_url or stack.enter_context(RedisServer(Path(scratch))).url()
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            # The bench's Redis runs without AOF (it measures kagi, not fsync): accepted explicitly.
            redis_store = RedisStore(url, namespace=namespace, allow_volatile=True)
            results += await bench_driver("redis", redis_store, args.ops, concurrency, args.budget)

    print(
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"redis-server {redis_version(args.redis_url)}, {platform.machine()}, "
        f"{args.ops} ops per cell, {args.budget:g} s budget per cell\n"
    )
    print("| driver | operation | in flight | ops | seconds | ops/s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.driver} | {r.operation} | {r.in_flight} | {r.ops} | {r.seconds:.2f} | {r.rate:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
