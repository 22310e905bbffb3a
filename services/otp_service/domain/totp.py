"""HOTP (RFC 4226) and TOTP (RFC 6238), and the pure verifier that maps a typed code to its time step.

`match_code` is step (1) of verification: given the seed, the token's parameters, the time and the code, it
names the time step the code belongs to, or why it belongs to none. It reads and writes no state; replay and
lockout are decided afterwards, atomically, by `verification.decide`.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from enum import Enum

from services.otp_service.domain.errors import InvalidTokenField, field_error

DEFAULT_PERIOD = 60
"""The bank's step length: 60 seconds."""
DEFAULT_DIGITS = 6
"""The default code length."""
MIN_DIGITS = 6
"""The shortest code allowed (RFC 4226 requires at least 6)."""
MAX_DIGITS = 8
"""The longest code allowed."""


class Algorithm(Enum):
    """The HMAC hash of a token; the value is the name used in otpauth URIs."""

    SHA1 = "SHA1"
    SHA256 = "SHA256"
    SHA512 = "SHA512"

    @property
    def digest_name(self) -> str:
        """Return the hashlib name of the hash."""
        return self.value.lower()

    @property
    def seed_bytes(self) -> int:
        """Return the seed length RFC 6238's reference uses: the hash's output size (160/256/512 bits)."""
        return {Algorithm.SHA1: 20, Algorithm.SHA256: 32, Algorithm.SHA512: 64}[self]


@dataclass(frozen=True, slots=True)
class TotpParameters:
    """A token's fixed code parameters: hash, number of digits, step length in seconds."""

    algorithm: Algorithm = Algorithm.SHA1
    digits: int = DEFAULT_DIGITS
    period: int = DEFAULT_PERIOD

    def __post_init__(self) -> None:
        if not MIN_DIGITS <= self.digits <= MAX_DIGITS:
            raise field_error(InvalidTokenField, "digits", f"must be {MIN_DIGITS}-{MAX_DIGITS}")
        if not 1 <= self.period <= 3600:
            raise field_error(InvalidTokenField, "period", "must be 1-3600 seconds")


class MatchFailure(Enum):
    """Why a well-formed code belongs to no acceptable time step."""

    WRONG_CODE = "WRONG_CODE"
    STEP_EXPIRED = "STEP_EXPIRED"


@dataclass(frozen=True, slots=True)
class CodeMatch:
    """The pure verifier's answer: the matching time step, or the failure; never the expected code."""

    step: int | None
    failure: MatchFailure | None

    @classmethod
    def at(cls, step: int) -> CodeMatch:
        """Return a match at time step `step`."""
        return cls(step=step, failure=None)

    @classmethod
    def miss(cls, failure: MatchFailure) -> CodeMatch:
        """Return a code that matches no acceptable step, for `failure`."""
        return cls(step=None, failure=failure)


def hotp(key: bytes, counter: int, *, digits: int = DEFAULT_DIGITS, algorithm: Algorithm = Algorithm.SHA1) -> str:
    """Return RFC 4226's HOTP value of `counter` under `key`, as a zero-padded decimal string."""
    if not 0 <= counter < 1 << 64:
        raise ValueError("counter must fit in 64 unsigned bits")
    if not 1 <= digits <= 10:
        raise ValueError("digits must be 1-10")
    mac = hmac.digest(key, counter.to_bytes(8, "big"), algorithm.digest_name)
    offset = mac[-1] & 0x0F
    binary = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def time_step(now: float, period: int = DEFAULT_PERIOD) -> int:
    """Return RFC 6238's T = floor((now - T0) / X) with T0 = 0."""
    if now < 0:
        raise ValueError("time before the epoch")
    return math.floor(now / period)


def totp(key: bytes, now: float, params: TotpParameters) -> str:
    """Return the code valid at `now` for a token with `params`."""
    return hotp(key, time_step(now, params.period), digits=params.digits, algorithm=params.algorithm)


def seconds_remaining(now: float, period: int = DEFAULT_PERIOD) -> int:
    """Return the whole seconds left in the current step, `period` at its very start, down to 1."""
    return period - int(now % period)


def match_code(
    key: bytes,
    params: TotpParameters,
    code: str,
    now: float,
    *,
    past_steps: int = 1,
    future_steps: int = 0,
    expired_lookback: int = 10,
) -> CodeMatch:
    """Find the step from `past_steps` before now to `future_steps` after whose code equals `code`,
    else says why not.

    The defaults are the bank's rule: a code is good during its own step and the one after (a user typing in
    the last seconds of the app's countdown), never before its step. Every step of the window is compared with
    hmac.compare_digest and none is skipped, so timing says nothing about which step (if any) matched. When
    several match (a 6-digit collision, ~1e-6), the latest wins. A code that instead matches one of the
    `expired_lookback` steps just before the window is STEP_EXPIRED (the user was too slow), anything else
    (a code of a later step included) WRONG_CODE. `code` must already be validated.
    """
    if past_steps < 0 or future_steps < 0 or expired_lookback < 0:
        raise ValueError("past_steps, future_steps and expired_lookback must be >= 0")
    current = time_step(now, params.period)
    typed = code.encode("ascii")
    first = max(current - past_steps, 0)
    matched: int | None = None
    for step in range(first, current + future_steps + 1):
        expected = hotp(key, step, digits=params.digits, algorithm=params.algorithm)
        if hmac.compare_digest(expected.encode("ascii"), typed):
            matched = step
    if matched is not None:
        return CodeMatch.at(matched)
    oldest = max(first - expired_lookback, 0)
    for step in range(oldest, first):
        expected = hotp(key, step, digits=params.digits, algorithm=params.algorithm)
        if hmac.compare_digest(expected.encode("ascii"), typed):
            return CodeMatch.miss(MatchFailure.STEP_EXPIRED)
    return CodeMatch.miss(MatchFailure.WRONG_CODE)
