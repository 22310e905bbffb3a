"""Group commit on real SQLite and Redis: concurrent writes share rounds, yet each caller keeps the all-or-nothing,
conditional semantics of its own write, and the journal's chain never forks when another writer moves its head.

The stores come from the store contract's `backend` fixture (a SQLite file in a tmp dir, the test run's real
Redis), each in a namespace of its own. Rounds are counted by watching the driver's `commit`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import pytest
import redis.asyncio as aioredis

from kagi.clock import SystemClock
from kagi.journal import AUDIT, AuditEvent, Change, Journal, audit_records, verify_stored_chain
from kagi.store import (
    Create,
    Delete,
    Entry,
    FailedOperation,
    FailureCause,
    GroupCommitStore,
    InvalidKey,
    KeyExists,
    KeyValueStore,
    Operation,
    Replace,
    StoreUnavailable,
    VersionMismatch,
)
from tests.integration import test_store_contract as contract

# The contract's fixture, so both suites open their stores one way (fixtures are found by module attribute).
backend = contract.backend


@dataclass
class Rounds:
    """The driver commits seen under a store: each round's operations, and an optional gate that holds them."""

    inner: KeyValueStore
    seen: list[list[Operation]] = field(default_factory=list)
    tasks: list[asyncio.Task[object] | None] = field(default_factory=list)
    gate: asyncio.Event | None = None

    @property
    def keys(self) -> list[list[str]]:
        """Return each round's keys, in round order."""
        return [[op.key for op in ops] for ops in self.seen]

    def hold(self) -> asyncio.Event:
        """Make every round wait until the returned event is set."""
        self.gate = asyncio.Event()
        return self.gate


def watch(monkeypatch: pytest.MonkeyPatch, inner: KeyValueStore) -> Rounds:
    """Record every `commit` INNER receives (what a round sends), optionally holding it at a gate."""
    rounds = Rounds(inner)
    original = inner.commit

    async def commit(operations: Sequence[Operation]) -> list[Entry | None]:
        rounds.seen.append(list(operations))
        rounds.tasks.append(asyncio.current_task())
        if rounds.gate is not None:
            await rounds.gate.wait()
        return await original(operations)

    monkeypatch.setattr(inner, "commit", commit)
    return rounds


async def in_flight(rounds: Rounds, count: int) -> None:
    """Return once COUNT rounds have reached the driver (yielding to the loop, never sleeping)."""
    for _ in range(1000):
        if len(rounds.seen) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {count} rounds, saw {len(rounds.seen)}")


async def start(calls: Sequence[Callable[[], Awaitable[object]]]) -> list[asyncio.Future[object]]:
    """CALL in this order and return once each has queued (or gone out) in that order."""
    tasks: list[asyncio.Future[object]] = [asyncio.ensure_future(call()) for call in calls]
    await asyncio.sleep(0)  # ready tasks run in the order they were scheduled
    return tasks


async def outcomes(tasks: Sequence[asyncio.Future[object]]) -> list[object]:
    """Return what each task returned or raised."""
    return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def grouped(backend: contract.Backend) -> GroupCommitStore:
    """The store adapter over the driver under test (the fixture closes the driver)."""
    return GroupCommitStore(backend.store)


async def test_a_lone_write_goes_at_once_in_its_callers_task(
    grouped: GroupCommitStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing in flight, a write is one driver commit sent from the caller's own task: no timer, no hand-off."""
    rounds = watch(monkeypatch, grouped.inner)
    entry = await grouped.create("c", "alone", b"1")
    assert entry.value == b"1"
    assert rounds.keys == [["alone"]]
    assert rounds.tasks == [asyncio.current_task()]


async def test_a_burst_shares_rounds_and_a_taken_key_fails_only_its_owner(
    grouped: GroupCommitStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 concurrent creates, one on a taken key: 49 land, the one fails with KeyExists naming its own operation,
    in far fewer driver commits than writes."""
    await grouped.create("c", "taken", b"0")
    rounds = watch(monkeypatch, grouped.inner)
    results = await asyncio.gather(
        *(grouped.create("c", "taken" if i == 7 else f"k{i}", b"1") for i in range(50)), return_exceptions=True
    )
    assert [i for i, r in enumerate(results) if isinstance(r, KeyExists)] == [7]
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 49
    failure = results[7]
    assert isinstance(failure, KeyExists)
    assert failure.failed == FailedOperation(0, "c", "taken", FailureCause.KEY_EXISTS)
    assert len(rounds.seen) < 10
    assert len((await grouped.list("c", page_size=100)).entries) == 50


async def test_callers_released_by_a_round_come_back_as_one_round(
    grouped: GroupCommitStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight callers writing ten times each, one write after the other: after the first lone write, every round
    carries all eight (80 writes in 11 rounds), rather than the burst splitting into a lone write and the rest."""
    rounds = watch(monkeypatch, grouped.inner)

    async def writer(w: int) -> None:
        for i in range(10):
            await grouped.create("c", f"w{w}.{i}", b"1")

    await asyncio.gather(*(writer(w) for w in range(8)))
    assert [len(ops) for ops in rounds.seen] == [1] + [8] * 9 + [7]
    assert len((await grouped.list("c", page_size=100)).entries) == 80


async def test_a_stale_commit_fails_alone_and_the_others_land(grouped: GroupCommitStore) -> None:
    """Twenty concurrent two-key commits, one naming a stale version in its second operation: that caller alone
    gets VersionMismatch, indexed within its own commit, and wrote nothing; every other caller's writes are stored."""
    seeded = await grouped.commit([Create("c", f"k{i}", b"0") for i in range(40)])
    versions = [e.version for e in seeded if e is not None]

    async def write(i: int) -> list[Entry | None]:
        stale = 1 if i == 7 else 0
        return await grouped.commit(
            [
                Replace("c", f"k{2 * i}", f"new{i}".encode(), versions[2 * i]),
                Replace("c", f"k{2 * i + 1}", f"new{i}".encode(), versions[2 * i + 1] - stale),
            ]
        )

    results = await asyncio.gather(*(write(i) for i in range(20)), return_exceptions=True)

    assert [i for i, r in enumerate(results) if isinstance(r, VersionMismatch)] == [7]
    failure = results[7]
    assert isinstance(failure, VersionMismatch)
    assert failure.failed == FailedOperation(1, "c", "k15", FailureCause.VERSION_MISMATCH)
    assert failure.metadata["operation"] == "1"
    for i in range(20):
        for key in (f"k{2 * i}", f"k{2 * i + 1}"):
            entry = await grouped.get("c", key)
            assert entry is not None
            assert entry.value == (b"0" if i == 7 else f"new{i}".encode())


async def test_units_on_one_key_go_in_separate_rounds_in_arrival_order(
    grouped: GroupCommitStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create, delete, create of one key queued behind a round in flight each get a round of their own, in the
    order they arrived (any other order would fail a create), while a write to another key joins the first."""
    rounds = watch(monkeypatch, grouped.inner)
    gate = rounds.hold()
    first = asyncio.ensure_future(grouped.create("c", "busy", b"0"))
    await in_flight(rounds, 1)
    queued = await start(
        [
            lambda: grouped.commit([Create("c", "k", b"1")]),
            lambda: grouped.commit([Delete("c", "k")]),
            lambda: grouped.commit([Create("c", "k", b"3")]),
            lambda: grouped.create("c", "other", b"x"),
        ]
    )
    gate.set()
    await first

    assert not any(isinstance(o, BaseException) for o in await outcomes(queued))
    assert rounds.keys == [["busy"], ["k", "other"], ["k"], ["k"]]
    entry = await grouped.get("c", "k")
    assert entry is not None
    assert entry.value == b"3"


async def test_ten_swaps_from_one_version_are_judged_one_after_the_other(grouped: GroupCommitStore) -> None:
    """Ten concurrent swaps of one key from the same version: the first to arrive wins, nine get VersionMismatch."""
    version = (await grouped.create("c", "k0", b"0")).version
    results = await outcomes(
        await start(
            [partial(grouped.compare_and_swap, "c", "k0", f"v{i}".encode(), version=version) for i in range(10)]
        )
    )
    assert [isinstance(r, VersionMismatch) for r in results] == [False] + [True] * 9
    entry = await grouped.get("c", "k0")
    assert entry is not None
    assert entry.value == b"v0"


async def test_rounds_are_bounded_in_operations(backend: contract.Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a bound of four operations, 13 queued single writes go in rounds of at most four; a unit larger than
    the bound still goes, alone."""
    grouped = GroupCommitStore(backend.store, max_operations=4)
    rounds = watch(monkeypatch, backend.store)
    gate = rounds.hold()
    first = asyncio.ensure_future(grouped.create("c", "busy", b"0"))
    await in_flight(rounds, 1)
    calls: list[Callable[[], Awaitable[object]]] = [partial(grouped.create, "c", f"k{i}", b"1") for i in range(12)]
    calls.append(lambda: grouped.commit([Create("c", f"big{i}", b"1") for i in range(6)]))
    queued = await start(calls)
    gate.set()
    await first
    assert not any(isinstance(o, BaseException) for o in await outcomes(queued))
    assert [len(ops) for ops in rounds.seen] == [1, 4, 4, 4, 6]


async def test_an_unavailable_store_fails_the_whole_round(
    backend: contract.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the driver is unavailable, every unit of the round gets StoreUnavailable from one driver call: a
    failure that names no operation is nobody's alone, and the round is not retried unit by unit."""
    grouped = GroupCommitStore(backend.store)
    rounds = watch(monkeypatch, backend.store)
    gate = rounds.hold()
    first = asyncio.ensure_future(grouped.create("c", "busy", b"0"))
    await in_flight(rounds, 1)
    queued = await start([partial(grouped.create, "c", f"k{i}", b"1") for i in range(5)])
    await backend.store.close()  # a closed driver answers StoreUnavailable, as a dead backend does
    gate.set()
    with pytest.raises(StoreUnavailable):
        await first
    assert all(isinstance(o, StoreUnavailable) for o in await outcomes(queued))
    assert rounds.keys == [["busy"], [f"k{i}" for i in range(5)]]


async def test_a_cancelled_caller_is_dropped_from_its_round(
    grouped: GroupCommitStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled while it waits for a round is left out of it: its write never reaches the store, and
    the others' land."""
    rounds = watch(monkeypatch, grouped.inner)
    gate = rounds.hold()
    first = asyncio.ensure_future(grouped.create("c", "busy", b"0"))
    await in_flight(rounds, 1)
    waiting = await start([partial(grouped.create, "c", f"k{i}", b"1") for i in range(3)])
    waiting[1].cancel()
    gate.set()
    await first
    assert isinstance((await outcomes(waiting))[1], asyncio.CancelledError)
    assert rounds.keys == [["busy"], ["k0", "k2"]]
    assert await grouped.get("c", "k1") is None
    assert await grouped.get("c", "k2") is not None


async def test_a_malformed_commit_fails_its_caller_only(grouped: GroupCommitStore) -> None:
    """A commit naming one key twice, or with a TTL the driver refuses, fails with InvalidKey before it joins a
    round; a concurrent commit lands."""
    results = await asyncio.gather(
        grouped.commit([Create("c", "a", b"1"), Create("c", "a", b"2")]),
        grouped.commit([Create("c", "t", b"1", ttl=float("inf"))]),
        grouped.commit([Create("c", "b", b"1")]),
        return_exceptions=True,
    )
    assert isinstance(results[0], InvalidKey)
    assert isinstance(results[1], InvalidKey)
    assert not isinstance(results[2], BaseException)
    assert await grouped.get("c", "a") is None


async def test_the_failure_names_index_collection_key_and_cause(backend: contract.Backend) -> None:
    """The driver's error says which operation failed and why, as typed attributes: a create on a live key, a swap
    from a stale version, a swap or versioned delete of an entry that is gone."""
    store = backend.store
    taken = await store.create("a", "taken", b"0")
    stale = taken.version
    taken = await store.compare_and_swap("a", "taken", b"1", version=stale)
    cases: list[tuple[Operation, type[Exception], FailureCause]] = [
        (Create("a", "taken", b"x"), KeyExists, FailureCause.KEY_EXISTS),
        (Replace("a", "taken", b"x", stale), VersionMismatch, FailureCause.VERSION_MISMATCH),
        (Delete("a", "taken", stale), VersionMismatch, FailureCause.VERSION_MISMATCH),
        (Replace("a", "missing", b"x", stale), VersionMismatch, FailureCause.GONE),
        (Delete("a", "missing", stale), VersionMismatch, FailureCause.GONE),
    ]
    for bad, error, cause in cases:
        with pytest.raises(error) as caught:
            await store.commit([Create("a", "fresh", b"x"), Create("z", "other", b"x"), bad])
        failure = caught.value
        assert isinstance(failure, KeyExists | VersionMismatch)
        assert failure.failed == FailedOperation(2, "a", bad.key, cause)
        assert failure.metadata == {"collection": "a", "operation": "2"}
    with pytest.raises(VersionMismatch) as single:
        await store.compare_and_swap("a", "missing", b"x", version=stale)
    assert single.value.failed == FailedOperation(0, "a", "missing", FailureCause.GONE)
    assert await store.get("a", "fresh") is None


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_concurrent_commits_share_redis_round_trips(grouped: GroupCommitStore, backend: contract.Backend) -> None:
    """Two hundred concurrent single-key commits reach Redis in fewer script calls than commits (read from the
    server's own command statistics), and every one of them is stored."""
    client = aioredis.from_url(backend.url)
    try:
        before = int((await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))
        await asyncio.gather(*(grouped.commit([Create("c", f"r{i}", b"x")]) for i in range(200)))
        after = int((await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        await client.aclose()
    assert after - before < 100
    assert all([await grouped.get("c", f"r{i}") for i in range(200)])


# -- the journal: the same rounds, with the audit chain's operations added ------------------------------------


def _change(key: str, *, version: int | None = None) -> Change:
    op: Operation = Create("things", key, b"1") if version is None else Replace("things", key, b"2", version)
    return Change([op], [AuditEvent("tester", "write", key)])


@pytest.fixture(params=["driver", "grouped"])
def journal_store(request: pytest.FixtureRequest, backend: contract.Backend) -> KeyValueStore:
    """The store a journal writes to: the driver itself, or the store adapter over it (the CA's stack)."""
    return backend.store if request.param == "driver" else GroupCommitStore(backend.store)


async def test_journal_changes_share_rounds_and_a_failed_change_fails_alone(
    journal_store: KeyValueStore, backend: contract.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty concurrent changes, one creating a taken key: that change alone fails, with no audit record; the
    others land in a few rounds, each with its record, and the chain verifies."""
    await backend.store.create("things", "taken", b"0")
    journal = Journal(journal_store, SystemClock())
    rounds = watch(monkeypatch, backend.store)
    results = await asyncio.gather(
        *(journal.submit(_change("taken" if i == 4 else f"t{i}")) for i in range(30)), return_exceptions=True
    )
    await journal.close()
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [4]
    failure = results[4]
    assert isinstance(failure, KeyExists)
    assert failure.failed == FailedOperation(0, "things", "taken", FailureCause.KEY_EXISTS)
    assert len(rounds.seen) < 15
    subjects = [record.subject async for record in audit_records(backend.store)]
    assert sorted(subjects) == sorted(f"t{i}" for i in range(30) if i != 4)
    assert (await verify_stored_chain(backend.store)).ok


async def test_journal_replans_when_another_journal_moved_the_head(
    journal_store: KeyValueStore, backend: contract.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two journals (two clients) on one store: when the other moved the head since this one cached it, the head
    compare-and-swap fails, the round is re-read and re-chained (one more commit), and the chain stays one line."""
    other_store = backend.open_another()
    mine = Journal(journal_store, SystemClock())
    other = Journal(other_store, SystemClock())
    await mine.submit(_change("a"))
    await other.submit(_change("b"))  # moves the head under `mine`'s cached copy
    rounds = watch(monkeypatch, backend.store)
    (entry,) = await mine.submit(_change("c"))
    assert entry is not None
    assert len(rounds.seen) == 2  # the lost head CAS, then the re-chained round
    assert [op.collection for op in rounds.seen[0]][:2] == ["things", "audit-head"]

    # And at full speed from both sides at once: every change lands once, on one unbroken chain.
    await asyncio.gather(
        *(mine.submit(_change(f"m{i}")) for i in range(20)),
        *(other.submit(_change(f"o{i}")) for i in range(20)),
    )
    await mine.close()
    await other.close()
    report = await verify_stored_chain(backend.store)
    assert report.ok, report.problem
    assert report.checked == 43
    page = await backend.store.list(AUDIT, page_size=100)
    assert [int(e.key) for e in page.entries] == list(range(43))


_OTHER_REPLICA = """
import asyncio, sys
from kagi.clock import SystemClock
from kagi.journal import AuditEvent, Change, Journal
from kagi.store import Create, GroupCommitStore, open_store

async def main(url, namespace, writers, per_writer):
    store = open_store(url, namespace=namespace, state_dir=None)
    journal = Journal(GroupCommitStore(store), SystemClock())
    async def writer(w):
        for i in range(per_writer):
            key = f"other-{w}-{i}"
            await journal.submit(Change([Create("things", key, b"1")], [AuditEvent("tester", "write", key)]))
    results = await asyncio.gather(*(writer(w) for w in range(writers)), return_exceptions=True)
    await journal.close()
    await store.close()
    failed = [repr(r) for r in results if isinstance(r, BaseException)]
    print(len(failed), failed[:1])

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def test_two_replicas_under_sustained_load_both_keep_landing(backend: contract.Backend, namespace: str) -> None:
    """Two replicas (two OS processes) appending flat out to one chain: the one holding a fresh head cannot
    starve the other, whose every retry must re-read the head, into giving up; every change lands on one chain."""
    writers, per_writer = 32, 150
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OTHER_REPLICA,
        backend.url,
        namespace,
        str(writers),
        str(per_writer),
        stdout=asyncio.subprocess.PIPE,
    )
    journal = Journal(GroupCommitStore(backend.open_another()), SystemClock())

    async def writer(w: int) -> None:
        for i in range(per_writer):
            await journal.submit(_change(f"mine-{w}-{i}"))

    results = await asyncio.gather(*(writer(w) for w in range(writers)), return_exceptions=True)
    await journal.close()
    out, _ = await other.communicate()
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert other.returncode == 0
    assert out.decode().split()[0] == "0", out.decode()
    report = await verify_stored_chain(backend.store)
    assert report.ok, report.problem
    assert report.checked == 2 * writers * per_writer
