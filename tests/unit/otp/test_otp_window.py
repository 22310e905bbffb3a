"""The one-time-password window: by default a code is good during its own 60 seconds and the 60 seconds after,
never before its step; KAGI_OTP_PAST_STEPS and KAGI_OTP_FUTURE_STEPS change that within fixed bounds."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from kagi.clock import FakeClock
from kagi.errors import InvalidArgument
from services.otp_service.domain import OtpPolicy, SeedVault, Verdict, verify_code
from services.otp_service.domain.totp import CodeMatch, MatchFailure, TotpParameters, hotp, match_code
from services.otp_service.main import OtpSettings
from tests.unit.otp.otp_support import Provisioned, code_at

KEY = b"\x02" * 20
PARAMS = TotpParameters()
NOW = 1_800_000_030.0  # the middle of step 30_000_000
STEP = 30_000_000
NO_RATE_LIMIT = OtpPolicy(rate_limit_failures=100)


def _env(**overrides: str) -> dict[str, str]:
    base = {
        "KAGI_INSECURE_PLAINTEXT": "1",
        "KAGI_OTP_PEPPER": "a-pepper-of-at-least-thirty-two-bytes",
        "KAGI_OTP_KEK": base64.b64encode(bytes(range(32))).decode(),
    }
    return {**base, **overrides}


def test_default_policy_accepts_the_current_and_the_previous_step_only() -> None:
    """The default policy accepts one step back and none ahead, and keeps the ten-step STEP_EXPIRED lookback."""
    policy = OtpPolicy()
    assert (policy.past_steps, policy.future_steps, policy.expired_lookback) == (1, 0, 10)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (0, CodeMatch.at(STEP)),
        (-1, CodeMatch.at(STEP - 1)),
        (1, CodeMatch.miss(MatchFailure.WRONG_CODE)),
        (2, CodeMatch.miss(MatchFailure.WRONG_CODE)),
        (-2, CodeMatch.miss(MatchFailure.STEP_EXPIRED)),
        (-11, CodeMatch.miss(MatchFailure.STEP_EXPIRED)),
        (-12, CodeMatch.miss(MatchFailure.WRONG_CODE)),
    ],
)
def test_match_code_defaults(delta: int, expected: CodeMatch) -> None:
    """With match_code's defaults, the previous step's code is accepted, the next step's is WRONG_CODE, two to
    eleven steps back are STEP_EXPIRED and older codes WRONG_CODE."""
    assert match_code(KEY, PARAMS, hotp(KEY, STEP + delta), NOW) == expected


def test_match_code_with_one_future_step_accepts_the_next_step_only() -> None:
    """future_steps=1 accepts the next step's code (a phone's clock running fast), not the one after."""
    assert match_code(KEY, PARAMS, hotp(KEY, STEP + 1), NOW, future_steps=1) == CodeMatch.at(STEP + 1)
    assert match_code(KEY, PARAMS, hotp(KEY, STEP + 2), NOW, future_steps=1).failure is MatchFailure.WRONG_CODE


def test_past_steps_move_the_start_of_the_expired_lookback() -> None:
    """With past_steps=3, a code three steps back is accepted and four steps back is STEP_EXPIRED."""
    assert match_code(KEY, PARAMS, hotp(KEY, STEP - 3), NOW, past_steps=3) == CodeMatch.at(STEP - 3)
    assert match_code(KEY, PARAMS, hotp(KEY, STEP - 4), NOW, past_steps=3).failure is MatchFailure.STEP_EXPIRED


def test_negative_window_is_refused() -> None:
    """A negative past or future window is a programming error, refused before any code is compared."""
    with pytest.raises(ValueError, match="future_steps"):
        match_code(KEY, PARAMS, "123456", NOW, future_steps=-1)
    with pytest.raises(ValueError, match="past_steps"):
        match_code(KEY, PARAMS, "123456", NOW, past_steps=-1)


@pytest.mark.parametrize(
    ("offset", "verdict"),
    [(-60, Verdict.ACCEPTED), (0, Verdict.ACCEPTED), (60, Verdict.WRONG_CODE), (-120, Verdict.STEP_EXPIRED)],
)
def test_verify_code_with_the_default_policy(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault, offset: int, verdict: Verdict
) -> None:
    """verify_code under the default policy: the previous step's code is accepted, the next step's refused as
    WRONG_CODE, a code of two steps back refused as STEP_EXPIRED."""
    p = provision()
    code = code_at(p, clock.now() + offset)
    outcome = verify_code(p.token, p.state, code, now=clock.now(), policy=NO_RATE_LIMIT, vault=vault)
    assert outcome.result.verdict is verdict


def test_verify_code_with_one_future_step_accepts_the_next_step(
    clock: FakeClock, provision: Callable[..., Provisioned], vault: SeedVault
) -> None:
    """With future_steps=1 the next step's code is accepted (and the token becomes ACTIVE at that step)."""
    p = provision()
    policy = OtpPolicy(rate_limit_failures=100, future_steps=1)
    outcome = verify_code(p.token, p.state, code_at(p, clock.now() + 60), now=clock.now(), policy=policy, vault=vault)
    assert outcome.result.verdict is Verdict.ACCEPTED
    assert outcome.state is not None


@pytest.mark.parametrize(("field", "value"), [("past_steps", 11), ("past_steps", -1), ("future_steps", 3)])
def test_policy_bounds(field: str, value: int) -> None:
    """The policy refuses more than 10 steps back, more than 2 ahead, or a negative window."""
    with pytest.raises(ValueError, match=field):
        OtpPolicy(**{field: value})  # type: ignore[arg-type]


def test_settings_default_to_one_step_back_and_none_ahead() -> None:
    """Without KAGI_OTP_PAST_STEPS and KAGI_OTP_FUTURE_STEPS the service runs with 1 and 0."""
    policy = OtpSettings.from_env(_env()).policy
    assert (policy.past_steps, policy.future_steps) == (1, 0)


def test_settings_read_the_window_from_the_environment() -> None:
    """KAGI_OTP_PAST_STEPS and KAGI_OTP_FUTURE_STEPS set the policy's window."""
    policy = OtpSettings.from_env(_env(KAGI_OTP_PAST_STEPS="2", KAGI_OTP_FUTURE_STEPS="1")).policy
    assert (policy.past_steps, policy.future_steps) == (2, 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [("KAGI_OTP_PAST_STEPS", "11"), ("KAGI_OTP_FUTURE_STEPS", "3"), ("KAGI_OTP_FUTURE_STEPS", "-1")],
)
def test_settings_refuse_a_window_out_of_range_naming_the_variable(name: str, value: str) -> None:
    """A window outside 0-10 steps back or 0-2 ahead stops the service at start, naming the variable."""
    with pytest.raises(InvalidArgument) as caught:
        OtpSettings.from_env(_env(**{name: value}))
    assert name in caught.value.fields
