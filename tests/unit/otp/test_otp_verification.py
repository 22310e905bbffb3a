"""Replay protection, lockout, unlock and rate limiting: the pure `decide` rule and `verify_code` around it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from kagi.clock import FakeClock
from services.otp_service.domain import (
    Algorithm,
    CorruptRecord,
    InvalidCodeFormat,
    OtpPolicy,
    Replayed,
    SeedVault,
    TokenEvent,
    TokenLocked,
    TokenNotActive,
    TokenState,
    TotpParameters,
    Verdict,
    VerificationState,
    change_lifecycle,
    decide,
    verify_code,
)
from services.otp_service.domain.totp import CodeMatch, MatchFailure
from tests.unit.otp.otp_support import Provisioned, code_at, wrong_code

NO_RATE_LIMIT = OtpPolicy(rate_limit_failures=100)


# --- decide: the pure state update -----------------------------------------------------------------------------


def test_decide_accepts_a_newer_step_and_clears_failures() -> None:
    """A match above last_step is ACCEPTED, becomes the new last_step, and resets every failure counter."""
    state = VerificationState(last_step=10, failures=3, rate_window_start=5.0, rate_window_failures=2)
    decision = decide(state, CodeMatch.at(11), now=100.0, policy=NO_RATE_LIMIT)
    assert decision.verdict is Verdict.ACCEPTED
    assert decision.changed
    assert decision.state == VerificationState(last_step=11)


@pytest.mark.parametrize("step", [10, 9])
def test_decide_refuses_a_step_at_or_before_the_last_one(step: int) -> None:
    """A match at or below last_step is REPLAYED and changes nothing: last_step stays, and a code that was
    already good counts toward neither the lockout nor the rate limit."""
    state = VerificationState(last_step=10, failures=2)
    decision = decide(state, CodeMatch.at(step), now=100.0, policy=NO_RATE_LIMIT)
    assert decision.verdict is Verdict.REPLAYED
    assert not decision.changed
    assert decision.state == state


def test_decide_locks_at_the_fifth_consecutive_failure() -> None:
    """Failures 1-4 leave the token open; the 5th locks it, and after that even a match is TOKEN_LOCKED."""
    state = VerificationState()
    for n in range(1, 6):
        decision = decide(state, CodeMatch.miss(MatchFailure.WRONG_CODE), now=100.0 + n, policy=NO_RATE_LIMIT)
        state = decision.state
        assert decision.verdict is Verdict.WRONG_CODE
        assert decision.locked_now is (n == 5)
        assert state.locked is (n == 5)
    locked = decide(state, CodeMatch.at(99), now=200.0, policy=NO_RATE_LIMIT)
    assert locked.verdict is Verdict.TOKEN_LOCKED
    assert not locked.changed
    assert locked.state == state


def test_decide_rate_limit_refuses_unevaluated_until_the_window_ends() -> None:
    """After 3 failures within 60 s the next attempt, even a correct one, is RATE_LIMITED until the window ends."""
    policy = OtpPolicy()
    state = VerificationState()
    for t in (1000.0, 1010.0, 1020.0):
        state = decide(state, CodeMatch.miss(MatchFailure.WRONG_CODE), now=t, policy=policy).state
    throttled = decide(state, CodeMatch.at(5), now=1059.0, policy=policy)
    assert throttled.verdict is Verdict.RATE_LIMITED
    assert throttled.retry_after == pytest.approx(1.0)
    assert not throttled.changed
    assert decide(state, CodeMatch.at(5), now=1060.0, policy=policy).verdict is Verdict.ACCEPTED


def test_verification_state_round_trips_and_rejects_corrupt_bytes() -> None:
    """The record survives to_bytes/from_bytes; other kinds, schemas or types raise CorruptRecord."""
    state = VerificationState(
        last_step=30_000_000, failures=2, locked=True, rate_window_start=1.5, rate_window_failures=2
    )
    assert VerificationState.from_bytes(state.to_bytes()) == state
    assert b'"schema":1' in state.to_bytes()
    for bad in (
        b"not json",
        b"[]",
        state.to_bytes().replace(b'"schema":1', b'"schema":2'),
        state.to_bytes().replace(b'"locked":true', b'"locked":1'),
    ):
        with pytest.raises(CorruptRecord):
            VerificationState.from_bytes(bad)


# --- verify_code: the domain operation -------------------------------------------------------------------------


def test_first_code_activates_and_a_second_use_is_replayed(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """The first correct code moves REGISTERED to ACTIVE; the same code again is REPLAYED."""
    p = provision()
    code = code_at(p, clock.now())
    first = verify_code(p.token, p.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert first.result.ok
    assert first.token is not None
    assert first.token.state is TokenState.ACTIVE
    assert first.state is not None
    clock.advance(20)
    again = verify_code(first.token, first.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert again.result.verdict is Verdict.REPLAYED
    assert again.token is None
    with pytest.raises(Replayed, match="使用済み"):
        again.result.raise_for_failure()


def test_an_older_step_after_a_newer_one_is_replayed(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """Once the current step's code is accepted, the previous step's code (still inside the window) is refused."""
    p = provision()
    now = clock.now()
    newer = verify_code(p.token, p.state, code_at(p, now), now=now, policy=NO_RATE_LIMIT, vault=vault)
    assert newer.result.ok
    assert newer.state is not None
    assert newer.token is not None
    older = verify_code(newer.token, newer.state, code_at(p, now - 60), now=now, policy=NO_RATE_LIMIT, vault=vault)
    assert older.result.verdict is Verdict.REPLAYED


def test_a_racing_duplicate_loses_by_construction(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """Two requests with one code both pass from the same read, but only one write can land; the rerun is REPLAYED."""
    p = provision()
    code = code_at(p, clock.now())
    a = verify_code(p.token, p.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    b = verify_code(p.token, p.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert a.result.ok
    assert b.result.ok
    assert a.state is not None
    assert a.token is not None
    rerun = verify_code(a.token, a.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert rerun.result.verdict is Verdict.REPLAYED


def test_lockout_at_fifth_failure_refuses_correct_code_until_unlock(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """Five wrong codes lock the token (LOCKED, TokenLocked); a correct code is refused; UNLOCK restores it."""
    p = provision()
    token, state = p.token, p.state
    for n in range(1, 6):
        out = verify_code(token, state, wrong_code(p, clock.now()), now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
        assert out.state is not None
        state = out.state
        token = out.token or token
        assert out.result.attempts_remaining == 5 - n
        assert (out.token is not None) is (n == 5)
    assert token.state is TokenState.LOCKED
    assert state.locked
    err = out.result.error()
    assert isinstance(err, TokenLocked)
    assert err.metadata["cause"] == "WRONG_CODE"

    refused = verify_code(token, state, code_at(p, clock.now()), now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert refused.result.verdict is Verdict.TOKEN_LOCKED
    assert refused.state is None
    assert refused.token is None

    unlocked = change_lifecycle(token, state, TokenEvent.UNLOCK, now=clock.now(), policy=NO_RATE_LIMIT)
    assert unlocked.token.state is TokenState.REGISTERED
    assert unlocked.verification_state == VerificationState(last_step=state.last_step)
    ok = verify_code(
        unlocked.token,
        unlocked.verification_state,
        code_at(p, clock.now()),
        now=clock.now(),
        policy=NO_RATE_LIMIT,
        vault=vault,
    )
    assert ok.result.ok
    assert ok.token is not None
    assert ok.token.state is TokenState.ACTIVE


def test_unlock_keeps_the_replay_floor(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """An operator unlock clears failures but a code accepted before the lock stays refused."""
    p = provision()
    code = code_at(p, clock.now())
    accepted = verify_code(p.token, p.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert accepted.state is not None
    assert accepted.token is not None
    locked = change_lifecycle(accepted.token, accepted.state, TokenEvent.LOCK, now=clock.now(), policy=NO_RATE_LIMIT)
    unlocked = change_lifecycle(
        locked.token, locked.verification_state, TokenEvent.UNLOCK, now=clock.now(), policy=NO_RATE_LIMIT
    )
    again = verify_code(
        unlocked.token, unlocked.verification_state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault
    )
    assert again.result.verdict is Verdict.REPLAYED


def test_success_resets_the_failure_count(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """Four failures then a success leave zero failures: the lockout counts consecutive failures only."""
    p = provision()
    state = p.state
    for _ in range(4):
        out = verify_code(
            p.token, state, wrong_code(p, clock.now()), now=clock.now(), policy=NO_RATE_LIMIT, vault=vault
        )
        assert out.state is not None
        state = out.state
    ok = verify_code(p.token, state, code_at(p, clock.now()), now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert ok.result.ok
    assert ok.state is not None
    assert ok.state.failures == 0
    assert ok.result.attempts_remaining == 5


def test_rate_limit_refuses_then_releases(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault, policy: OtpPolicy
) -> None:
    """With the default 3 failures/minute, a 4th attempt in the minute is RATE_LIMITED (retry_after given)."""
    p = provision()
    state = p.state
    for _ in range(3):
        out = verify_code(p.token, state, wrong_code(p, clock.now()), now=clock.now(), policy=policy, vault=vault)
        assert out.state is not None
        state = out.state
        clock.advance(10)
    limited = verify_code(p.token, state, code_at(p, clock.now()), now=clock.now(), policy=policy, vault=vault)
    assert limited.result.verdict is Verdict.RATE_LIMITED
    assert limited.state is None
    err = limited.result.error()
    assert err is not None
    assert err.reason == "RATE_LIMITED"
    assert err.metadata["retry_after"] == "30"
    clock.advance(30)
    assert verify_code(p.token, state, code_at(p, clock.now()), now=clock.now(), policy=policy, vault=vault).result.ok


@pytest.mark.parametrize("event", [None, TokenEvent.DISABLE, TokenEvent.REVOKE])
def test_tokens_not_registered_or_active_do_not_verify(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault, event: TokenEvent | None
) -> None:
    """An activated-but-unregistered, disabled or revoked token answers TOKEN_NOT_ACTIVE, naming its state."""
    p = provision(register=event is not None)
    token = p.token if event is None else p.token.apply(event, now=clock.now())
    out = verify_code(token, p.state, code_at(p, clock.now()), now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert out.result.verdict is Verdict.TOKEN_NOT_ACTIVE
    assert out.state is None
    assert out.token is None
    err = out.result.error()
    assert isinstance(err, TokenNotActive)
    assert token.state.value in err.message


@pytest.mark.parametrize("bad", ["12345", "1234567", "12345a", "１２３４５６", "", " 123456", None, 123456])
def test_malformed_codes_raise_before_any_check(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault, bad: object
) -> None:
    """A malformed code raises InvalidCodeFormat (field "code") and produces no record to write."""
    p = provision()
    with pytest.raises(InvalidCodeFormat) as caught:
        verify_code(p.token, p.state, bad, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert "code" in caught.value.fields


@pytest.mark.parametrize("algorithm", [Algorithm.SHA256, Algorithm.SHA512])
def test_eight_digit_sha2_tokens_verify(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault, algorithm: Algorithm
) -> None:
    """SHA-256 and SHA-512 tokens with 8 digits verify their codes and refuse 6-digit input."""
    p = provision(TotpParameters(algorithm=algorithm, digits=8))
    code = code_at(p, clock.now())
    assert len(code) == 8
    assert verify_code(p.token, p.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault).result.ok
    with pytest.raises(InvalidCodeFormat):
        verify_code(p.token, p.state, code[:6], now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)


def test_results_never_reveal_the_expected_code_or_seed(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """Neither the outcome's repr nor the error's text holds the code the app shows or the seed."""
    p = provision()
    expected = code_at(p, clock.now())
    out = verify_code(p.token, p.state, wrong_code(p, clock.now()), now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    err = out.result.error()
    assert err is not None
    assert err.reason == "WRONG_CODE"
    texts = [repr(out), str(err), repr(err.metadata), repr(dataclasses.asdict(out.result))]
    for text in texts:
        assert expected not in text
        assert p.seed.secret_base32 not in text


def test_expired_step_is_named(clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault) -> None:
    """A code typed three minutes late is STEP_EXPIRED, with a message telling the user to take the new code."""
    p = provision()
    code = code_at(p, clock.now())
    clock.advance(180)
    out = verify_code(p.token, p.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert out.result.verdict is Verdict.STEP_EXPIRED
    err = out.result.error()
    assert err is not None
    assert err.reason == "STEP_EXPIRED"
    assert "有効時間" in err.message
