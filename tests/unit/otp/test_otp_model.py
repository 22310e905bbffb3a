"""The token state machine (every state x event pair), lifecycle bookkeeping, and the token record's codec."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from kagi.clock import FakeClock
from kagi.errors import ErrorKind
from services.otp_service.domain import (
    TRANSITIONS,
    Algorithm,
    CorruptRecord,
    IllegalTransition,
    OtpPolicy,
    SealedSeed,
    Token,
    TokenEvent,
    TokenState,
    VerificationState,
    change_lifecycle,
    transition,
)
from tests.unit.otp.otp_support import USAGE_START_PASSWORD, Provisioned

S, E = TokenState, TokenEvent

# Written out independently of the implementation's table: the test is the specification.
EXPECTED = {
    (S.PENDING_ACTIVATION, E.ACTIVATE): S.ACTIVATED,
    (S.PENDING_ACTIVATION, E.LOCK): S.ACTIVATION_LOCKED,
    (S.PENDING_ACTIVATION, E.EXPIRE): S.EXPIRED,
    (S.PENDING_ACTIVATION, E.REVOKE): S.REVOKED,
    (S.ACTIVATED, E.REGISTER): S.REGISTERED,
    (S.ACTIVATED, E.REVOKE): S.REVOKED,
    (S.REGISTERED, E.VERIFY): S.ACTIVE,
    (S.REGISTERED, E.LOCK): S.LOCKED,
    (S.REGISTERED, E.DISABLE): S.DISABLED,
    (S.REGISTERED, E.REVOKE): S.REVOKED,
    (S.ACTIVE, E.VERIFY): S.ACTIVE,
    (S.ACTIVE, E.LOCK): S.LOCKED,
    (S.ACTIVE, E.DISABLE): S.DISABLED,
    (S.ACTIVE, E.REVOKE): S.REVOKED,
    (S.ACTIVATION_LOCKED, E.UNLOCK): S.PENDING_ACTIVATION,
    (S.ACTIVATION_LOCKED, E.REVOKE): S.REVOKED,
    (S.LOCKED, E.UNLOCK): S.REGISTERED,
    (S.LOCKED, E.DISABLE): S.DISABLED,
    (S.LOCKED, E.REVOKE): S.REVOKED,
    (S.DISABLED, E.ENABLE): S.REGISTERED,
    (S.DISABLED, E.REVOKE): S.REVOKED,
    (S.EXPIRED, E.REVOKE): S.REVOKED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(TokenState, TokenEvent)))
def test_every_state_event_pair(state: TokenState, event: TokenEvent) -> None:
    """Each (state, event) pair either moves where the specification says or raises ILLEGAL_TRANSITION naming it."""
    if (state, event) in EXPECTED:
        assert transition(state, event) is EXPECTED[(state, event)]
        return
    with pytest.raises(IllegalTransition) as caught:
        transition(state, event)
    err = caught.value
    assert err.kind is ErrorKind.FAILED_PRECONDITION
    assert err.reason == "ILLEGAL_TRANSITION"
    assert state.value in err.message
    assert err.metadata == {"state": state.value, "event": event.value}


def test_table_is_exactly_the_specification() -> None:
    """The implementation's table has no row the specification lacks, and REVOKED is final."""
    assert dict(TRANSITIONS) == EXPECTED
    assert not any(s is S.REVOKED for s, _ in TRANSITIONS)


def test_happy_path_bookkeeping(clock: FakeClock, provision: Callable[..., Provisioned]) -> None:
    """Activation drops the password hash and seals a seed; REGISTER and the first VERIFY stamp their times."""
    p = provision(register=False)
    assert p.token.state is S.ACTIVATED
    assert p.token.usage_start_password_hash is None
    assert p.token.sealed_seed is not None
    assert p.token.activated_at == clock.now()
    clock.advance(5)
    registered = p.token.apply(E.REGISTER, now=clock.now())
    assert registered.registered_at == clock.now()
    clock.advance(5)
    active = registered.apply(E.VERIFY, now=clock.now())
    assert active.state is S.ACTIVE
    assert active.first_verified_at == clock.now()
    assert active.apply(E.VERIFY, now=clock.now() + 60).first_verified_at == clock.now()


def test_revoke_erases_the_sealed_seed(clock: FakeClock, provision: Callable[..., Provisioned]) -> None:
    """A revoked token keeps no sealed seed, so revocation cannot be undone by editing the state."""
    revoked = provision().token.apply(E.REVOKE, now=clock.now())
    assert revoked.state is S.REVOKED
    assert revoked.sealed_seed is None


def test_activate_needs_the_sealed_seed(clock: FakeClock, provision: Callable[..., Provisioned]) -> None:
    """Token.apply refuses ACTIVATE: only Token.activated, which takes the sealed seed, performs it."""
    with pytest.raises(ValueError, match="activated"):
        provision().token.apply(E.ACTIVATE, now=clock.now())


def test_lifecycle_changes_rewrite_the_verification_record(
    clock: FakeClock, provision: Callable[..., Provisioned], policy: OtpPolicy
) -> None:
    """DISABLE sets the lock flag and ENABLE clears it with the counters, keeping last_step."""
    p = provision()
    state = VerificationState(last_step=42, failures=2)
    disabled = change_lifecycle(p.token, state, E.DISABLE, now=clock.now(), policy=policy)
    assert disabled.token.state is S.DISABLED
    assert disabled.verification_state.locked
    enabled = change_lifecycle(disabled.token, disabled.verification_state, E.ENABLE, now=clock.now(), policy=policy)
    assert enabled.token.state is S.REGISTERED
    assert enabled.verification_state == VerificationState(last_step=42)


def test_token_round_trips_through_bytes(clock: FakeClock, provision: Callable[..., Provisioned]) -> None:
    """A token at every stage survives to_bytes/from_bytes unchanged, with schema version 1 in the JSON."""
    p = provision()
    for token in (p.token, p.token.apply(E.VERIFY, now=clock.now()), p.token.apply(E.REVOKE, now=clock.now())):
        data = token.to_bytes()
        assert b'"schema":1' in data
        assert Token.from_bytes(data) == token


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"schema":1', b'"schema":2'),
        (b'"state":"REGISTERED"', b'"state":"HAPPY"'),
        (b'"algorithm":"SHA1"', b'"algorithm":"MD5"'),
        (b'"digits":6', b'"digits":"6"'),
        (b'"digits":6', b'"digits":4'),
        (b'"kind":"otp.token"', b'"kind":"otp.other"'),
        (b'"sealed_seed":"v1:', b'"sealed_seed":"v9:'),
    ],
)
def test_corrupt_token_bytes_are_refused(provision: Callable[..., Provisioned], old: bytes, new: bytes) -> None:
    """Unknown schema versions, enum values, types or sealed-seed formats raise CorruptRecord, never a crash."""
    data = provision().token.to_bytes()
    assert old in data
    with pytest.raises(CorruptRecord):
        Token.from_bytes(data.replace(old, new))


def test_no_secret_in_any_repr_or_serialised_record(
    clock: FakeClock, provision: Callable[..., Provisioned], pending: Token
) -> None:
    """The usage-start password is in no repr or stored bytes; seed and e-mail stay out of reprs too."""
    p = provision()
    texts = [
        repr(pending),
        pending.to_bytes().decode(),
        repr(p.token),
        p.token.to_bytes().decode(),
        repr(p.seed),
        repr(p.state),
        p.state.to_bytes().decode(),
        repr(p.token.sealed_seed),
        repr(p.token.info(clock.now())),
    ]
    for text in texts:
        assert USAGE_START_PASSWORD not in text
        assert p.seed.secret_base32 not in text
    assert pending.usage_start_password_hash is not None
    assert pending.usage_start_password_hash not in repr(pending)
    assert "taro@example.jp" not in repr(pending)


def test_public_info(clock: FakeClock, provision: Callable[..., Provisioned]) -> None:
    """Info gives state, algorithm, digits, period and the seconds left in the current step, nothing secret."""
    p = provision()
    clock.advance(17.5)
    info = p.token.info(clock.now())
    assert (info.state, info.algorithm, info.digits, info.period) == (S.REGISTERED, Algorithm.SHA1, 6, 60)
    assert info.seconds_remaining == 43


def test_sealed_seed_text_round_trips(provision: Callable[..., Provisioned]) -> None:
    """A sealed seed's storable text carries its key id and parses back to the same value."""
    sealed = provision().token.sealed_seed
    assert sealed is not None
    text = sealed.to_text()
    assert text.startswith(f"v1:{sealed.key_id}:")
    assert SealedSeed.from_text(text) == sealed
