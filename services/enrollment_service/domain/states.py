"""The enrollment state machine: the ten steps and the side events, declared as one transition table."""

from __future__ import annotations

from enum import Enum

from kagi.errors import FailedPrecondition


class State(Enum):
    """Where an enrollment stands (DESIGN.md section 2); the values match the API's names."""

    NOTICE_VERIFIED = "NOTICE_VERIFIED"
    PROFILE_SUBMITTED = "PROFILE_SUBMITTED"
    REGISTERED = "REGISTERED"
    CERTIFICATE_ISSUED = "CERTIFICATE_ISSUED"
    CERTIFICATE_LOGGED_IN = "CERTIFICATE_LOGGED_IN"
    PASSWORD_VERIFIED = "PASSWORD_VERIFIED"
    TOKEN_REQUESTED = "TOKEN_REQUESTED"
    APP_ACTIVATED = "APP_ACTIVATED"
    APP_REGISTERED = "APP_REGISTERED"
    COMPLETED = "COMPLETED"
    EXPIRED = "EXPIRED"
    LOCKED = "LOCKED"
    CANCELLED = "CANCELLED"


class Step(Enum):
    """One of the ten steps; the number is the step's place in the bank's procedure table."""

    VERIFY_NOTICE = 1
    SUBMIT_PROFILE = 2
    CONFIRM_REGISTRATION = 3
    ISSUE_CERTIFICATE = 4
    CERTIFICATE_LOGIN = 5
    PASSWORD_LOGIN = 6
    REQUEST_TOKEN = 7
    ACTIVATE_APP = 8
    REGISTER_APP = 9
    VERIFY_FIRST_CODE = 10


class Kind(Enum):
    """What an enrollment is for: the initial setup, or a new certificate after a lost PC (reissue)."""

    SETUP = "SETUP"
    REISSUE = "REISSUE"


class Event(Enum):
    """A side transition that is not a step: expiry, lockout or cancellation."""

    EXPIRE = "EXPIRE"
    LOCK = "LOCK"
    CANCEL = "CANCEL"


# Step 1 creates the enrollment in NOTICE_VERIFIED, so it has no "from" state here.
STEP_TRANSITIONS: dict[tuple[State, Step], State] = {
    (State.NOTICE_VERIFIED, Step.SUBMIT_PROFILE): State.PROFILE_SUBMITTED,
    (State.PROFILE_SUBMITTED, Step.CONFIRM_REGISTRATION): State.REGISTERED,
    (State.REGISTERED, Step.ISSUE_CERTIFICATE): State.CERTIFICATE_ISSUED,
    (State.CERTIFICATE_ISSUED, Step.CERTIFICATE_LOGIN): State.CERTIFICATE_LOGGED_IN,
    (State.CERTIFICATE_LOGGED_IN, Step.PASSWORD_LOGIN): State.PASSWORD_VERIFIED,
    (State.PASSWORD_VERIFIED, Step.REQUEST_TOKEN): State.TOKEN_REQUESTED,
    (State.TOKEN_REQUESTED, Step.ACTIVATE_APP): State.APP_ACTIVATED,
    (State.APP_ACTIVATED, Step.REGISTER_APP): State.APP_REGISTERED,
    (State.APP_REGISTERED, Step.VERIFY_FIRST_CODE): State.COMPLETED,
}

# A reissue after a lost PC keeps the profile, the registration and the token: step 1 (the reissue notice),
# then 4, 5 and 6, and the login password of step 6 completes it with the same login ID.
REISSUE_TRANSITIONS: dict[tuple[State, Step], State] = {
    (State.NOTICE_VERIFIED, Step.ISSUE_CERTIFICATE): State.CERTIFICATE_ISSUED,
    (State.CERTIFICATE_ISSUED, Step.CERTIFICATE_LOGIN): State.CERTIFICATE_LOGGED_IN,
    (State.CERTIFICATE_LOGGED_IN, Step.PASSWORD_LOGIN): State.COMPLETED,
}
# Step 7 again, before the app is registered: a new token replaces the pending one (the app lost the answer
# of step 8, whose seed is never shown twice, or the mail went astray). Not a forward step, so it never shows as
# the step expected next.
RETRY_TRANSITIONS: dict[tuple[State, Step], State] = {
    (State.TOKEN_REQUESTED, Step.REQUEST_TOKEN): State.TOKEN_REQUESTED,
    (State.APP_ACTIVATED, Step.REQUEST_TOKEN): State.TOKEN_REQUESTED,
}
TRANSITIONS: dict[Kind, dict[tuple[State, Step], State]] = {
    Kind.SETUP: {**STEP_TRANSITIONS, **RETRY_TRANSITIONS},
    Kind.REISSUE: REISSUE_TRANSITIONS,
}

IN_PROGRESS = frozenset(
    {
        State.NOTICE_VERIFIED,
        State.PROFILE_SUBMITTED,
        State.REGISTERED,
        State.CERTIFICATE_ISSUED,
        State.CERTIFICATE_LOGGED_IN,
        State.PASSWORD_VERIFIED,
        State.TOKEN_REQUESTED,
        State.APP_ACTIVATED,
        State.APP_REGISTERED,
    }
)

# Side events: expiry, lockout and cancellation end any enrollment in progress; only LOCKED can be undone,
# by an operator, and it resumes where it stood (kept in the record as `locked_from`).
EVENT_TRANSITIONS: dict[tuple[State, Event], State] = {
    **{(state, Event.EXPIRE): State.EXPIRED for state in IN_PROGRESS},
    **{(state, Event.LOCK): State.LOCKED for state in IN_PROGRESS},
    **{(state, Event.CANCEL): State.CANCELLED for state in IN_PROGRESS},
    (State.LOCKED, Event.CANCEL): State.CANCELLED,
}

NEXT_STEP: dict[Kind, dict[State, Step]] = {
    Kind.SETUP: dict(STEP_TRANSITIONS.keys()),
    Kind.REISSUE: dict(REISSUE_TRANSITIONS.keys()),
}


class WrongStep(FailedPrecondition):
    """The step is not the one the enrollment's state allows; names both."""

    reason = "WRONG_STEP"


class EnrollmentClosed(FailedPrecondition):
    """The enrollment is completed, expired, locked or cancelled and takes no more steps."""

    reason = "ENROLLMENT_CLOSED"


def next_step(state: State, kind: Kind = Kind.SETUP) -> Step | None:
    """Return the step an enrollment of `kind` in `state` expects, or None when it takes no more steps."""
    return NEXT_STEP[kind].get(state)


def transition(state: State, action: Step | Event, kind: Kind = Kind.SETUP) -> State:
    """Return the state after `action`, or raise FailedPrecondition naming the state and the step
    the enrollment expects next."""
    if isinstance(action, Step):
        target = TRANSITIONS[kind].get((state, action))
        if target is not None:
            return target
        expected = next_step(state, kind)
        if expected is None:
            raise EnrollmentClosed(
                f"the enrollment is {state.value} and takes no more steps",
                metadata={"state": state.value, "step": action.name},
            )
        raise WrongStep(
            f"the enrollment is {state.value}: the next step is {expected.value} ({expected.name}), "
            f"not {action.value} ({action.name})",
            metadata={"state": state.value, "expected_step": expected.name, "step": action.name},
        )
    target = EVENT_TRANSITIONS.get((state, action))
    if target is None:
        raise EnrollmentClosed(
            f"cannot {action.value.lower()} an enrollment that is {state.value}",
            metadata={"state": state.value, "event": action.value},
        )
    return target
