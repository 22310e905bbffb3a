"""The OTP service's group-commit store wrapper on real SQLite and Redis: concurrent commits share rounds, yet each
caller gets exactly the all-or-nothing, conditional semantics of its own commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from kagi.store import Create, InvalidKey, KeyValueStore, Replace, VersionMismatch, open_store
from services.otp_service.adapters.group_commit import GroupCommitStore
from tests.integration.otp.otp_grpc_support import Backend


@pytest.fixture
async def grouped(backend: Backend) -> AsyncIterator[GroupCommitStore]:
    """The wrapper over a real store of `backend`, in a namespace of this test's own."""
    inner = open_store(backend.url, namespace=backend.namespace, state_dir=backend.state_dir)
    store = GroupCommitStore(inner)
    yield store
    await store.close()


async def _seed(store: KeyValueStore, n: int) -> list[int]:
    """Create keys k0..k<n-1> and return their versions."""
    entries = await store.commit([Create("c", f"k{i}", b"0") for i in range(n)])
    return [e.version for e in entries if e is not None]


async def test_a_stale_caller_fails_alone_and_the_others_land(grouped: GroupCommitStore) -> None:
    """Twenty concurrent two-key commits, one of them naming a stale version: that caller alone gets
    VersionMismatch and wrote nothing; every other caller's two writes are stored."""
    versions = await _seed(grouped, 40)

    async def write(i: int) -> object:
        stale = i == 7
        ops = [
            Replace("c", f"k{2 * i}", f"new{i}".encode(), versions[2 * i] - (1 if stale else 0)),
            Replace("c", f"k{2 * i + 1}", f"new{i}".encode(), versions[2 * i + 1]),
        ]
        return await grouped.commit(ops)

    results = await asyncio.gather(*(write(i) for i in range(20)), return_exceptions=True)

    assert [i for i, r in enumerate(results) if isinstance(r, VersionMismatch)] == [7]
    for i in range(20):
        for key in (f"k{2 * i}", f"k{2 * i + 1}"):
            entry = await grouped.get("c", key)
            assert entry is not None
            assert entry.value == (b"0" if i == 7 else f"new{i}".encode())


async def test_two_callers_on_one_key_are_judged_one_after_the_other(grouped: GroupCommitStore) -> None:
    """Ten concurrent swaps of one key from the same version: exactly one wins, nine get VersionMismatch."""
    (version,) = await _seed(grouped, 1)
    results = await asyncio.gather(
        *(grouped.commit([Replace("c", "k0", f"v{i}".encode(), version)]) for i in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, VersionMismatch) for r in results) == 9


async def test_a_malformed_commit_fails_its_caller_only(grouped: GroupCommitStore) -> None:
    """A commit naming one key twice is refused (InvalidKey) before it joins a round; concurrent ones land."""
    results = await asyncio.gather(
        grouped.commit([Create("c", "a", b"1"), Create("c", "a", b"2")]),
        grouped.commit([Create("c", "b", b"1")]),
        return_exceptions=True,
    )
    assert isinstance(results[0], InvalidKey)
    assert not isinstance(results[1], BaseException)
    assert await grouped.get("c", "a") is None


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_concurrent_commits_share_redis_round_trips(grouped: GroupCommitStore, backend: Backend) -> None:
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
