"""Idempotent mutations: a retry with the same request_id returns the first answer and acts once, concurrent
retries never both act, a reused id with different content is refused, failures free the id (a crashed call's
claim expires after the configured pending time), entries are scoped by caller and subject, and the credential
check runs before anything stored is disclosed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from kagi.errors import Aborted, InvalidArgument, Unavailable
from kagi.idempotency import Codec, IdempotencyLedger, fingerprint, scope_of
from kagi.store import KeyValueStore, open_store
from services.ca_service.main import CaSettings
from services.otp_service.main import OtpSettings

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


@pytest.mark.parametrize("service", ["ca", "otp"])
async def test_a_crashed_calls_claim_blocks_retries_only_for_the_configured_pending_time(
    tmp_path: Path, service: str
) -> None:
    """A call that claimed its request id and never answered (its process killed: nothing releases the claim)
    makes retries "still in progress" only until KAGI_IDEMPOTENCY_PENDING_SECONDS, which the CA and OTP
    services read like the enrollment service (default 30); then a retry acts and answers."""
    environ = {"KAGI_INSECURE_PLAINTEXT": "1"}
    if service == "ca":
        environ["KAGI_CA_KEY_PASSPHRASE"] = "a-passphrase"
    else:
        environ |= {"KAGI_OTP_PEPPER": "p" * 32, "KAGI_OTP_KEK": base64.b64encode(bytes(32)).decode()}

    def read(env: dict[str, str]) -> int:
        settings = CaSettings.from_env(env) if service == "ca" else OtpSettings.from_env(env)
        return settings.idempotency_pending_seconds

    assert read(environ) == 30
    with pytest.raises(InvalidArgument):
        read({**environ, "KAGI_IDEMPOTENCY_PENDING_SECONDS": "0"})
    pending = read({**environ, "KAGI_IDEMPOTENCY_PENDING_SECONDS": "5"})
    assert pending == 5

    clock = FakeClock()
    store = open_store("sqlite:", namespace="idem", state_dir=tmp_path, clock=clock)
    ledger = IdempotencyLedger(store, pending_ttl=pending)
    claimed = asyncio.Event()
    acted: list[str] = []

    async def hang() -> dict[str, str]:
        acted.append("crashed")
        claimed.set()
        await asyncio.Event().wait()  # the process dies here: no answer, no release
        raise AssertionError("unreachable")

    async def act() -> dict[str, str]:
        acted.append("retry")
        return {"serial": "s1"}

    crashed = asyncio.create_task(ledger.run("issue", "req-1", fingerprint("csr"), hang, TEXT))
    try:
        await claimed.wait()
        clock.advance(pending - 0.5)
        with pytest.raises(Aborted) as in_progress:
            await ledger.run("issue", "req-1", fingerprint("csr"), act, TEXT)
        assert in_progress.value.reason == "REQUEST_IN_PROGRESS"
        clock.advance(1)  # past the pending time: the claim has expired
        assert await ledger.run("issue", "req-1", fingerprint("csr"), act, TEXT) == {"serial": "s1"}
        assert await ledger.run("issue", "req-1", fingerprint("csr"), act, TEXT) == {"serial": "s1"}  # a replay
        assert acted == ["crashed", "retry"]
    finally:
        crashed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await crashed
        await store.close()


async def test_a_cancelled_call_frees_the_id_at_once(store: KeyValueStore) -> None:
    """A call cancelled mid-action (the client went away, its deadline passed) releases its claim at once, as a
    call that raised does: a retry acts without waiting out the pending time."""
    ledger = IdempotencyLedger(store, pending_ttl=3600)
    started = asyncio.Event()

    async def hang() -> dict[str, str]:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def act() -> dict[str, str]:
        return {"ok": "1"}

    task = asyncio.create_task(ledger.run("s", "r", fingerprint("a"), hang, TEXT))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await ledger.run("s", "r", fingerprint("a"), act, TEXT) == {"ok": "1"}
