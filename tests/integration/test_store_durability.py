"""Acknowledged writes survive a SIGKILL of the backend: Redis with AOF `appendfsync always`, and SQLite (WAL,
`synchronous=FULL`) when the writing process itself is killed mid-stream.

A SIGKILL loses whatever the process had not handed to the kernel; it cannot show what a power cut would
lose (the fsync half of the promise), which needs a machine to switch off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kagi.store import Create, Delete, Entry, Replace
from kagi.store.redis import RedisStore
from kagi.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from tests.conftest import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.redis
async def test_redis_acknowledged_writes_survive_sigkill_and_restart(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    """Every create, CAS, commit and increment Redis acknowledged before a SIGKILL is there after a restart,
    deleted entries stay deleted, listings match, and new versions keep rising above the old ones."""
    server = redis_factory()  # AOF with appendfsync always
    store = RedisStore(server.url, namespace=namespace)
    expected: dict[tuple[str, str], Entry] = {}
    deleted: set[tuple[str, str]] = set()
    try:
        for entry in await asyncio.gather(*(store.create("docs", f"k{i:03}", f"v{i}".encode()) for i in range(120))):
            expected["docs", entry.key] = entry
        for i in range(0, 120, 3):
            old = expected["docs", f"k{i:03}"]
            expected["docs", old.key] = await store.compare_and_swap("docs", old.key, b"cas", version=old.version)
        for i in range(1, 120, 10):
            victim, kept = f"k{i:03}", expected["docs", f"k{i + 1:03}"]
            results = await store.commit(
                [
                    Create("other", f"c{i:03}", b"committed"),
                    Replace("docs", kept.key, b"committed", kept.version),
                    Delete("docs", victim),
                    Create("sessions", f"s{i:03}", b"transient", ttl=3600),
                ]
            )
            created, replaced, _, session = results
            assert created is not None
            assert replaced is not None
            assert session is not None
            expected["other", created.key] = created
            expected["docs", kept.key] = replaced
            expected["sessions", session.key] = session
            del expected["docs", victim]
            deleted.add(("docs", victim))
        counts = await asyncio.gather(*(store.increment("counters", "hits") for _ in range(75)))
        top_version = max(e.version for e in expected.values())
    finally:
        await store.close()
    assert max(counts) == 75

    server.kill()
    server.start()

    reopened = RedisStore(server.url, namespace=namespace)
    try:
        for (collection, key), entry in expected.items():
            assert await reopened.get(collection, key) == entry, f"lost {collection}/{key}"
        for collection, key in deleted:
            assert await reopened.get(collection, key) is None, f"{collection}/{key} came back"
        counter = await reopened.get("counters", "hits")
        assert counter is not None
        assert counter.value == b"75"
        listed = (await reopened.list("docs", page_size=1000)).entries
        assert listed == sorted((e for (c, _), e in expected.items() if c == "docs"), key=lambda e: e.key)
        assert (await reopened.list("sessions")).entries == []
        assert (await reopened.create("docs", "after-restart", b"")).version > top_version
    finally:
        await reopened.close()


@pytest.mark.redis
async def test_redis_store_calls_succeed_at_once_after_a_restart(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    """After Redis is killed and restarted on its port, a store whose pool holds connections to the dead
    server serves its very first calls, reads and writes, on every pooled connection: a connection the server
    closed, or one idle past the health-check interval whose PING fails, is replaced before a command is sent
    (and no command is ever re-sent)."""
    server = redis_factory()  # AOF with appendfsync always
    store = RedisStore(server.url, namespace=namespace, max_connections=16)
    try:
        # Sixteen concurrent calls: every pooled connection has been used.
        await asyncio.gather(*(store.create("docs", f"k{i:02}", b"v") for i in range(16)))
        for idle in (0.0, 1.2):  # used just now; idle longer than the health-check interval (1 s)
            await asyncio.sleep(idle)
            # In threads, so the event loop runs meanwhile, as a service's does: it sees the server close.
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.start)
            reads = await asyncio.gather(*(store.get("docs", f"k{i:02}") for i in range(16)))
            assert [e.value if e is not None else None for e in reads] == [b"v"] * 16
            await store.create("docs", f"after-{idle}", b"w")
            await asyncio.gather(*(store.increment("counters", "n") for _ in range(16)))
    finally:
        await store.close()


_WRITER = """
import asyncio, sys
from kagi.store.sqlite import SQLiteStore

async def main(path, namespace):
    store = SQLiteStore(path, namespace=namespace)
    for i in range(1_000_000):
        entry = await store.create("acks", f"k{i:06}", f"value-{i}".encode())
        count = await store.increment("counters", "writes")
        # Acknowledged only once both writes returned, which is when their transactions committed.
        sys.stdout.write(f"{entry.key} {entry.version} {count}\\n")
        sys.stdout.flush()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_sqlite_acknowledged_writes_survive_sigkill_of_the_writer(tmp_path: Path, namespace: str) -> None:
    """A child process writes and acknowledges entries one by one until SIGKILLed mid-stream; reopening the
    file finds every acknowledged entry with its version, the counter at least at its last acknowledged
    value, and an intact database."""
    path = tmp_path / "durable.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, str(path), namespace,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert child.stdout is not None
    acks: list[tuple[str, int, int]] = []
    try:
        while len(acks) < 300:
            raw = await asyncio.wait_for(child.stdout.readline(), 30)
            assert raw, "the writer exited before it was killed"
            acks.append(_parse_ack(raw.decode()))
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    # Lines already in the pipe were acknowledged before the kill too.
    acks += [_parse_ack(line) for line in (await child.stdout.read()).decode().splitlines()]
    assert child.returncode == -signal.SIGKILL

    store = SQLiteStore(path, namespace=namespace)
    try:
        for i, (key, version, _) in enumerate(acks):
            assert await store.get("acks", key) == Entry(key, f"value-{i}".encode(), version), f"lost {key}"
        counter = await store.get("counters", "writes")
        assert counter is not None
        assert int(counter.value) in (acks[-1][2], acks[-1][2] + 1)  # the unacknowledged one may have landed
        listed = (await store.list("acks", page_size=1000)).entries
        assert [e.key for e in listed[: len(acks)]] == [key for key, _, _ in acks]
        assert len(listed) <= len(acks) + 1
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _parse_ack(line: str) -> tuple[str, int, int]:
    key, version, count = line.split()
    return key, int(version), int(count)
