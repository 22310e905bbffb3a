"""Interoperability: codes from OATH Toolkit's `oathtool`, fed the seed activation delivered, verify in the domain.

oathtool is an independent RFC 6238 implementation; its `--now` option pins the time it computes for, so the
test runs against a FakeClock at the same instant and never waits for a real 60-second step.
"""

from __future__ import annotations

import pytest

from kagi.clock import FakeClock
from kagi.passwords import Argon2Parameters, PasswordHasher, Pepper
from services.otp_service.domain import (
    ActivationRequest,
    Algorithm,
    KeyEncryptionKey,
    OtpPolicy,
    ProvisionedSeed,
    SeedVault,
    Token,
    TokenEvent,
    TotpParameters,
    Verdict,
    VerificationState,
    activate,
    create_token,
    verify_code,
)
from tests.support.tools import run, tool

NOW = 1_800_000_030.0  # the middle of a 60-second step
POLICY = OtpPolicy(issuer="Kagi Shinkumi", rate_limit_failures=100)
VAULT = SeedVault(KeyEncryptionKey("kek-test", bytes(range(32))))
HASHER = PasswordHasher([Pepper("p", b"P" * 32)], Argon2Parameters(time_cost=1, memory_cost_kib=256))


def provision(params: TotpParameters, clock: FakeClock) -> tuple[Token, VerificationState, ProvisionedSeed]:
    """Take a token through creation, activation and registration; return it with the delivered seed."""
    new = create_token(
        owner_id="user-0001",
        email="taro@example.jp",
        usage_start_password="2468",
        now=clock.now(),
        policy=POLICY,
        hasher=HASHER,
        params=params,
    )
    request = ActivationRequest.parse(
        service_id=new.token.service_id, user_id=new.token.app_user_id, usage_start_password="2468", consent=True
    )
    result = activate(new.token, request, now=clock.now(), policy=POLICY, hasher=HASHER, vault=VAULT)
    seed = result.unwrap()
    assert result.token is not None
    return result.token.apply(TokenEvent.REGISTER, now=clock.now()), new.verification_state, seed


async def oathtool(params: TotpParameters, secret_base32: str, when: float) -> str:
    """The code oathtool computes for the base32 secret at POSIX time `when`."""
    argv = [
        tool("oathtool"),
        f"--totp={params.algorithm.value}",
        "-s",
        f"{params.period}",
        "-d",
        str(params.digits),
        "-b",
        secret_base32,
        "-N",
        f"@{int(when)}",
    ]
    return (await run(argv)).strip()


@pytest.mark.parametrize(
    "params",
    [
        TotpParameters(algorithm=Algorithm.SHA1, digits=6),
        TotpParameters(algorithm=Algorithm.SHA256, digits=8),
        TotpParameters(algorithm=Algorithm.SHA512, digits=8),
    ],
    ids=["SHA1-6", "SHA256-8", "SHA512-8"],
)
async def test_oathtool_codes_verify_within_the_window_only(params: TotpParameters) -> None:
    """oathtool's codes for now and the step before are accepted; the next step's code is refused as WRONG_CODE,
    a code three steps back as STEP_EXPIRED."""
    clock = FakeClock(NOW)
    token, state, seed = provision(params, clock)
    assert seed.secret_base32 in seed.key_uri

    for offset in (-60, 0):
        code = await oathtool(params, seed.secret_base32, NOW + offset)
        assert len(code) == params.digits
        outcome = verify_code(token, state, code, now=clock.now(), policy=POLICY, vault=VAULT)
        assert outcome.result.verdict is Verdict.ACCEPTED, f"offset {offset}"

    for offset, verdict in ((-180, Verdict.STEP_EXPIRED), (60, Verdict.WRONG_CODE), (180, Verdict.WRONG_CODE)):
        code = await oathtool(params, seed.secret_base32, NOW + offset)
        outcome = verify_code(token, state, code, now=clock.now(), policy=POLICY, vault=VAULT)
        assert outcome.result.verdict is verdict, f"offset {offset}"


async def test_oathtool_code_is_good_once() -> None:
    """The same oathtool code presented twice is accepted, then REPLAYED."""
    clock = FakeClock(NOW)
    params = TotpParameters()
    token, state, seed = provision(params, clock)
    code = await oathtool(params, seed.secret_base32, NOW)
    first = verify_code(token, state, code, now=clock.now(), policy=POLICY, vault=VAULT)
    assert first.result.ok
    assert first.state is not None
    assert first.token is not None
    clock.advance(15)
    again = verify_code(first.token, first.state, code, now=clock.now(), policy=POLICY, vault=VAULT)
    assert again.result.verdict is Verdict.REPLAYED
