"""Shared helpers of the OTP unit tests: the provisioned-token record and code helpers (not tests themselves)."""

from __future__ import annotations

from dataclasses import dataclass

from kagi.passwords import Argon2Parameters
from services.otp_service.domain import ProvisionedSeed, Token, VerificationState
from services.otp_service.domain.totp import hotp, time_step

USAGE_START_PASSWORD = "73914026"
# Production uses OWASP's 19 MiB; unit tests only need argon2id's behaviour, not its cost.
FAST_ARGON2 = Argon2Parameters(time_cost=1, memory_cost_kib=256, parallelism=1)


@dataclass(frozen=True)
class Provisioned:
    """A token taken through steps 7-9 (or only 7-8), with the raw seed for computing codes."""

    token: Token
    state: VerificationState
    seed: ProvisionedSeed
    key: bytes


def code_at(p: Provisioned, when: float) -> str:
    """Return the code the app shows at `when`."""
    params = p.token.params
    return hotp(p.key, time_step(when, params.period), digits=params.digits, algorithm=params.algorithm)


def wrong_code(p: Provisioned, when: float) -> str:
    """Return a well-formed code that matches no step within twelve steps of `when`."""
    params = p.token.params
    current = time_step(when, params.period)
    near = {hotp(p.key, current + d, digits=params.digits, algorithm=params.algorithm) for d in range(-12, 13)}
    return next(c for c in (f"{n:0{params.digits}d}" for n in range(10**params.digits)) if c not in near)
