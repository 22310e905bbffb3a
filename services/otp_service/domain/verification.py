"""Replay protection, lockout and rate limiting as one pure update of a compact per-token record.

Verification is two steps. (1) `totp.match_code` maps a code to its time step without touching state. (2)
`decide` takes the token's `VerificationState` and that match and returns the next state plus a verdict; the
store applies it with ONE compare-and-swap on the record (or one Lua script doing the same arithmetic), so
two requests carrying the same code cannot both win: the loser re-reads, sees `last_step` moved, and gets
REPLAYED. The rule, in the order it is applied:

1. locked                                  -> TOKEN_LOCKED, state unchanged (even for a correct code)
2. rate window full (>= N failures in W s) -> RATE_LIMITED, state unchanged, code never evaluated
3. code matched step s and s > last_step   -> ACCEPTED: last_step = s, all failure counters cleared
4. code matched step s and s <= last_step  -> REPLAYED, state unchanged: a code that was already good is no
                                              guess (it tells its sender nothing new), so a double submit or
                                              a burst of retries never locks the user out
5. no match (WRONG_CODE or STEP_EXPIRED)   -> failures += 1, rate-window count += 1,
                                              locked = failures >= max_failures

Step 3 is privacyIDEA's rule: no step at or before the last accepted one is ever accepted again, so a code is
good once, and an older code presented after a newer one is refused. `unlock` clears the counters but keeps
`last_step`, so an unlock never re-opens an old code.

Store contract for the use-case layer: read this record *before* the token record, and have every token
lifecycle change (lock, unlock, disable, enable, revoke) rewrite this record in the same `commit`. A
verification's compare-and-swap then fails whenever the token changed after it was read, and the retry sees the
new token state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from services.otp_service.domain import codec
from services.otp_service.domain.policy import OtpPolicy
from services.otp_service.domain.totp import CodeMatch

RECORD_KIND = "otp.verification_state"
"""Tags stored verification records."""
SCHEMA_VERSION = 1
"""The verification record layout this code writes and reads."""
NO_STEP = -1
"""`last_step` before any code was accepted (below every real step)."""


class Verdict(Enum):
    """The outcome of one verification; every value but ACCEPTED names why it failed."""

    ACCEPTED = "ACCEPTED"
    WRONG_CODE = "WRONG_CODE"
    STEP_EXPIRED = "STEP_EXPIRED"
    REPLAYED = "REPLAYED"
    TOKEN_LOCKED = "TOKEN_LOCKED"
    RATE_LIMITED = "RATE_LIMITED"
    TOKEN_NOT_ACTIVE = "TOKEN_NOT_ACTIVE"


@dataclass(frozen=True, slots=True)
class VerificationState:
    """A token's hot record: last accepted step, failure counters and the lock flag."""

    last_step: int = NO_STEP
    failures: int = 0
    locked: bool = False
    rate_window_start: float = 0.0
    rate_window_failures: int = 0

    def to_bytes(self) -> bytes:
        """Return the record as schema-versioned JSON for the store."""
        return codec.dump(
            RECORD_KIND,
            SCHEMA_VERSION,
            {
                "last_step": self.last_step,
                "failures": self.failures,
                "locked": self.locked,
                "rate_window_start": self.rate_window_start,
                "rate_window_failures": self.rate_window_failures,
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> VerificationState:
        """Read `to_bytes` output; raise CorruptRecord on anything else."""
        obj = codec.load(data, RECORD_KIND, SCHEMA_VERSION)
        return cls(
            last_step=codec.field(obj, "last_step", int),
            failures=codec.field(obj, "failures", int),
            locked=codec.field(obj, "locked", bool),
            rate_window_start=codec.field(obj, "rate_window_start", float),
            rate_window_failures=codec.field(obj, "rate_window_failures", int),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """`decide`'s answer: the verdict and the state to write (`changed` False: write nothing)."""

    verdict: Verdict
    state: VerificationState
    changed: bool
    step: int | None = None
    locked_now: bool = False
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        """Say whether the code was accepted."""
        return self.verdict is Verdict.ACCEPTED


def retry_after(state: VerificationState, now: float, policy: OtpPolicy) -> float | None:
    """Return the seconds until the rate window frees up, or None when attempts are allowed now."""
    window_end = state.rate_window_start + policy.rate_limit_seconds
    if state.rate_window_failures >= policy.rate_limit_failures and now < window_end:
        return window_end - now
    return None


def attempts_remaining(state: VerificationState, policy: OtpPolicy) -> int:
    """Return how many more consecutive failures the token takes before it locks."""
    return 0 if state.locked else max(policy.max_failures - state.failures, 0)


def decide(state: VerificationState, match: CodeMatch, *, now: float, policy: OtpPolicy) -> Decision:
    """Apply the replay, lockout and rate rules (see the module docstring) to one matched code."""
    if state.locked:
        return Decision(Verdict.TOKEN_LOCKED, state, changed=False)
    wait = retry_after(state, now, policy)
    if wait is not None:
        return Decision(Verdict.RATE_LIMITED, state, changed=False, retry_after=wait)
    if match.step is not None and match.step > state.last_step:
        accepted = VerificationState(last_step=match.step)
        return Decision(Verdict.ACCEPTED, accepted, changed=True, step=match.step)
    if match.step is not None:
        return Decision(Verdict.REPLAYED, state, changed=False)
    if match.failure is None:
        raise ValueError("a CodeMatch has a step or a failure")
    verdict = Verdict(match.failure.value)
    failures = state.failures + 1
    if now >= state.rate_window_start + policy.rate_limit_seconds:
        window_start, window_failures = now, 1
    else:
        window_start, window_failures = state.rate_window_start, state.rate_window_failures + 1
    failed = replace(
        state,
        failures=failures,
        locked=failures >= policy.max_failures,
        rate_window_start=window_start,
        rate_window_failures=window_failures,
    )
    return Decision(verdict, failed, changed=True, locked_now=failed.locked)


def lock(state: VerificationState) -> VerificationState:
    """Return `state` locked by an operator or a lifecycle change, with its replay floor kept."""
    return replace(state, locked=True)


def unlock(state: VerificationState) -> VerificationState:
    """Clear the lock and every failure counter but keep `last_step`, so no old code becomes valid."""
    return VerificationState(last_step=state.last_step)
