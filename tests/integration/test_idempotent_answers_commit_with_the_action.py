"""Answers written by the action's own commit (`IdempotencyLedger.run_in_commit`): the effect and its answer land in
one write, a retry gets the first answer without acting, concurrent calls with one id commit once and all get
that answer, a reused id with other content is refused, a failure stores nothing, and secrets are not replayed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from kagi.errors import InvalidArgument, Unavailable
from kagi.idempotency import COLLECTION, Codec, IdempotencyLedger, commit_answering, fingerprint
from kagi.store import Create, Entry, KeyValueStore, Operation, Replace, open_store

TEXT = Codec[dict[str, str]](dump=lambda a: json.dumps(a).encode(), load=lambda b: json.loads(b))
KEEP_NO_SEED = Codec[dict[str, str]](
    dump=lambda a: json.dumps({k: v for k, v in a.items() if k != "seed"}).encode(), load=lambda b: json.loads(b)
)


class CountingStore:
    """Pass commits on to the store, remembering the collections each one wrote."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self.commits: list[list[str]] = []

    async def commit(self, operations: Sequence[Operation]) -> list[Entry | None]:
        """Commit and remember the collections the commit wrote."""
        self.commits.append([op.collection for op in operations])
        return await self.store.commit(operations)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyValueStore]:
    kv = open_store("sqlite:", namespace="idem", state_dir=tmp_path)
    yield kv
    await kv.close()


async def _counter(store: KeyValueStore) -> int:
    entry = await store.get("counters", "c")
    return int(entry.value) if entry is not None else 0


def _bump(store: KeyValueStore, counting: CountingStore, delay: float = 0.0) -> Callable[[], Awaitable[dict[str, str]]]:
    """Return an action that reads the counter, waits, and writes it one higher (create or compare-and-swap)."""

    async def act() -> dict[str, str]:
        entry = await store.get("counters", "c")
        await asyncio.sleep(delay)
        value = int(entry.value) + 1 if entry is not None else 1
        op: Operation = (
            Replace("counters", "c", str(value).encode(), entry.version)
            if entry is not None
            else Create("counters", "c", str(value).encode())
        )
        result = {"n": str(value), "seed": "JBSWY3DP"}
        await commit_answering(counting.commit, [op], result)
        return result

    return act


async def test_the_answer_is_written_by_the_actions_commit(store: KeyValueStore) -> None:
    """The action's one commit carries the answer (no claim before it, no write after it); a retry replays it
    without acting."""
    ledger = IdempotencyLedger(store)
    counting = CountingStore(store)
    act = _bump(store, counting)
    first = await ledger.run_in_commit("s", "r1", fingerprint("a"), act, lambda r: r, TEXT)
    assert counting.commits == [["counters", COLLECTION]]
    again = await ledger.run_in_commit("s", "r1", fingerprint("a"), act, lambda r: r, TEXT)
    assert first == again == {"n": "1", "seed": "JBSWY3DP"}
    assert len(counting.commits) == 1
    assert await _counter(store) == 1


async def test_concurrent_calls_with_one_id_commit_once_and_all_get_its_answer(store: KeyValueStore) -> None:
    """Twenty simultaneous calls with one id all act up to their commit, but only one commit lands: the others
    are answered with its answer, not refused."""
    ledger = IdempotencyLedger(store)
    counting = CountingStore(store)
    act = _bump(store, counting, delay=0.05)
    results = await asyncio.gather(
        *(ledger.run_in_commit("s", "same", fingerprint("x"), act, lambda r: r, TEXT) for _ in range(20))
    )
    assert await _counter(store) == 1
    assert all(r["n"] == "1" for r in results)


async def test_a_concurrent_call_with_other_content_is_refused(store: KeyValueStore) -> None:
    """Of two simultaneous calls with one id and different content, one commits; the other is REQUEST_ID_REUSED."""
    ledger = IdempotencyLedger(store)
    counting = CountingStore(store)
    act = _bump(store, counting, delay=0.05)
    results = await asyncio.gather(
        ledger.run_in_commit("s", "same", fingerprint("x"), act, lambda r: r, TEXT),
        ledger.run_in_commit("s", "same", fingerprint("y"), act, lambda r: r, TEXT),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, InvalidArgument)]
    assert len(refused) == 1
    assert refused[0].reason == "REQUEST_ID_REUSED"
    assert await _counter(store) == 1
    with pytest.raises(InvalidArgument) as later:
        await ledger.run_in_commit("s", "same", fingerprint("z"), act, lambda r: r, TEXT)
    assert "request_id" in later.value.fields


async def test_a_failed_action_stores_nothing(store: KeyValueStore) -> None:
    """An action that fails before its commit leaves no entry: a retry with the same id acts and answers."""
    ledger = IdempotencyLedger(store)
    counting = CountingStore(store)
    act = _bump(store, counting)
    attempts: list[int] = []

    async def flaky() -> dict[str, str]:
        attempts.append(1)
        if len(attempts) == 1:
            raise Unavailable("ca down")
        return await act()

    with pytest.raises(Unavailable):
        await ledger.run_in_commit("s", "r2", fingerprint("a"), flaky, lambda r: r, TEXT)
    assert await ledger.run_in_commit("s", "r2", fingerprint("a"), flaky, lambda r: r, TEXT) == {
        "n": "1",
        "seed": "JBSWY3DP",
    }


async def test_secrets_are_answered_once(store: KeyValueStore) -> None:
    """The caller gets the whole answer; the stored one is what the codec keeps, so no replay carries the seed."""
    ledger = IdempotencyLedger(store)
    counting = CountingStore(store)
    act = _bump(store, counting)
    first = await ledger.run_in_commit("a", "r", fingerprint("p"), act, lambda r: r, KEEP_NO_SEED)
    assert first["seed"] == "JBSWY3DP"
    assert await ledger.run_in_commit("a", "r", fingerprint("p"), act, lambda r: r, KEEP_NO_SEED) == {"n": "1"}


async def test_an_action_without_a_commit_has_its_answer_written_after_it(store: KeyValueStore) -> None:
    """An action with nothing of its own to write (its step already done) is answered, and replayed, all the
    same."""
    ledger = IdempotencyLedger(store)
    calls: list[int] = []

    async def done_already() -> dict[str, str]:
        calls.append(1)
        return {"state": "DONE"}

    assert await ledger.run_in_commit("s", "r3", fingerprint("a"), done_already, lambda r: r, TEXT) == {"state": "DONE"}
    assert await ledger.run_in_commit("s", "r3", fingerprint("a"), done_already, lambda r: r, TEXT) == {"state": "DONE"}
    assert len(calls) == 1


async def test_the_credential_check_runs_before_a_replay(store: KeyValueStore) -> None:
    """`before_replay` runs before a known id's answer or REQUEST_ID_REUSED is disclosed."""
    ledger = IdempotencyLedger(store)
    counting = CountingStore(store)
    act = _bump(store, counting)

    async def refuse() -> None:
        raise PermissionError("wrong credential")

    await ledger.run_in_commit("s", "r4", fingerprint("a"), act, lambda r: r, TEXT)
    for print_ in (fingerprint("a"), fingerprint("b")):
        with pytest.raises(PermissionError):
            await ledger.run_in_commit("s", "r4", print_, act, lambda r: r, TEXT, before_replay=refuse)
