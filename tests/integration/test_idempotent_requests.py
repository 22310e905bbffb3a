"""Idempotent mutations: a retry with the same request_id returns the first answer and acts once, concurrent
retries never both act, a reused id with different content is refused, and failures free the id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kagi.errors import Aborted, InvalidArgument, Unavailable
from kagi.idempotency import Codec, IdempotencyLedger, fingerprint
from kagi.store import KeyValueStore, open_store

TEXT = Codec[dict[str, str]](dump=lambda a: json.dumps(a).encode(), load=lambda b: json.loads(b))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyValueStore]:
    kv = open_store("sqlite:", namespace="idem", state_dir=tmp_path)
    yield kv
    await kv.close()


async def test_retry_returns_first_answer_and_acts_once(store: KeyValueStore) -> None:
    """The second call with the same id does not run the action and returns exactly the first answer."""
    ledger = IdempotencyLedger(store)
    calls: list[int] = []

    async def act() -> dict[str, str]:
        calls.append(1)
        return {"serial": f"s{len(calls)}"}

    first = await ledger.run("issue", "req-1", fingerprint("csr"), act, TEXT)
    second = await ledger.run("issue", "req-1", fingerprint("csr"), act, TEXT)
    assert first == second == {"serial": "s1"}
    assert len(calls) == 1


async def test_concurrent_retries_act_once(store: KeyValueStore) -> None:
    """Twenty simultaneous calls with one id: exactly one acts; the others get its answer or are told to retry."""
    ledger = IdempotencyLedger(store)
    calls: list[int] = []

    async def act() -> dict[str, str]:
        calls.append(1)
        await asyncio.sleep(0.05)
        return {"n": "1"}

    results = await asyncio.gather(
        *(ledger.run("s", "same", fingerprint("x"), act, TEXT) for _ in range(20)), return_exceptions=True
    )
    assert len(calls) == 1
    assert all(r == {"n": "1"} or isinstance(r, Aborted) for r in results)
    assert await ledger.run("s", "same", fingerprint("x"), act, TEXT) == {"n": "1"}


async def test_reused_id_with_other_content_is_refused(store: KeyValueStore) -> None:
    """A request id reused for a different request is INVALID_ARGUMENT naming request_id, not a silent replay."""
    ledger = IdempotencyLedger(store)

    async def act() -> dict[str, str]:
        return {"ok": "1"}

    await ledger.run("s", "r", fingerprint("a"), act, TEXT)
    with pytest.raises(InvalidArgument) as failure:
        await ledger.run("s", "r", fingerprint("b"), act, TEXT)
    assert "request_id" in failure.value.fields


async def test_failed_action_frees_the_id(store: KeyValueStore) -> None:
    """An action that fails stores nothing, so a retry with the same id acts again."""
    ledger = IdempotencyLedger(store)
    attempts: list[int] = []

    async def flaky() -> dict[str, str]:
        attempts.append(1)
        if len(attempts) == 1:
            raise Unavailable("ca down")
        return {"ok": "2"}

    with pytest.raises(Unavailable):
        await ledger.run("s", "r2", fingerprint("a"), flaky, TEXT)
    assert await ledger.run("s", "r2", fingerprint("a"), flaky, TEXT) == {"ok": "2"}


async def test_secrets_are_not_replayed(store: KeyValueStore) -> None:
    """The stored answer is what the codec keeps: a secret dropped by `dump` is absent from every replay."""
    ledger = IdempotencyLedger(store)
    codec = Codec[dict[str, str]](
        dump=lambda a: json.dumps({k: v for k, v in a.items() if k != "seed"}).encode(), load=lambda b: json.loads(b)
    )

    async def act() -> dict[str, str]:
        return {"seed": "JBSWY3DP", "state": "ACTIVATED"}

    assert (await ledger.run("a", "r", fingerprint("p"), act, codec))["seed"] == "JBSWY3DP"
    assert await ledger.run("a", "r", fingerprint("p"), act, codec) == {"state": "ACTIVATED"}


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "ünicode"])
async def test_malformed_request_id_is_refused(store: KeyValueStore, bad: str) -> None:
    """Request ids are at most 128 printable ASCII characters; others are refused naming the field."""
    ledger = IdempotencyLedger(store)

    async def act() -> dict[str, str]:
        raise AssertionError("must not run")

    with pytest.raises(InvalidArgument) as failure:
        await ledger.run("s", bad, fingerprint("a"), act, TEXT)
    assert "request_id" in failure.value.fields
