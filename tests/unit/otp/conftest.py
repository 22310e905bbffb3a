"""Fixtures for the OTP domain's unit tests: a fake clock, a cheap password hasher, a vault, provisioned tokens."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from kagi.clock import FakeClock
from kagi.passwords import PasswordHasher, Pepper
from services.otp_service.domain import (
    ActivationRequest,
    KeyEncryptionKey,
    OtpPolicy,
    SeedVault,
    Token,
    TokenEvent,
    TotpParameters,
    activate,
    create_token,
)
from tests.unit.otp.otp_support import FAST_ARGON2, USAGE_START_PASSWORD, Provisioned


@pytest.fixture
def clock() -> FakeClock:
    """A clock at 2027-01-15 08:00:00 UTC, exactly the start of a 60-second step."""
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def pepper() -> Pepper:
    """A fixed 32-byte pepper."""
    return Pepper("p1", b"P" * 32)


@pytest.fixture
def hasher(pepper: Pepper) -> PasswordHasher:
    """A peppered argon2id hasher with test-speed parameters."""
    return PasswordHasher([pepper], FAST_ARGON2)


@pytest.fixture
def kek() -> KeyEncryptionKey:
    """The current key-encryption key."""
    return KeyEncryptionKey("kek-2027", bytes(range(32)))


@pytest.fixture
def vault(kek: KeyEncryptionKey) -> SeedVault:
    """A vault sealing under `kek`."""
    return SeedVault(kek)


@pytest.fixture
def policy() -> OtpPolicy:
    """The default policy with a recognisable issuer."""
    return OtpPolicy(issuer="Kagi Shinkumi")


@pytest.fixture
def provision(
    clock: FakeClock, hasher: PasswordHasher, vault: SeedVault, policy: OtpPolicy
) -> Callable[..., Provisioned]:
    """A factory: create and activate a token (and register it unless register=False)."""

    def make(params: TotpParameters | None = None, *, register: bool = True) -> Provisioned:
        new = create_token(
            owner_id="user-0001",
            email="taro@example.jp",
            usage_start_password=USAGE_START_PASSWORD,
            now=clock.now(),
            policy=policy,
            hasher=hasher,
            params=params,
        )
        request = ActivationRequest.parse(
            service_id=new.token.service_id,
            user_id=new.token.app_user_id,
            usage_start_password=USAGE_START_PASSWORD,
            consent=True,
        )
        result = activate(new.token, request, now=clock.now(), policy=policy, hasher=hasher, vault=vault)
        seed = result.unwrap()
        assert result.token is not None
        token = result.token.apply(TokenEvent.REGISTER, now=clock.now()) if register else result.token
        key = base64.b32decode(seed.secret_base32 + "=" * (-len(seed.secret_base32) % 8))
        return Provisioned(token=token, state=new.verification_state, seed=seed, key=key)

    return make


@pytest.fixture
def pending(clock: FakeClock, hasher: PasswordHasher, policy: OtpPolicy) -> Token:
    """A freshly created token waiting for activation (step 7 done)."""
    return create_token(
        owner_id="user-0001",
        email="taro@example.jp",
        usage_start_password=USAGE_START_PASSWORD,
        now=clock.now(),
        policy=policy,
        hasher=hasher,
    ).token
