"""HOTP/TOTP against the RFCs' test vectors and pyotp, and the pure verifier's window with a fake clock."""

from __future__ import annotations

import base64

import pyotp
import pytest

from kagi.clock import FakeClock
from services.otp_service.domain.errors import InvalidTokenField
from services.otp_service.domain.totp import (
    Algorithm,
    CodeMatch,
    MatchFailure,
    TotpParameters,
    hotp,
    match_code,
    seconds_remaining,
    time_step,
    totp,
)

RFC_KEYS = {
    Algorithm.SHA1: b"12345678901234567890",
    Algorithm.SHA256: b"12345678901234567890123456789012",
    Algorithm.SHA512: b"1234567890123456789012345678901234567890123456789012345678901234",
}

# RFC 6238 Appendix B: T0 = 0, X = 30 s, 8 digits.
RFC6238_VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]

# RFC 4226 Appendix D: HOTP values for counters 0-9, 6 digits.
RFC4226_VECTORS = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]

KEY = b"\x01" * 20
SIX_SHA1 = TotpParameters()
STEP = 30_000_000  # the 60-second step starting at the fake clock's 1_800_000_000


@pytest.mark.parametrize(("when", "sha1", "sha256", "sha512"), RFC6238_VECTORS)
def test_rfc6238_appendix_b_vectors(when: int, sha1: str, sha256: str, sha512: str) -> None:
    """Every RFC 6238 Appendix B vector (30-second period, 8 digits) is reproduced for all three hashes."""
    for algorithm, expected in ((Algorithm.SHA1, sha1), (Algorithm.SHA256, sha256), (Algorithm.SHA512, sha512)):
        params = TotpParameters(algorithm=algorithm, digits=8, period=30)
        assert totp(RFC_KEYS[algorithm], when, params) == expected


@pytest.mark.parametrize(("counter", "expected"), list(enumerate(RFC4226_VECTORS)))
def test_rfc4226_appendix_d_vectors(counter: int, expected: str) -> None:
    """HOTP reproduces RFC 4226 Appendix D for counters 0-9."""
    assert hotp(RFC_KEYS[Algorithm.SHA1], counter) == expected


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("digits", [6, 7, 8])
def test_totp_agrees_with_pyotp_for_60_second_steps(algorithm: Algorithm, digits: int) -> None:
    """Our 60-second codes equal pyotp's for every hash and digit count, at a spread of times."""
    key = bytes(range(algorithm.seed_bytes))
    reference = pyotp.TOTP(base64.b32encode(key).decode(), digits=digits, digest=algorithm.digest_name, interval=60)
    params = TotpParameters(algorithm=algorithm, digits=digits, period=60)
    for when in (0, 59, 60, 1_700_000_000, 1_800_000_059, 4_102_444_800):
        assert totp(key, when, params) == reference.at(when)


def test_time_step_and_seconds_remaining() -> None:
    """A step spans [k*60, (k+1)*60); the countdown shows 60 at its start and 1 in its last second."""
    assert time_step(1_800_000_000.0) == STEP
    assert time_step(1_800_000_059.999) == STEP
    assert time_step(1_800_000_060.0) == STEP + 1
    assert seconds_remaining(1_800_000_000.0) == 60
    assert seconds_remaining(1_800_000_000.5) == 60
    assert seconds_remaining(1_800_000_059.2) == 1


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (-60.0, CodeMatch.miss(MatchFailure.WRONG_CODE)),  # one step early: a code from the future
        (-0.001, CodeMatch.miss(MatchFailure.WRONG_CODE)),  # the last instant before its step
        (0.0, CodeMatch.at(STEP)),  # first instant of the window
        (59.999, CodeMatch.at(STEP)),
        (119.999, CodeMatch.at(STEP)),  # one step late: last instant of the window
        (120.0, CodeMatch.miss(MatchFailure.STEP_EXPIRED)),  # two steps late
        (600.0 + 119.999, CodeMatch.miss(MatchFailure.STEP_EXPIRED)),  # last step of the expired lookback
        (660.0 + 120.0, CodeMatch.miss(MatchFailure.WRONG_CODE)),  # beyond the lookback
    ],
)
def test_default_window_is_the_current_step_and_the_previous_one(
    clock: FakeClock, offset: float, expected: CodeMatch
) -> None:
    """By default the code of step S is accepted exactly while the clock is in steps S..S+1, to the millisecond:
    never before its step, STEP_EXPIRED for the ten steps after the window."""
    code = hotp(KEY, STEP)
    clock.advance(offset)
    assert match_code(KEY, SIX_SHA1, code, clock.now(), expired_lookback=10) == expected


def test_window_zero_accepts_only_the_current_step(clock: FakeClock) -> None:
    """With past_steps=0 the previous step's code is already STEP_EXPIRED and the next one WRONG_CODE."""
    now = clock.now()
    assert match_code(KEY, SIX_SHA1, hotp(KEY, STEP), now, past_steps=0) == CodeMatch.at(STEP)
    assert match_code(KEY, SIX_SHA1, hotp(KEY, STEP - 1), now, past_steps=0).failure is MatchFailure.STEP_EXPIRED
    assert match_code(KEY, SIX_SHA1, hotp(KEY, STEP + 1), now, past_steps=0).failure is MatchFailure.WRONG_CODE


def test_wider_window_is_configurable(clock: FakeClock) -> None:
    """past_steps=2 and future_steps=2 accept codes two steps either side and report which step matched."""
    for delta in (-2, -1, 0, 1, 2):
        match = match_code(KEY, SIX_SHA1, hotp(KEY, STEP + delta), clock.now(), past_steps=2, future_steps=2)
        assert match == CodeMatch.at(STEP + delta)


def test_wrong_code_matches_nothing(clock: FakeClock) -> None:
    """A code equal to none of the window's or lookback's codes is WRONG_CODE, and the answer holds no code."""
    candidates = {hotp(KEY, s) for s in range(STEP - 11, STEP + 2)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in candidates)
    result = match_code(KEY, SIX_SHA1, wrong, clock.now())
    assert result == CodeMatch.miss(MatchFailure.WRONG_CODE)
    assert all(c not in repr(result) for c in candidates)


def test_parameters_are_validated() -> None:
    """Digits outside 6-8 and a non-positive period are refused, naming the field, when the parameters are built."""
    for kwargs, name in (({"digits": 5}, "digits"), ({"digits": 9}, "digits"), ({"period": 0}, "period")):
        with pytest.raises(InvalidTokenField) as caught:
            TotpParameters(digits=kwargs.get("digits", 6), period=kwargs.get("period", 60))
        assert name in caught.value.fields


def test_seed_sizes_follow_the_hash() -> None:
    """SHA1, SHA256 and SHA512 seeds are 160, 256 and 512 bits."""
    assert [a.seed_bytes * 8 for a in Algorithm] == [160, 256, 512]
