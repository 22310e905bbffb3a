"""Token creation (step 7) and activation (step 8): seed delivered once, failures counted, expiry, same answers."""

from __future__ import annotations

import base64
import dataclasses
import re

import pytest

from kagi.clock import FakeClock
from kagi.errors import ErrorKind
from kagi.passwords import PasswordHasher, Pepper
from services.otp_service.domain import (
    ActivationExpired,
    ActivationFailed,
    ActivationRequest,
    ActivationResult,
    Algorithm,
    ConsentRequired,
    IllegalTransition,
    InvalidTokenField,
    InvalidUsageStartPassword,
    OtpPolicy,
    SeedVault,
    Token,
    TokenEvent,
    TokenLocked,
    TokenState,
    TotpParameters,
    VerificationState,
    activate,
    change_lifecycle,
    create_token,
)
from services.otp_service.domain.ids import CROCKFORD_ALPHABET
from tests.unit.otp.otp_support import FAST_ARGON2, USAGE_START_PASSWORD


class CountingHasher(PasswordHasher):
    """Counts real and dummy verifications, to show unknown IDs cost the same work."""

    def __init__(self, pepper: Pepper) -> None:
        super().__init__([pepper], FAST_ARGON2)
        self.calls: list[str] = []

    def verify(self, stored: str, password: str) -> bool:
        """Record the call and verify."""
        self.calls.append("verify")
        return super().verify(stored, password)


def request_for(token: Token, password: str = USAGE_START_PASSWORD, **overrides: object) -> ActivationRequest:
    """The app's step-8 request for `token`."""
    fields: dict[str, object] = {
        "service_id": token.service_id,
        "user_id": token.app_user_id,
        "usage_start_password": password,
        "consent": True,
    }
    fields.update(overrides)
    return ActivationRequest.parse(**fields)


def run(
    token: Token | None,
    request: ActivationRequest,
    clock: FakeClock,
    policy: OtpPolicy,
    hasher: PasswordHasher,
    vault: SeedVault,
) -> ActivationResult:
    """Activate at the clock's time."""
    return activate(token, request, now=clock.now(), policy=policy, hasher=hasher, vault=vault)


def test_create_token_makes_a_pending_token(
    clock: FakeClock, hasher: PasswordHasher, policy: OtpPolicy, pending: Token
) -> None:
    """A new token is PENDING_ACTIVATION for 24 h, unambiguous typed IDs and a hashed password."""
    assert pending.state is TokenState.PENDING_ACTIVATION
    assert pending.activation_expires_at == clock.now() + 24 * 3600
    assert re.fullmatch(f"[{CROCKFORD_ALPHABET}]{{10}}", pending.service_id)
    assert re.fullmatch(f"[{CROCKFORD_ALPHABET}]{{8}}", pending.app_user_id)
    assert pending.usage_start_password_hash is not None
    assert hasher.verify(pending.usage_start_password_hash, USAGE_START_PASSWORD)
    assert pending.sealed_seed is None
    other = create_token(
        owner_id="user-0001",
        email="taro@example.jp",
        usage_start_password=USAGE_START_PASSWORD,
        now=clock.now(),
        policy=policy,
        hasher=hasher,
    )
    assert {other.token.token_id, other.token.service_id} & {pending.token_id, pending.service_id} == set()
    assert other.verification_state == VerificationState()


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        ({"usage_start_password": "123"}, InvalidUsageStartPassword, "usage_start_password"),
        ({"usage_start_password": "123456789"}, InvalidUsageStartPassword, "usage_start_password"),
        ({"usage_start_password": "12ab"}, InvalidUsageStartPassword, "usage_start_password"),
        ({"usage_start_password": "１２３４"}, InvalidUsageStartPassword, "usage_start_password"),
        ({"email": "not-an-address"}, InvalidTokenField, "email"),
        ({"email": "taro@example.jp\r\nBcc: x@y.z"}, InvalidTokenField, "email"),
        ({"owner_id": ""}, InvalidTokenField, "owner_id"),
    ],
)
def test_create_token_refuses_bad_input(
    clock: FakeClock,
    hasher: PasswordHasher,
    policy: OtpPolicy,
    overrides: dict[str, str],
    error: type[Exception],
    field: str,
) -> None:
    """Step 7's inputs are validated first: the error is INVALID_ARGUMENT and names the field."""
    kwargs = {"owner_id": "user-0001", "email": "taro@example.jp", "usage_start_password": "2468"} | overrides
    with pytest.raises(error) as caught:
        create_token(
            owner_id=kwargs["owner_id"],
            email=kwargs["email"],
            usage_start_password=kwargs["usage_start_password"],
            now=clock.now(),
            policy=policy,
            hasher=hasher,
        )
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert field in caught.value.fields  # type: ignore[attr-defined]


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_activation_delivers_the_seed_once(
    clock: FakeClock,
    hasher: PasswordHasher,
    vault: SeedVault,
    policy: OtpPolicy,
    algorithm: Algorithm,
) -> None:
    """Activation returns a 160/256/512-bit seed as base32 and URI and seals that seed; a second call gets none."""
    new = create_token(
        owner_id="u",
        email="taro@example.jp",
        usage_start_password="2468",
        now=clock.now(),
        policy=policy,
        hasher=hasher,
        params=TotpParameters(algorithm=algorithm, digits=8),
    )
    first = run(new.token, request_for(new.token, "2468"), clock, policy, hasher, vault)
    seed = first.unwrap()
    assert first.token is not None
    assert first.token.state is TokenState.ACTIVATED
    raw = base64.b32decode(seed.secret_base32 + "=" * (-len(seed.secret_base32) % 8))
    assert len(raw) * 8 == {Algorithm.SHA1: 160, Algorithm.SHA256: 256, Algorithm.SHA512: 512}[algorithm]
    assert first.token.sealed_seed is not None
    assert vault.open(first.token.token_id, first.token.sealed_seed).value == raw
    assert seed.secret_base32 in seed.key_uri
    assert seed.secret_base32 not in repr(seed)

    second = run(first.token, request_for(new.token, "2468"), clock, policy, hasher, vault)
    assert second.seed is None
    assert second.token is None
    assert isinstance(second.error, IllegalTransition)
    assert "ACTIVATED" in second.error.message
    with pytest.raises(IllegalTransition):
        second.unwrap()


def test_each_activation_draws_a_new_seed(
    clock: FakeClock, hasher: PasswordHasher, vault: SeedVault, policy: OtpPolicy, pending: Token
) -> None:
    """Two racing activations of one token draw different seeds; only the write that lands delivers its seed."""
    a = run(pending, request_for(pending), clock, policy, hasher, vault).unwrap()
    b = run(pending, request_for(pending), clock, policy, hasher, vault).unwrap()
    assert a.secret_base32 != b.secret_base32


def test_wrong_passwords_are_counted_and_the_fifth_locks(
    clock: FakeClock, hasher: PasswordHasher, vault: SeedVault, policy: OtpPolicy, pending: Token
) -> None:
    """Wrong passwords 1-4 are counted as ACTIVATION_FAILED; the 5th locks; then even the right one is refused."""
    token = pending
    for n in range(1, 6):
        result = run(token, request_for(token, "0000"), clock, policy, hasher, vault)
        assert result.token is not None
        token = result.token
        assert token.activation_failures == n
        if n < 5:
            assert isinstance(result.error, ActivationFailed)
    assert isinstance(result.error, TokenLocked)
    assert result.error.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert token.state is TokenState.ACTIVATION_LOCKED

    refused = run(token, request_for(token), clock, policy, hasher, vault)
    assert isinstance(refused.error, TokenLocked)
    assert refused.token is None

    clock.advance(2 * 24 * 3600)
    unlocked = change_lifecycle(token, VerificationState(), TokenEvent.UNLOCK, now=clock.now(), policy=policy)
    assert unlocked.token.state is TokenState.PENDING_ACTIVATION
    assert unlocked.token.activation_failures == 0
    assert unlocked.token.activation_expires_at == clock.now() + policy.activation_ttl
    assert run(unlocked.token, request_for(token), clock, policy, hasher, vault).seed is not None


def test_unknown_ids_answer_exactly_like_a_wrong_password(
    clock: FakeClock, pepper: Pepper, vault: SeedVault, policy: OtpPolicy, pending: Token
) -> None:
    """Unknown service ID, wrong user ID and wrong password: same error class, reason and message, same argon2 work."""
    hasher = CountingHasher(pepper)
    other_user = "22222222" if pending.app_user_id != "22222222" else "33333333"
    cases = [
        (None, request_for(pending)),
        (pending, request_for(pending, user_id=other_user)),
        (pending, request_for(pending, "0000")),
    ]
    answers = []
    for token, request in cases:
        hasher.calls.clear()
        result = run(token, request, clock, policy, hasher, vault)
        assert isinstance(result.error, ActivationFailed)
        assert hasher.calls == ["verify"]
        answers.append((type(result.error), result.error.reason, result.error.message, result.error.fields))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][1] == "ACTIVATION_FAILED"


def test_wrong_user_id_is_not_counted(
    clock: FakeClock, hasher: PasswordHasher, vault: SeedVault, policy: OtpPolicy, pending: Token
) -> None:
    """Someone with only the service ID cannot lock the token: a wrong user ID writes nothing."""
    other_user = "22222222" if pending.app_user_id != "22222222" else "33333333"
    for _ in range(10):
        assert run(pending, request_for(pending, user_id=other_user), clock, policy, hasher, vault).token is None


@pytest.mark.parametrize("consent", [False, None, "true", 1])
def test_consent_must_be_true(pending: Token, consent: object) -> None:
    """Anything but consent=True is INVALID_ARGUMENT with reason CONSENT_REQUIRED on field "consent"."""
    with pytest.raises(ConsentRequired) as caught:
        request_for(pending, consent=consent)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "consent" in caught.value.fields


def test_activation_expires_after_the_configured_time(
    clock: FakeClock, hasher: PasswordHasher, vault: SeedVault, pending: Token
) -> None:
    """Default 24 h: a second before is fine; at the deadline the answer is ACTIVATION_EXPIRED and the token EXPIRED."""
    policy = OtpPolicy()
    clock.advance(24 * 3600 - 1)
    assert run(pending, request_for(pending), clock, policy, hasher, vault).seed is not None
    clock.advance(1)
    expired = run(pending, request_for(pending), clock, policy, hasher, vault)
    assert isinstance(expired.error, ActivationExpired)
    assert expired.token is not None
    assert expired.token.state is TokenState.EXPIRED
    assert expired.token.usage_start_password_hash is None
    again = run(expired.token, request_for(pending), clock, policy, hasher, vault)
    assert isinstance(again.error, ActivationExpired)
    assert again.token is None


def test_activation_ttl_is_configurable(clock: FakeClock, hasher: PasswordHasher) -> None:
    """A policy with a one-hour activation period stamps that deadline on new tokens."""
    policy = OtpPolicy(activation_ttl=3600)
    token = create_token(
        owner_id="u", email="a@b.jp", usage_start_password="2468", now=clock.now(), policy=policy, hasher=hasher
    ).token
    assert token.activation_expires_at == clock.now() + 3600


def test_typed_ids_are_read_leniently(
    clock: FakeClock, hasher: PasswordHasher, vault: SeedVault, policy: OtpPolicy, pending: Token
) -> None:
    """IDs typed in lower case, with hyphens and spaces, and O/I/L for 0/1 still activate the token."""

    def sloppy(value: str) -> str:
        text = value.lower().replace("0", "o").replace("1", "l")
        return f"{text[:4]}-{text[4:]} "

    request = request_for(pending, service_id=sloppy(pending.service_id), user_id=sloppy(pending.app_user_id))
    assert run(pending, request, clock, policy, hasher, vault).seed is not None


def test_activation_request_hides_the_password(pending: Token) -> None:
    """The parsed request's repr and field dump shown by debuggers never print the usage-start password."""
    request = request_for(pending)
    assert USAGE_START_PASSWORD not in repr(request)
    assert "usage_start_password" not in repr(request)
    assert dataclasses.fields(request)[2].repr is False
