"""The OTP service's tunable rules in one frozen record, built once in `main` from settings and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.otp_service.domain.totp import TotpParameters

DEFAULT_ACTIVATION_TTL = 24 * 60 * 60.0
"""24 hours, in seconds."""
MAX_PAST_STEPS = 10
"""The most steps back a code may still be accepted."""
MAX_FUTURE_STEPS = 2
"""The most steps ahead a code may be accepted (a phone's clock running fast)."""


@dataclass(frozen=True, slots=True)
class OtpPolicy:
    """Holds every limit the OTP domain enforces; the defaults are the issue's acceptance criteria.

    - issuer: shown by authenticator apps beside the account.
    - token_parameters: hash, digits and period of newly created tokens (existing tokens keep theirs).
    - activation_ttl: seconds a created token may wait for activation.
    - max_activation_failures: wrong usage-start passwords before the token locks.
    - past_steps: steps before the current one whose codes are still accepted (1: a code is good during its own
      60 seconds and the 60 after).
    - future_steps: steps after the current one whose codes are accepted (0: never a code of a later step;
      raise it only for phones whose clocks run fast).
    - expired_lookback: steps before the window in which a matching code is reported STEP_EXPIRED.
    - max_failures: consecutive verification failures before the token locks.
    - rate_limit_failures / rate_limit_seconds: at most that many failures per window of that many seconds;
      further attempts in the window are refused unevaluated. Keep it below max_failures to matter.
    """

    issuer: str = "Kagi"
    token_parameters: TotpParameters = field(default_factory=TotpParameters)
    activation_ttl: float = DEFAULT_ACTIVATION_TTL
    max_activation_failures: int = 5
    past_steps: int = 1
    future_steps: int = 0
    expired_lookback: int = 10
    max_failures: int = 5
    rate_limit_failures: int = 3
    rate_limit_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.activation_ttl <= 0:
            raise ValueError("activation_ttl must be positive")
        if self.max_activation_failures < 1 or self.max_failures < 1:
            raise ValueError("failure limits must be at least 1")
        if not 0 <= self.past_steps <= MAX_PAST_STEPS:
            raise ValueError(f"past_steps must be 0-{MAX_PAST_STEPS} steps")
        if not 0 <= self.future_steps <= MAX_FUTURE_STEPS:
            raise ValueError(f"future_steps must be 0-{MAX_FUTURE_STEPS} steps")
        if not 0 <= self.expired_lookback <= 60:
            raise ValueError("expired_lookback must be 0-60 steps")
        if self.rate_limit_failures < 1 or self.rate_limit_seconds <= 0:
            raise ValueError("rate limit must allow at least one failure in a positive window")
