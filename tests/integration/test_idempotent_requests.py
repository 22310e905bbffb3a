"""Idempotent mutations: a retry with the same request_id returns the first answer and acts once, concurrent
retries never both act, a reused id with different content is refused, failures free the id, entries are scoped
by caller and subject, and the credential check runs before anything stored is disclosed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kagi.errors import Aborted, InvalidArgument, Unavailable
from kagi.idempotency import Codec, IdempotencyLedger, fingerprint, scope_of
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


async def test_the_credential_check_runs_before_anything_stored_is_disclosed(store: KeyValueStore) -> None:
    """`before_replay` runs before a replay, before REQUEST_ID_REUSED and before "still in progress": a
    failing check is all a caller with a wrong credential learns."""
    ledger = IdempotencyLedger(store)
    release = asyncio.Event()

    async def slow() -> dict[str, str]:
        await release.wait()
        return {"enrollment": "e1"}

    async def refuse() -> None:
        raise PermissionError("wrong credential")

    first = asyncio.create_task(ledger.run("s", "r", fingerprint("a"), slow, TEXT))
    await asyncio.sleep(0.05)
    with pytest.raises(PermissionError):  # in progress, but not told so
        await ledger.run("s", "r", fingerprint("a"), slow, TEXT, before_replay=refuse)
    release.set()
    assert await first == {"enrollment": "e1"}
    for print_ in (fingerprint("a"), fingerprint("b")):  # the replay, and the reuse with other content
        with pytest.raises(PermissionError):
            await ledger.run("s", "r", print_, slow, TEXT, before_replay=refuse)


async def test_scopes_keep_callers_and_subjects_apart(store: KeyValueStore) -> None:
    """The same request id under another caller or subject is a different entry: it acts, never replays nor
    refuses."""
    ledger = IdempotencyLedger(store)
    answers = iter([{"n": "1"}, {"n": "2"}, {"n": "3"}])

    async def act() -> dict[str, str]:
        return next(answers)

    one = await ledger.run(scope_of("M", "caller-a", "acct-1"), "k", fingerprint("x"), act, TEXT)
    two = await ledger.run(scope_of("M", "caller-a", "acct-2"), "k", fingerprint("y"), act, TEXT)
    three = await ledger.run(scope_of("M", "caller-b", "acct-1"), "k", fingerprint("x"), act, TEXT)
    assert [one, two, three] == [{"n": "1"}, {"n": "2"}, {"n": "3"}]
