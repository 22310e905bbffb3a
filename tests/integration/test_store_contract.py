"""The KeyValueStore contract, proved against every driver and Redis topology on real processes.

Each test takes the `store` fixture and, where it needs time to pass or a second client, the `backend` it came
from. The backends: SQLite on a real file; one redis-server, with the service-wide placement (the historical
layout) and with `SPREAD` (the contract's collections spread by key over the 64 buckets, so every listing
merges buckets); a 3-master / 3-replica Redis Cluster with `SPREAD` (so entries and listings cross slots and
shards, and every write waits for a replica); and a Sentinel set (master, replica, three sentinels). SQLite
runs on a FakeClock, so expiry costs no waiting; Redis expires keys on its own clock, so its TTL tests sleep
through real TTLs of a fraction of a second. Driver-specific tests (outages, a second process, the hypothesis
property) follow the shared ones.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kagi.clock import FakeClock
from kagi.store import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    SERVICE_WIDE,
    Create,
    Delete,
    Entry,
    GroupCommitStore,
    InvalidKey,
    InvalidStoreConfig,
    KeyExists,
    KeyValueStore,
    Operation,
    Placement,
    Replace,
    StoreUnavailable,
    VersionMismatch,
    open_store,
)
from kagi.store.redis import RedisStore
from kagi.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from tests.conftest import RedisServer
    from tests.support.redis_topology import RedisClusterProcesses, SentinelSet

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Backend:
    """One driver under test: the store, a way to open a second client, and a way to let time pass."""

    kind: str
    url: str
    store: KeyValueStore
    opener: Callable[[Placement | None], KeyValueStore]
    elapse: Callable[[float], Awaitable[None]]
    extra: list[KeyValueStore] = field(default_factory=list)

    def open_another(self, placement: Placement | None = None) -> KeyValueStore:
        """Open a second, independent client on the same data (closed after the test), with the backend's
        placement unless told."""
        store = self.opener(placement)
        self.extra.append(store)
        return store


def _by_key(key: str) -> str:
    return key


SPREAD_COLLECTIONS = [
    "docs", "mixed", "app", "app.x", "app-x", "app/x", "apps", "ap", "nothing-here", "sessions", "flip",
    "rate", "tallies", "counters", "tokens", "long", "blobs", "a.b", "e", "i",
]  # fmt: skip
SPREAD = Placement(spread=dict.fromkeys(SPREAD_COLLECTIONS, _by_key))
"""The contract's single-key collections, each key its own aggregate. Commits across collections use a, b, c and
z, and the group-commit tests commit "things" with the journal's service-wide audit records: those stay
service-wide."""

BACKENDS = [
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis-spread", marks=pytest.mark.redis),
    pytest.param("redis-cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
    pytest.param("redis-sentinel", marks=[pytest.mark.redis, pytest.mark.cluster]),
]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> AsyncIterator[Backend]:
    """Open the driver named by the parameter in a namespace of its own."""
    opener: Callable[[Placement | None], KeyValueStore]
    kind = request.param
    default = SPREAD if kind in ("redis-spread", "redis-cluster") else SERVICE_WIDE
    if kind == "sqlite":
        url = f"sqlite://{tmp_path / 'store.db'}"
        clock = FakeClock()

        def opener(placement: Placement | None) -> KeyValueStore:
            return SQLiteStore(tmp_path / "store.db", namespace=namespace, clock=clock, placement=placement or default)

        async def elapse(seconds: float) -> None:
            clock.advance(seconds)

    else:
        if kind == "redis-cluster":
            cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
            url = cluster.url
        elif kind == "redis-sentinel":
            sentinels: SentinelSet = request.getfixturevalue("redis_sentinel")
            url = sentinels.url
        else:
            url = request.getfixturevalue("redis_server")

        def opener(placement: Placement | None) -> KeyValueStore:
            return RedisStore(url, namespace=namespace, placement=placement or default)

        async def elapse(seconds: float) -> None:
            await asyncio.sleep(seconds)  # Redis expires on its own clock: the one place a test sleeps

    result = Backend(kind, url, opener(None), opener, elapse)
    try:
        yield result
    finally:
        for store in [result.store, *result.extra]:
            await store.close()


@pytest.fixture
def store(backend: Backend) -> KeyValueStore:
    """Return the driver under test, once per driver."""
    return backend.store


def byte_order(keys: list[str]) -> list[str]:
    """Sort keys the way both drivers list them: by their UTF-8 bytes."""
    return sorted(keys, key=lambda k: k.encode("utf-8"))


async def list_all(store: KeyValueStore, collection: str, page_size: int, token: str = "") -> tuple[list[Entry], int]:
    """Follow page tokens (from `token`) to the end and return the entries and page read."""
    entries: list[Entry] = []
    pages = 0
    while True:
        page = await store.list(collection, page_size=page_size, page_token=token)
        pages += 1
        assert len(page.entries) <= page_size
        entries += page.entries
        if not page.next_page_token:
            return entries, pages
        token = page.next_page_token
        assert pages < 1000, "the listing does not end"


# --- get / create / compare-and-swap / delete ---------------------------------------------------------


async def test_get_of_a_missing_key_is_none(store: KeyValueStore) -> None:
    """Get returns None for a key that was never written."""
    assert await store.get("things", "nope") is None


async def test_create_stores_the_value_and_returns_its_version(store: KeyValueStore) -> None:
    """Create writes the value and returns the entry; get then returns the same entry."""
    entry = await store.create("things", "a", b"alpha")
    assert entry == Entry("a", b"alpha", entry.version)
    assert entry.version > 0
    assert await store.get("things", "a") == entry


async def test_create_of_an_existing_key_raises_key_exists_and_keeps_the_value(store: KeyValueStore) -> None:
    """A second create of a key raises KeyExists (ALREADY_EXISTS) and leaves the first value in place."""
    first = await store.create("things", "a", b"first")
    with pytest.raises(KeyExists) as caught:
        await store.create("things", "a", b"second")
    assert caught.value.reason == "KEY_EXISTS"
    assert await store.get("things", "a") == first


async def test_compare_and_swap_at_the_current_version_replaces(store: KeyValueStore) -> None:
    """Compare_and_swap with the current version writes the value under a new, higher version."""
    first = await store.create("things", "a", b"one")
    second = await store.compare_and_swap("things", "a", b"two", version=first.version)
    assert second.value == b"two"
    assert second.version > first.version
    assert await store.get("things", "a") == second


async def test_compare_and_swap_with_a_stale_version_raises_and_keeps_the_value(store: KeyValueStore) -> None:
    """Compare_and_swap with an old version raises VersionMismatch (ABORTED) and changes nothing."""
    first = await store.create("things", "a", b"one")
    second = await store.compare_and_swap("things", "a", b"two", version=first.version)
    with pytest.raises(VersionMismatch) as caught:
        await store.compare_and_swap("things", "a", b"three", version=first.version)
    assert caught.value.reason == "VERSION_MISMATCH"
    assert await store.get("things", "a") == second


async def test_compare_and_swap_of_a_missing_key_raises_version_mismatch(store: KeyValueStore) -> None:
    """Compare_and_swap never creates: on a missing key it raises VersionMismatch and the key stays absent."""
    with pytest.raises(VersionMismatch):
        await store.compare_and_swap("things", "ghost", b"x", version=1)
    assert await store.get("things", "ghost") is None


async def test_delete_without_version_removes_and_reports_whether_it_did(store: KeyValueStore) -> None:
    """Delete removes a live entry and returns True; deleting a missing key returns False."""
    await store.create("things", "a", b"x")
    assert await store.delete("things", "a") is True
    assert await store.get("things", "a") is None
    assert await store.delete("things", "a") is False


async def test_delete_with_version_removes_only_that_version(store: KeyValueStore) -> None:
    """Delete with the current version removes it; a stale or missing version raises VersionMismatch."""
    first = await store.create("things", "a", b"one")
    second = await store.compare_and_swap("things", "a", b"two", version=first.version)
    with pytest.raises(VersionMismatch):
        await store.delete("things", "a", version=first.version)
    assert await store.get("things", "a") == second
    assert await store.delete("things", "a", version=second.version) is True
    assert await store.get("things", "a") is None
    with pytest.raises(VersionMismatch):
        await store.delete("things", "a", version=second.version)


async def test_versions_strictly_increase_across_keys_collections_and_operations(store: KeyValueStore) -> None:
    """Every write gets a version higher than any before it in its placement group (here the service-wide
    group of collections a, b, c), whatever the key, collection or operation."""
    versions = [(await store.create("a", "k1", b"")).version, (await store.create("b", "k1", b"")).version]
    entry = await store.create("a", "k2", b"")
    versions.append(entry.version)
    versions.append((await store.compare_and_swap("a", "k2", b"x", version=entry.version)).version)
    await store.increment("c", "n")
    versions.append((await store.get("c", "n") or Entry("", b"", 0)).version)
    written = await store.commit([Create("a", "k3", b""), Create("b", "k3", b"")])
    versions += [e.version for e in written if e is not None]
    versions.append((await store.create("b", "k4", b"", ttl=60)).version)
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)


async def test_versions_of_one_key_strictly_increase_whatever_its_group(store: KeyValueStore) -> None:
    """A key's successive versions rise through create, CAS, delete and re-create, increment, in a spread
    collection as in a service-wide one."""
    for collection in ("docs", "a"):
        first = await store.create(collection, "k", b"1")
        second = await store.compare_and_swap(collection, "k", b"2", version=first.version)
        await store.delete(collection, "k")
        third = await store.create(collection, "k", b"3")
        assert first.version < second.version < third.version
    await store.increment("counters", "n")
    before = await store.get("counters", "n")
    await store.increment("counters", "n")
    after = await store.get("counters", "n")
    assert before is not None
    assert after is not None
    assert before.version < after.version


async def test_delete_then_recreate_gets_a_new_higher_version(store: KeyValueStore) -> None:
    """A key deleted and created again never gets its old version back, so a stale CAS cannot succeed (no ABA)."""
    old = await store.create("things", "a", b"old")
    await store.delete("things", "a")
    new = await store.create("things", "a", b"new")
    assert new.version > old.version
    with pytest.raises(VersionMismatch):
        await store.compare_and_swap("things", "a", b"stale writer", version=old.version)
    assert await store.get("things", "a") == new


# --- increment ---------------------------------------------------------------------------------------------


async def test_increment_counts_from_zero_and_reads_back_as_decimal(store: KeyValueStore) -> None:
    """Increment starts a missing counter at zero, adds any signed amount, and get reads it as ASCII decimal."""
    assert await store.increment("counters", "c") == 1
    assert await store.increment("counters", "c", 41) == 42
    assert await store.increment("counters", "c", -50) == -8
    entry = await store.get("counters", "c")
    assert entry is not None
    assert entry.value == b"-8"


async def test_increment_gives_the_counter_a_new_version_each_time(store: KeyValueStore) -> None:
    """Every increment is a write: the counter's version rises, so a CAS reader sees concurrent increments."""
    await store.increment("counters", "c")
    first = await store.get("counters", "c")
    await store.increment("counters", "c")
    second = await store.get("counters", "c")
    assert first is not None
    assert second is not None
    assert second.version > first.version


async def test_increment_of_a_non_counter_raises_invalid_key_and_changes_nothing(store: KeyValueStore) -> None:
    """Increment refuses an entry whose value is not a decimal integer, and leaves it untouched."""
    entry = await store.create("counters", "text", b"twelve")
    with pytest.raises(InvalidKey):
        await store.increment("counters", "text")
    assert await store.get("counters", "text") == entry


async def test_increment_refuses_to_overflow_64_bits(store: KeyValueStore) -> None:
    """Increment past the signed 64-bit range raises InvalidKey and keeps the old value."""
    assert await store.increment("counters", "big", 2**63 - 1) == 2**63 - 1
    with pytest.raises(InvalidKey):
        await store.increment("counters", "big")
    with pytest.raises(InvalidKey):
        await store.increment("counters", "other", 2**63)
    entry = await store.get("counters", "big")
    assert entry is not None
    assert entry.value == str(2**63 - 1).encode()


# --- list --------------------------------------------------------------------------------------------------


async def test_list_of_an_empty_collection_is_one_empty_last_page(store: KeyValueStore) -> None:
    """Listing a collection with no entries returns no entries and no next page token."""
    page = await store.list("nothing-here")
    assert page.entries == []
    assert page.next_page_token == ""


async def test_list_pages_through_every_entry_in_key_order(store: KeyValueStore) -> None:
    """Pages of a listing hold at most page_size entries, in key order, and together hold every entry once."""
    keys = [f"k{i:02}" for i in range(10)]
    written = {k: await store.create("docs", k, k.encode()) for k in reversed(keys)}
    entries, pages = await list_all(store, "docs", page_size=3)
    assert [e.key for e in entries] == keys
    assert entries == [written[k] for k in keys]
    assert pages == 4


async def test_list_ends_without_an_empty_page_when_the_size_divides_evenly(store: KeyValueStore) -> None:
    """A collection of exactly N pages' worth ends on page N with an empty token, not on an empty page N+1."""
    for i in range(6):
        await store.create("docs", f"k{i}", b"")
    first = await store.list("docs", page_size=3)
    assert first.next_page_token
    second = await store.list("docs", page_size=3, page_token=first.next_page_token)
    assert [e.key for e in second.entries] == ["k3", "k4", "k5"]
    assert second.next_page_token == ""


async def test_list_orders_keys_by_their_bytes(store: KeyValueStore) -> None:
    """Keys come back in UTF-8 byte order, whatever characters they hold."""
    keys = ["b", "B", "a", "a b", "a:b", "a*", "a/", "\u00e9", "\U0001f511", "z", "Z9", "~"]
    for key in keys:
        await store.create("mixed", key, b"")
    entries, _ = await list_all(store, "mixed", page_size=5)
    assert [e.key for e in entries] == byte_order(keys)


async def test_list_sees_only_its_own_collection(store: KeyValueStore) -> None:
    """Listing a collection never shows entries of collections whose names share a prefix with it."""
    for collection in ["app", "app.x", "app-x", "app/x", "apps", "ap"]:
        await store.create(collection, "k", collection.encode())
    page = await store.list("app")
    assert page.entries == [Entry("k", b"app", page.entries[0].version)]


async def test_list_after_changes_between_pages_keeps_going_from_the_token(store: KeyValueStore) -> None:
    """A page token stays valid when entries change: deleted ones are skipped, later ones still come."""
    for i in range(6):
        await store.create("docs", f"k{i}", b"")
    first = await store.list("docs", page_size=2)
    await store.delete("docs", "k1")
    await store.delete("docs", "k2")
    await store.create("docs", "k9", b"")
    rest, _ = await list_all(store, "docs", page_size=2, token=first.next_page_token)
    assert [e.key for e in first.entries] == ["k0", "k1"]
    assert [e.key for e in rest] == ["k3", "k4", "k5", "k9"]


async def test_list_rejects_bad_page_sizes_and_tokens(store: KeyValueStore) -> None:
    """A page size outside 1..1000 or a token the store did not issue raises InvalidKey."""
    for size in (0, -1, 1001):
        with pytest.raises(InvalidKey):
            await store.list("docs", page_size=size)
    for token in ("not base64 !", "%%%", "AAAA"):  # "AAAA" decodes to NULs: not a key
        with pytest.raises(InvalidKey):
            await store.list("docs", page_token=token)


# --- commit ------------------------------------------------------------------------------------------------


async def test_commit_applies_mixed_operations_together(store: KeyValueStore) -> None:
    """Commit applies creates, replaces and deletes on several keys and collections, returning each result."""
    old = await store.create("a", "replace-me", b"old")
    await store.create("b", "delete-me", b"bye")
    doomed = await store.create("b", "delete-at-version", b"bye")
    results = await store.commit(
        [
            Create("a", "new", b"fresh"),
            Replace("a", "replace-me", b"newer", old.version),
            Delete("b", "delete-me"),
            Delete("b", "delete-at-version", doomed.version),
            Create("c", "transient", b"t", ttl=60),
        ]
    )
    assert results[2] is None
    assert results[3] is None
    created, replaced, transient = results[0], results[1], results[4]
    assert created is not None
    assert replaced is not None
    assert transient is not None
    assert await store.get("a", "new") == created == Entry("new", b"fresh", created.version)
    assert await store.get("a", "replace-me") == replaced == Entry("replace-me", b"newer", replaced.version)
    assert await store.get("c", "transient") == transient
    assert await store.get("b", "delete-me") is None
    assert await store.get("b", "delete-at-version") is None
    assert old.version < created.version < replaced.version < transient.version


@pytest.mark.parametrize("failing", ["create-existing", "stale-replace", "replace-missing", "stale-delete"])
async def test_commit_with_one_failing_condition_writes_nothing(store: KeyValueStore, failing: str) -> None:
    """If any condition of a commit fails, it raises that condition's error and none of its writes happen."""
    taken = await store.create("a", "taken", b"keep")
    current = await store.create("a", "current", b"keep")
    victim = await store.create("a", "victim", b"keep")
    stale = current.version - 1
    cases: dict[str, tuple[Operation, type[KeyExists] | type[VersionMismatch]]] = {
        "create-existing": (Create("a", "taken", b"overwrite"), KeyExists),
        "stale-replace": (Replace("a", "current", b"overwrite", stale), VersionMismatch),
        "replace-missing": (Replace("a", "missing", b"x", current.version), VersionMismatch),
        "stale-delete": (Delete("a", "current", stale), VersionMismatch),
    }
    bad_op, error = cases[failing]
    good: list[Operation | None] = [
        Create("a", "fresh", b"x"),
        Create("z", "fresh-durable", b"x"),
        Create("z", "fresh-transient", b"x", ttl=60),
        Delete("a", "victim"),
        Replace("a", "taken", b"changed", taken.version) if failing != "create-existing" else None,
    ]
    operations = [op for op in good if op is not None]
    operations.insert(2, bad_op)  # a failing condition in the middle: earlier ops must not have landed
    with pytest.raises(error) as caught:
        await store.commit(operations)
    assert isinstance(caught.value, KeyExists | VersionMismatch)
    assert caught.value.metadata["operation"] == "2"  # the error names the operation that failed
    assert await store.get("a", "fresh") is None
    assert await store.get("z", "fresh-durable") is None
    assert await store.get("z", "fresh-transient") is None
    assert await store.get("a", "victim") == victim
    assert await store.get("a", "taken") == taken
    assert await store.get("a", "current") == current
    assert await store.get("a", "missing") is None
    assert (await store.list("z")).entries == []


async def test_commit_rejects_a_key_named_twice_and_accepts_an_empty_list(store: KeyValueStore) -> None:
    """Commit refuses two operations on one (collection, key) with InvalidKey; an empty commit is a no-op."""
    with pytest.raises(InvalidKey):
        await store.commit([Create("a", "k", b"1"), Delete("a", "k")])
    assert await store.get("a", "k") is None
    assert await store.commit([]) == []


async def test_commit_validates_every_operation_before_writing(store: KeyValueStore) -> None:
    """One invalid operation (bad key here) fails the whole commit with InvalidKey; nothing is written."""
    with pytest.raises(InvalidKey):
        await store.commit([Create("a", "ok", b"1"), Create("a", "bad\nkey", b"2")])
    assert await store.get("a", "ok") is None


# --- placement groups ----------------------------------------------------------------------------------


def _token_of(key: str) -> str:
    return key.split("/", 1)[0]


TOKENS = Placement(spread={"tokens": _token_of, "verification": _token_of})
"""Two collections spread by the token id before the first '/' of the key; every other one is service-wide."""
ONE_GROUP = {"operations": "every key of a commit must be in one placement group"}


async def test_a_commit_across_placement_groups_is_refused_and_writes_nothing(backend: Backend) -> None:
    """A commit naming two aggregates, or an aggregate and the service-wide group, raises InvalidKey naming the
    rule, and none of its writes happen; the same writes one group at a time succeed."""
    store = backend.open_another(TOKENS)
    existing = await store.create("tokens", "t1/held", b"keep")
    spans: list[list[Operation]] = [
        [Create("tokens", "t1/a", b""), Create("tokens", "t2/a", b"")],
        [Create("tokens", "t1/b", b""), Create("plain", "x", b"")],
        [Delete("tokens", "t1/held", existing.version), Create("verification", "t9", b"")],
    ]
    for operations in spans:
        with pytest.raises(InvalidKey) as caught:
            await store.commit(operations)
        assert caught.value.fields == ONE_GROUP
        for op in operations:
            if op.key != "t1/held":
                assert await store.get(op.collection, op.key) is None
    assert await store.get("tokens", "t1/held") == existing
    assert await store.commit([Create("tokens", "t1/a", b""), Create("verification", "t1", b"")])
    assert await store.commit([Create("plain", "x", b""), Create("other", "y", b"")])


async def test_one_aggregate_commits_atomically_across_spread_collections(backend: Backend) -> None:
    """Keys of one aggregate in two spread collections commit together, all or nothing."""
    store = backend.open_another(TOKENS)
    state, last = await store.commit([Create("tokens", "t1", b"state"), Create("verification", "t1/last", b"0")])
    assert state is not None
    assert last is not None
    with pytest.raises(VersionMismatch):
        await store.commit(
            [Replace("tokens", "t1", b"next", state.version), Replace("verification", "t1/last", b"1", 0)]
        )
    assert await store.get("tokens", "t1") == state
    moved = await store.commit(
        [Replace("tokens", "t1", b"next", state.version), Replace("verification", "t1/last", b"1", last.version)]
    )
    assert [e.value for e in moved if e is not None] == [b"next", b"1"]


async def test_a_key_the_placement_finds_no_aggregate_in_is_refused(backend: Backend) -> None:
    """A spread collection's function that returns no aggregate id (empty, not text, or raising) makes the call
    fail with InvalidKey, on reads as on writes."""

    def broken(key: str) -> str:
        if key == "raises":
            raise ValueError(key)
        return "" if key == "empty" else key

    store = backend.open_another(Placement(spread={"tokens": broken}))
    for key in ("empty", "raises"):
        with pytest.raises(InvalidKey):
            await store.create("tokens", key, b"")
        with pytest.raises(InvalidKey):
            await store.get("tokens", key)
        with pytest.raises(InvalidKey):
            await store.increment("tokens", key)
    assert (await store.create("tokens", "fine", b"")).key == "fine"


async def test_spread_listing_returns_every_key_in_order_across_buckets(backend: Backend) -> None:
    """A collection spread over many aggregates lists every durable key once, in byte order, across pages
    that cut through the buckets, and resumes from a token after keys change."""
    store = backend.open_another(Placement(spread={"wide": _by_key}))
    keys = [f"user-{i:03}" for i in range(120)] + ["A", "z", "\u00e9t\u00e9", "\U0001f511", "user-050:x"]
    for key in keys:
        await store.create("wide", key, key.encode())
    await store.create("wide", "transient", b"", ttl=60)
    entries, _ = await list_all(store, "wide", page_size=7)
    assert [e.key for e in entries] == byte_order(keys)
    assert all(e.value == e.key.encode() for e in entries)
    first = await store.list("wide", page_size=10)
    for key in ("user-010", "user-011", "user-099"):
        await store.delete("wide", key)
    await store.create("wide", "user-0995", b"")
    rest, _ = await list_all(store, "wide", page_size=13, token=first.next_page_token)
    expected = byte_order([k for k in keys if k not in ("user-010", "user-011", "user-099")] + ["user-0995"])
    assert [e.key for e in first.entries] + [e.key for e in rest] == expected


async def test_group_commit_rounds_never_mix_placement_groups(backend: Backend) -> None:
    """Concurrent writes of many aggregates and of the service-wide group through one GroupCommitStore all
    land, each driver commit within one group, rounds of different groups in flight together; a unit spanning
    groups fails alone."""
    inner = backend.open_another(TOKENS)
    grouped = GroupCommitStore(inner)
    commit = inner.commit
    in_flight: list[int] = [0, 0]  # now, most

    async def watched(operations: Sequence[Operation]) -> list[Entry | None]:
        TOKENS.group_of(operations)  # raises if a round mixed groups
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            return await commit(operations)
        finally:
            in_flight[0] -= 1

    inner.commit = watched  # type: ignore[method-assign]
    try:
        writes = [grouped.create("tokens", f"t{i % 6}/{i}", b"") for i in range(36)]
        writes += [grouped.create("plain", f"p{i}", b"") for i in range(12)]
        writes += [
            grouped.commit([Create("tokens", f"t{i}/pair", b""), Create("verification", f"t{i}", b"")])
            for i in range(6)
        ]
        spanning = grouped.commit([Create("tokens", "t1/x", b""), Create("plain", "x", b"")])
        *results, refused = await asyncio.gather(*writes, spanning, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)]
        assert isinstance(refused, InvalidKey)
        assert refused.fields == ONE_GROUP
        for i in range(36):
            assert await grouped.get("tokens", f"t{i % 6}/{i}") is not None
        assert await grouped.get("tokens", "t1/x") is None
        assert await grouped.get("plain", "x") is None
        assert in_flight[1] > 1, "rounds of different groups never went together"
    finally:
        await grouped.close()


# --- concurrency -------------------------------------------------------------------------------------------


async def test_200_concurrent_cas_increments_from_two_clients_land_exactly(backend: Backend) -> None:
    """200 read-CAS-retry increments from 8 tasks over two clients lose none and double none."""
    stores = [backend.store, backend.open_another()]
    await stores[0].create("counters", "cas", b"0")
    conflicts = 0

    async def add_one(store: KeyValueStore, times: int) -> None:
        nonlocal conflicts
        for _ in range(times):
            while True:
                entry = await store.get("counters", "cas")
                assert entry is not None
                try:
                    await store.compare_and_swap(
                        "counters", "cas", str(int(entry.value) + 1).encode(), version=entry.version
                    )
                    break
                except VersionMismatch:
                    conflicts += 1

    await asyncio.gather(*(add_one(stores[i % 2], 25) for i in range(8)))
    final = await stores[1].get("counters", "cas")
    assert final is not None
    assert final.value == b"200"
    assert conflicts > 0, "the tasks never raced, so this test proved nothing"


async def test_concurrent_creates_of_one_key_have_exactly_one_winner(backend: Backend) -> None:
    """Twenty racing creates of one key from two clients: one succeeds, nineteen raise KeyExists."""
    stores = [backend.store, backend.open_another()]

    async def attempt(i: int) -> str:
        try:
            await stores[i % 2].create("tokens", "once", str(i).encode())
        except KeyExists:
            return "lost"
        return "won"

    outcomes = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert sorted(outcomes).count("won") == 1


async def test_concurrent_consumes_of_a_single_use_value_have_exactly_one_winner(backend: Backend) -> None:
    """Twenty racing version-checked deletes (consume-once) of one entry: exactly one returns True."""
    stores = [backend.store, backend.open_another()]
    entry = await stores[0].create("tokens", "otp", b"123456")

    async def consume(i: int) -> bool:
        try:
            return await stores[i % 2].delete("tokens", "otp", version=entry.version)
        except VersionMismatch:
            return False

    outcomes = await asyncio.gather(*(consume(i) for i in range(20)))
    assert outcomes.count(True) == 1


async def test_concurrent_increments_from_two_clients_are_all_counted(backend: Backend) -> None:
    """Increment is atomic: 100 concurrent increments over two clients return 1..100, each exactly once."""
    stores = [backend.store, backend.open_another()]
    values = await asyncio.gather(*(stores[i % 2].increment("counters", "hits") for i in range(100)))
    assert sorted(values) == list(range(1, 101))


# --- expiry ------------------------------------------------------------------------------------------------

TTL = 0.2  # seconds; Redis sleeps this for real, SQLite's fake clock skips it
PAST = 0.35


async def test_transient_entry_is_readable_until_its_ttl_then_absent(backend: Backend) -> None:
    """An entry created with a TTL reads back until it expires, then every read treats it as absent."""
    store = backend.store
    entry = await store.create("sessions", "s", b"data", ttl=TTL)
    assert await store.get("sessions", "s") == entry
    await backend.elapse(PAST)
    assert await store.get("sessions", "s") is None
    with pytest.raises(VersionMismatch):
        await store.compare_and_swap("sessions", "s", b"late", version=entry.version)
    with pytest.raises(VersionMismatch):
        await store.delete("sessions", "s", version=entry.version)
    assert await store.delete("sessions", "s") is False


async def test_create_over_an_expired_entry_succeeds_with_a_higher_version(backend: Backend) -> None:
    """Once an entry expired, create under its key succeeds and the new entry has a higher version."""
    old = await backend.store.create("sessions", "s", b"old", ttl=TTL)
    with pytest.raises(KeyExists):
        await backend.store.create("sessions", "s", b"too early")
    await backend.elapse(PAST)
    new = await backend.store.create("sessions", "s", b"new")
    assert new.version > old.version
    assert await backend.store.get("sessions", "s") == new


async def test_transient_entries_are_never_listed(backend: Backend) -> None:
    """Listing shows durable entries only; transient ones stay out before and after they expire."""
    store = backend.store
    await store.create("mixed", "durable", b"d")
    await store.create("mixed", "transient", b"t", ttl=TTL)
    await store.commit([Create("mixed", "transient-too", b"t", ttl=60)])
    assert [e.key for e in (await store.list("mixed")).entries] == ["durable"]
    await backend.elapse(PAST)
    assert [e.key for e in (await store.list("mixed")).entries] == ["durable"]


async def test_cas_without_ttl_makes_an_entry_durable_and_with_ttl_transient(backend: Backend) -> None:
    """CAS without a TTL turns a transient entry durable (listed, never expires); with a TTL, the reverse."""
    store = backend.store
    transient = await store.create("flip", "a", b"1", ttl=TTL)
    durable = await store.compare_and_swap("flip", "a", b"2", version=transient.version)
    assert [e.key for e in (await store.list("flip")).entries] == ["a"]
    await backend.elapse(PAST)
    assert await store.get("flip", "a") == durable
    again = await store.compare_and_swap("flip", "a", b"3", version=durable.version, ttl=TTL)
    assert (await store.list("flip")).entries == []
    assert await store.get("flip", "a") == again
    await backend.elapse(PAST)
    assert await store.get("flip", "a") is None


async def test_increment_ttl_is_a_fixed_window_from_creation(backend: Backend) -> None:
    """A counter's TTL starts when it is created and later increments do not extend it; then it restarts at 1."""
    store = backend.store
    assert await store.increment("rate", "ip", ttl=TTL * 2) == 1
    await backend.elapse(TTL)
    assert await store.increment("rate", "ip", ttl=TTL * 2) == 2  # inside the window, not extended
    await backend.elapse(TTL + 0.1)
    assert await store.get("rate", "ip") is None
    assert await store.increment("rate", "ip", ttl=TTL * 2) == 1
    assert (await store.list("rate")).entries == []


async def test_increment_without_ttl_makes_a_durable_listed_counter(store: KeyValueStore) -> None:
    """A counter created without a TTL is durable and is listed like any durable entry."""
    await store.increment("tallies", "t", 3)
    page = await store.list("tallies")
    assert [(e.key, e.value) for e in page.entries] == [("t", b"3")]


async def test_ttl_must_be_a_positive_finite_number(store: KeyValueStore) -> None:
    """A zero, negative, NaN or infinite TTL raises InvalidKey and writes nothing."""
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidKey):
            await store.create("sessions", "s", b"", ttl=ttl)
        with pytest.raises(InvalidKey):
            await store.increment("sessions", "n", ttl=ttl)
    assert await store.get("sessions", "s") is None
    assert await store.get("sessions", "n") is None


# --- keys and values ---------------------------------------------------------------------------------------

BAD_KEYS = ["", "x" * (MAX_KEY_BYTES + 1), "\u00e9" * (MAX_KEY_BYTES // 2 + 1), "a\nb", "\x00", "tab\t", "del\x7f"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=["empty", "513-ascii", "514-bytes-utf8", "LF", "NUL", "TAB", "DEL"])
async def test_bad_keys_are_rejected_by_every_operation(store: KeyValueStore, key: str) -> None:
    """Empty keys, keys over 512 UTF-8 bytes and keys with control characters raise InvalidKey everywhere."""
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get("c", key),
        lambda: store.create("c", key, b""),
        lambda: store.compare_and_swap("c", key, b"", version=1),
        lambda: store.delete("c", key),
        lambda: store.increment("c", key),
        lambda: store.commit([Create("c", key, b"")]),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            await call()


@pytest.mark.parametrize("collection", ["", "a:b", "a b", "a*", "\u00e9", "x" * 201])
async def test_bad_collections_are_rejected(store: KeyValueStore, collection: str) -> None:
    """Collections outside [A-Za-z0-9_.-/]{1,200} (so never containing ':') raise InvalidKey."""
    with pytest.raises(InvalidKey):
        await store.create(collection, "k", b"")
    with pytest.raises(InvalidKey):
        await store.list(collection)


async def test_longest_keys_are_accepted(store: KeyValueStore) -> None:
    """A key of exactly 512 UTF-8 bytes, ASCII or multi-byte, round-trips."""
    for key in ["k" * MAX_KEY_BYTES, "\u00e9" * (MAX_KEY_BYTES // 2), "\U0001f511" * (MAX_KEY_BYTES // 4)]:
        entry = await store.create("long", key, key.encode())
        assert await store.get("long", key) == entry


async def test_separator_and_glob_characters_in_keys_never_collide(store: KeyValueStore) -> None:
    """Keys with ':' '*' '?' '[' '/' '{' are ordinary keys: each is its own entry, in each collection."""
    keys = ["b", "b:c", "b:", ":b", "b:c:d", "*", "b*", "?", "[a-z]", "b/c", "{a}", "e:a:b", "i:a", "version"]
    for collection in ["a", "a.b", "e", "i"]:
        for key in keys:
            await store.create(collection, key, f"{collection}|{key}".encode())
    for collection in ["a", "a.b", "e", "i"]:
        for key in keys:
            entry = await store.get(collection, key)
            assert entry is not None
            assert entry.value == f"{collection}|{key}".encode()
        entries, _ = await list_all(store, collection, page_size=4)
        assert [e.key for e in entries] == byte_order(keys)
        assert all(e.value == f"{collection}|{e.key}".encode() for e in entries)
    await store.delete("a", "b")
    assert await store.get("a", "b:c") is not None
    assert await store.get("a.b", "b") is not None


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00", b"\x00\x00\xff\x00", bytes(range(256)), b"\r\n*1\r\n$4\r\nPING\r\n", os.urandom(1 << 20)],
    ids=["empty", "NUL", "NULs", "all-bytes", "RESP-lookalike", "1MiB-random"],
)
async def test_values_round_trip_as_arbitrary_bytes(store: KeyValueStore, value: bytes) -> None:
    """Values are opaque bytes: empty, NULs, every byte value and large random blobs read back unchanged."""
    created = await store.create("blobs", "v", value)
    assert await store.get("blobs", "v") == Entry("v", value, created.version)
    replaced = await store.compare_and_swap("blobs", "v", value + b"\x00", version=created.version)
    assert (await store.list("blobs")).entries == [replaced]


async def test_values_over_the_size_limit_are_rejected(store: KeyValueStore) -> None:
    """A value over 4 MiB (or not bytes at all) raises InvalidKey and writes nothing."""
    with pytest.raises(InvalidKey):
        await store.create("blobs", "big", b"x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(InvalidKey):
        await store.create("blobs", "str", "text")  # type: ignore[arg-type]
    assert await store.get("blobs", "big") is None


# --- lifecycle ---------------------------------------------------------------------------------------------


async def test_ping_answers_and_a_closed_store_is_unavailable(store: KeyValueStore) -> None:
    """Ping returns on a live backend; after close every call raises StoreUnavailable."""
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get("c", "k")
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_namespaces_never_see_each_other(backend: Backend, tmp_path: Path, namespace: str) -> None:
    """Two services (namespaces) on one backend have disjoint data, version counters included."""
    if backend.kind == "sqlite":
        other: KeyValueStore = SQLiteStore(tmp_path / "other.db", namespace=namespace + "x")
    else:
        other = RedisStore(backend.url, namespace=namespace + "x")
    try:
        mine = await backend.store.create("c", "k", b"mine")
        theirs = await other.create("c", "k", b"theirs")
        assert await backend.store.get("c", "k") == mine
        assert await other.get("c", "k") == theirs
        assert [e.value for e in (await other.list("c")).entries] == [b"theirs"]
    finally:
        await other.close()


@pytest.mark.redis
async def test_spread_listing_skips_runs_of_vanished_members_in_one_bucket(redis_server: str, namespace: str) -> None:
    """Index members whose entries vanished behind the store's back (thousands of them, in one bucket) cost
    a listing some extra pages at most: every live key still comes, once, in order, and the listing ends."""
    store = RedisStore(redis_server, namespace=namespace, placement=Placement(spread={"wide": _by_key}))
    raw = redis.asyncio.from_url(redis_server)
    try:
        keys = [f"k{i:03}" for i in range(60)]
        for key in keys:
            await store.create("wide", key, b"")
        tag = store.tag("wide", "k030")
        await raw.zadd(f"kagi:{{{tag}}}:i:wide", {f"k030-gone-{i:04}": 0 for i in range(2000)})
        entries, pages = await list_all(store, "wide", page_size=5)
        assert [e.key for e in entries] == keys
        assert pages >= 12
        assert await raw.zcard(f"kagi:{{{tag}}}:i:wide") < 2000  # the listing dropped what it met
    finally:
        await raw.aclose()
        await store.close()


# --- outages -----------------------------------------------------------------------------------------------


async def _all_operations_fail_fast(store: KeyValueStore, within: float) -> None:
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: store.get("c", "before"),
        "create": lambda: store.create("c", "during", b"x"),
        "cas": lambda: store.compare_and_swap("c", "before", b"changed", version=1),
        "delete": lambda: store.delete("c", "before"),
        "increment": lambda: store.increment("c", "counter"),
        "list": lambda: store.list("c"),
        "commit": lambda: store.commit([Create("c", "during-commit", b"x"), Delete("c", "before")]),
        "ping": store.ping,
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        assert time.monotonic() - started < within, f"{name} took too long to fail"


@pytest.mark.redis
async def test_redis_killed_gives_store_unavailable_promptly_and_nothing_half_written(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    """With Redis SIGKILLed every call raises StoreUnavailable within seconds; after a restart the failed
    writes are absent, the earlier ones present, and the same client works again."""
    server = redis_factory()
    store = RedisStore(server.url, namespace=namespace, connect_timeout=1.0, timeout=1.0)
    try:
        before = await store.create("c", "before", b"kept")
        await store.increment("c", "counter")
        server.kill()
        await _all_operations_fail_fast(store, within=3.0)
        server.start()
        assert await store.get("c", "before") == before
        assert await store.get("c", "during") is None
        assert await store.get("c", "during-commit") is None
        counter = await store.get("c", "counter")
        assert counter is not None
        assert counter.value == b"1"
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_frozen_gives_store_unavailable_within_the_socket_timeout(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP) makes reads fail after the socket
    timeout instead of hanging, and the client recovers once Redis answers again."""
    server = redis_factory(appendonly=False)
    store = RedisStore(
        server.url + "?socket_timeout=0.5", namespace=namespace, connect_timeout=0.5, allow_volatile=True
    )
    try:
        entry = await store.create("c", "k", b"v")
        server.pause()
        try:
            for call in (lambda: store.get("c", "k"), store.ping, lambda: store.list("c")):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert time.monotonic() - started < 2.0
        finally:
            server.resume()
        assert await store.get("c", "k") == entry
    finally:
        await store.close()


async def test_redis_unreachable_address_fails_fast(namespace: str) -> None:
    """A Redis URL where nothing listens gives StoreUnavailable at the first call, within the timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the store connects: nothing listens there
    store = open_store(f"redis://127.0.0.1:{port}/0", namespace=namespace, state_dir=None)
    try:
        await _all_operations_fail_fast(store, within=3.0)
    finally:
        await store.close()


async def test_sqlite_write_lock_held_elsewhere_gives_store_unavailable_and_writes_nothing(
    tmp_path: Path, namespace: str
) -> None:
    """When another connection holds the write lock past the busy timeout, writes raise StoreUnavailable
    after about that timeout, reads still work (WAL), and no failed write leaves a trace."""
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, namespace=namespace, busy_timeout=0.2)
    try:
        before = await store.create("c", "before", b"kept")
        await store.increment("c", "counter")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            writes: list[Callable[[], Awaitable[object]]] = [
                lambda: store.create("c", "during", b"x"),
                lambda: store.compare_and_swap("c", "before", b"changed", version=before.version),
                lambda: store.delete("c", "before"),
                lambda: store.increment("c", "counter"),
                lambda: store.commit([Create("c", "during-commit", b"x"), Delete("c", "before")]),
            ]
            for write in writes:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await write()
                assert 0.15 < time.monotonic() - started < 2.0
            assert await store.get("c", "before") == before
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await store.get("c", "during") is None
        assert await store.get("c", "during-commit") is None
        assert await store.get("c", "before") == before
        counter = await store.get("c", "counter")
        assert counter is not None
        assert counter.value == b"1"
        assert await store.create("c", "after", b"ok")  # the store recovers once the lock is gone
    finally:
        await store.close()


async def test_sqlite_unopenable_file_gives_store_unavailable(tmp_path: Path, namespace: str) -> None:
    """A database path that cannot be opened (missing directory) raises StoreUnavailable on every call."""
    store = SQLiteStore(tmp_path / "missing" / "dir" / "x.db", namespace=namespace)
    try:
        await _all_operations_fail_fast(store, within=3.0)
    finally:
        await store.close()


async def test_sqlite_file_of_another_namespace_is_refused(tmp_path: Path) -> None:
    """A SQLite file remembers its namespace: opening it for another service raises InvalidStoreConfig."""
    first = SQLiteStore(tmp_path / "shared.db", namespace="ca")
    await first.create("c", "k", b"")
    await first.close()
    second = SQLiteStore(tmp_path / "shared.db", namespace="otp")
    try:
        with pytest.raises(InvalidStoreConfig):
            await second.get("c", "k")
    finally:
        await second.close()


# --- a second process on one SQLite file ---------------------------------------------------------------

_CAS_CHILD = """
import asyncio, sys
from kagi.store.sqlite import SQLiteStore
from kagi.store import VersionMismatch

async def main(path, namespace, times):
    store = SQLiteStore(path, namespace=namespace)
    for _ in range(times):
        while True:
            entry = await store.get("counters", "cas")
            try:
                await store.compare_and_swap(
                    "counters", "cas", str(int(entry.value) + 1).encode(), version=entry.version)
                break
            except VersionMismatch:
                pass
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_sqlite_cas_increments_from_two_processes_land_exactly(tmp_path: Path, namespace: str) -> None:
    """CAS increments from this process and a child process on the same file add up exactly (100 + 100)."""
    path = tmp_path / "shared.db"
    store = SQLiteStore(path, namespace=namespace)
    try:
        await store.create("counters", "cas", b"0")
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CAS_CHILD, str(path), namespace, "100",
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        conflicts = 0
        for _ in range(100):
            while True:
                entry = await store.get("counters", "cas")
                assert entry is not None
                try:
                    await store.compare_and_swap(
                        "counters", "cas", str(int(entry.value) + 1).encode(), version=entry.version
                    )
                    break
                except VersionMismatch:
                    conflicts += 1
        assert await asyncio.wait_for(child.wait(), 30) == 0
        final = await store.get("counters", "cas")
        assert final is not None
        assert final.value == b"200"
    finally:
        await store.close()


# --- open_store --------------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_open_store_picks_the_driver_from_the_url(tmp_path: Path, redis_server: str, namespace: str) -> None:
    """open_store maps sqlite: to <state_dir>/<namespace>.db, sqlite:///path to that file, redis:// to Redis."""
    default = open_store("sqlite:", namespace=namespace, state_dir=tmp_path / "state", clock=FakeClock())
    explicit = open_store(f"sqlite://{tmp_path}/explicit.db?busy_timeout=1", namespace=namespace, state_dir=None)
    remote = open_store(redis_server, namespace=namespace, state_dir=None)
    try:
        assert isinstance(default, SQLiteStore)
        assert isinstance(explicit, SQLiteStore)
        assert isinstance(remote, RedisStore)
        for opened in (default, explicit, remote):
            await opened.create("c", "k", b"v")
        assert (tmp_path / "state" / f"{namespace}.db").is_file()
        assert (tmp_path / "explicit.db").is_file()
        assert ((tmp_path / "state").stat().st_mode & 0o777) == 0o700
        assert ((tmp_path / "explicit.db").stat().st_mode & 0o777) == 0o600
    finally:
        for closing in (default, explicit, remote):
            await closing.close()


@pytest.mark.parametrize(
    ("url", "namespace", "state_dir"),
    [
        ("postgres://localhost/db", "ca", None),
        ("memory:", "ca", None),
        ("", "ca", None),
        ("sqlite:", "ca", None),
        ("sqlite:relative.db", "ca", None),
        ("sqlite://host/x.db", "ca", None),
        ("sqlite:///x.db?journal=off", "ca", None),
        ("sqlite:///x.db?busy_timeout=-1", "ca", None),
        ("sqlite:", "../escape", Path("/srv/kagi-state")),
        ("sqlite:", "", Path("/srv/kagi-state")),
        ("redis://127.0.0.1:6379/0", "a}b{c", None),
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", "ca", None),
        ("redis://127.0.0.1:6379/0?wait_replicas=many", "ca", None),
        ("redis://127.0.0.1:6379/0?wait_replicas=1&wait_timeout=5", "ca", None),  # outlives the socket timeout
        ("redis://127.0.0.1:6379/0?sentinel_password=x", "ca", None),
        ("redis+sentinel://127.0.0.1:26379", "ca", None),  # no service name
        ("redis+sentinel://127.0.0.1:26379,/kagi/0", "ca", None),
        ("redis+sentinel://127.0.0.1:port/kagi/0", "ca", None),
        ("redis+sentinel://127.0.0.1:26379/kagi/0?wait_timeout=-1", "ca", None),
        ("redis+cluster://127.0.0.1:7000/3", "ca", None),  # a cluster has database 0 only
        ("redis+cluster://127.0.0.1:7000?socket_timeout=soon", "ca", None),
        ("redis+cluster://127.0.0.1:7000?no_such_option=1", "ca", None),
        ("redis+memcached://127.0.0.1:7000", "ca", None),
    ],
)
def test_open_store_rejects_bad_urls_and_namespaces(url: str, namespace: str, state_dir: Path | None) -> None:
    """Unknown schemes, malformed URLs and unsafe namespaces raise InvalidStoreConfig (INVALID_ARGUMENT)."""
    with pytest.raises(InvalidStoreConfig) as caught:
        open_store(url, namespace=namespace, state_dir=state_dir)
    assert caught.value.kind.value == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://user:hunter2@127.0.0.1/x",
        "redis+sentinel://user:hunter2@127.0.0.1:26379",
        "redis+cluster://user:hunter2@127.0.0.1:7000/2",
        "redis+cluster://user:hunter2@127.0.0.1:7000?bogus=1",
    ],
)
def test_open_store_errors_never_echo_a_password(url: str) -> None:
    """A refused URL carrying a password is refused without the password in the message."""
    with pytest.raises(InvalidStoreConfig) as caught:
        open_store(url, namespace="ca", state_dir=None)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value.fields)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:hunter2@127.0.0.1:6379/0", "127.0.0.1:6379"),
        ("rediss://u:hunter2@127.0.0.1:6379/0?ssl_cert_reqs=none", "127.0.0.1:6379"),
        ("redis+sentinel://u:hunter2@127.0.0.1:26379,[::1]:26380/kagi/1", "sentinel 127.0.0.1:26379,::1:26380/kagi"),
        ("rediss+sentinel://u:hunter2@s1,s2:26390/kagi?sentinel_password=pw", "sentinel s1:26379,s2:26390/kagi"),
        ("redis+cluster://u:hunter2@127.0.0.1:7000,127.0.0.1:7001", "cluster 127.0.0.1:7000,127.0.0.1:7001"),
        ("rediss+cluster://u:hunter2@n1:7000/0?ssl_ca_certs=/etc/ca.pem&wait_replicas=0", "cluster n1:7000"),
    ],
)
def test_every_redis_url_form_opens_without_connecting_or_showing_its_password(url: str, shown: str) -> None:
    """Each Redis form, with credentials and TLS, opens a store (nothing is connected yet) that names its
    servers and never its password."""
    store = open_store(url, namespace="ca", state_dir=None)
    assert isinstance(store, RedisStore)
    assert shown in repr(store)
    assert "hunter2" not in repr(store)


@pytest.mark.redis
async def test_wait_replicas_on_a_server_without_replicas_is_unavailable_though_the_write_landed(
    redis_server: str, namespace: str
) -> None:
    """With ?wait_replicas=1 a write is acknowledged only once a replica has it: on a server without any it
    raises StoreUnavailable, while the write itself landed (so the caller's retry of the same conditional write
    fails cleanly, with KeyExists); a write whose condition failed needs no replica and says so at once."""
    separator = "&" if "?" in redis_server else "?"
    store = RedisStore(redis_server + separator + "wait_replicas=1&wait_timeout=0.2", namespace=namespace)
    try:
        with pytest.raises(StoreUnavailable):
            await store.create("c", "k", b"v")
        with pytest.raises(KeyExists):
            await store.create("c", "k", b"v")
        assert (await store.get("c", "k") or Entry("", b"", 0)).value == b"v"
    finally:
        await store.close()


# --- property: arbitrary keys on SQLite --------------------------------------------------------------------

_KEY_TEXT = st.text(
    st.one_of(
        st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"),
        st.sampled_from(list(":*?[]/{}\\%. ")),
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(_KEY_TEXT, min_size=1, max_size=12, unique=True), page_size=st.integers(1, 5))
def test_arbitrary_valid_keys_round_trip_without_collision_on_sqlite(
    tmp_path: Path, keys: list[str], page_size: int
) -> None:
    """Any set of valid keys written to two collections reads back key by key and lists in byte order."""

    async def check(path: Path) -> None:
        store = SQLiteStore(path, namespace="prop", clock=FakeClock())
        try:
            await store.commit([Create(c, k, f"{c}|{k}".encode()) for c in ("left", "left.right") for k in keys])
            for collection in ("left", "left.right"):
                for key in keys:
                    entry = await store.get(collection, key)
                    assert entry is not None
                    assert entry.value == f"{collection}|{key}".encode()
                entries, _ = await list_all(store, collection, page_size)
                assert [e.key for e in entries] == byte_order(keys)
        finally:
            await store.close()

    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        asyncio.run(check(Path(scratch) / "prop.db"))
