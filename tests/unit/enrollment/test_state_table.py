"""The enrollment state machine: each step is allowed only from its predecessor's state, and every other
(state, step) pair is refused naming the state and the expected step."""

from __future__ import annotations

import itertools

import pytest

from kagi.errors import FailedPrecondition
from services.enrollment_service.domain.records import Enrollment
from services.enrollment_service.domain.states import (
    RETRY_TRANSITIONS,
    STEP_TRANSITIONS,
    Event,
    State,
    Step,
    WrongStep,
    next_step,
    transition,
)

ORDER = [
    State.NOTICE_VERIFIED,
    State.PROFILE_SUBMITTED,
    State.REGISTERED,
    State.CERTIFICATE_ISSUED,
    State.CERTIFICATE_LOGGED_IN,
    State.PASSWORD_VERIFIED,
    State.TOKEN_REQUESTED,
    State.APP_ACTIVATED,
    State.APP_REGISTERED,
    State.COMPLETED,
]


def test_the_ten_steps_walk_the_table_in_order() -> None:
    """From NOTICE_VERIFIED, steps 2..10 in order reach COMPLETED through the design's states."""
    state = State.NOTICE_VERIFIED
    for step_number, expected in zip(range(2, 11), ORDER[1:], strict=True):
        assert next_step(state) == Step(step_number)
        state = transition(state, Step(step_number))
        assert state is expected
    assert next_step(state) is None


@pytest.mark.parametrize(("state", "step"), list(itertools.product(State, Step)))
def test_every_state_step_pair(state: State, step: Step) -> None:
    """Every (state, step) pair either is in the table (the forward steps, and step 7 again before the app is
    registered) or is refused with FAILED_PRECONDITION naming the state."""
    table = {**STEP_TRANSITIONS, **RETRY_TRANSITIONS}
    if (state, step) in table:
        assert transition(state, step) is table[(state, step)]
        return
    with pytest.raises(FailedPrecondition) as failure:
        transition(state, step)
    assert state.value in failure.value.message
    assert failure.value.metadata["state"] == state.value
    expected = next_step(state)
    if expected is not None:
        assert isinstance(failure.value, WrongStep)
        assert failure.value.metadata["expected_step"] == expected.name


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_state_event_pair(state: State, event: Event) -> None:
    """Expiry, lockout and cancellation end enrollments in progress; finished ones refuse them."""
    in_progress = next_step(state) is not None
    if in_progress or (state is State.LOCKED and event is Event.CANCEL):
        target = transition(state, event)
        assert target is {Event.EXPIRE: State.EXPIRED, Event.LOCK: State.LOCKED, Event.CANCEL: State.CANCELLED}[event]
    else:
        with pytest.raises(FailedPrecondition):
            transition(state, event)


def _enrollment(state: State, now: float = 1000.0) -> Enrollment:
    return Enrollment("e1", "a1", state, now, now, now + 3600, session_digest="d")


def test_idle_enrollment_expires() -> None:
    """An enrollment in progress past its idle deadline is EXPIRED and refuses its next step."""
    enrollment = _enrollment(State.REGISTERED)
    assert enrollment.current(4599.0).state is State.REGISTERED
    assert enrollment.current(4600.0).state is State.EXPIRED
    with pytest.raises(FailedPrecondition):
        enrollment.advanced(Step.ISSUE_CERTIFICATE, 4600.0, 3600)


def test_each_step_extends_the_idle_deadline() -> None:
    """Taking a step moves the deadline to now + idle time."""
    advanced = _enrollment(State.REGISTERED).advanced(Step.ISSUE_CERTIFICATE, 2000.0, 3600, certificate_serial="ab")
    assert advanced.state is State.CERTIFICATE_ISSUED
    assert advanced.expires_at == 5600.0
    assert advanced.certificate_serial == "ab"


def test_five_wrong_passwords_lock_and_unlock_resumes() -> None:
    """The fifth wrong login password locks the enrollment; an operator's unlock resumes where it stood."""
    enrollment = _enrollment(State.CERTIFICATE_LOGGED_IN)
    for _ in range(4):
        enrollment = enrollment.with_password_failure(1001.0)
        assert enrollment.state is State.CERTIFICATE_LOGGED_IN
    enrollment = enrollment.with_password_failure(1002.0)
    assert enrollment.state is State.LOCKED
    with pytest.raises(FailedPrecondition):
        enrollment.advanced(Step.PASSWORD_LOGIN, 1003.0, 3600)
    resumed = enrollment.unlocked(1004.0, 3600)
    assert resumed.state is State.CERTIFICATE_LOGGED_IN
    assert resumed.password_failures == 0
