"""Applications and enrollments: all of their state in one serialisable record each, changed by pure functions.

A record never holds a secret in clear: temporary passwords, login and confirmation passwords are memory-hard
hashes, the session token is a digest.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from kagi.errors import FailedPrecondition
from services.enrollment_service.domain.states import Event, State, Step, next_step, transition

SCHEMA_VERSION = 1
DEFAULT_ENROLLMENT_IDLE_SECONDS = 60 * 60
MAX_FAILURES = 5


class AccountType(Enum):
    """AccountType is the representative account's type."""

    ORDINARY = "ORDINARY"
    CURRENT = "CURRENT"


class ApplicationState(Enum):
    """ApplicationState: OPEN until a user registers with it (USED); LOCKED after five wrong notices."""

    OPEN = "OPEN"
    USED = "USED"
    LOCKED = "LOCKED"
    EXPIRED = "EXPIRED"


def account_key(branch_code: str, account_type: AccountType, account_number: str) -> str:
    """account_key names a representative account uniquely (the index from account to application)."""
    return f"{branch_code}-{account_type.value}-{account_number}"


@dataclass(frozen=True)
class Application:
    """Application is a company's registered application: the notice's account and hashed temporary passwords."""

    application_id: str
    company_name: str
    branch_code: str
    account_type: AccountType
    account_number: str
    temporary_login_hash: str = dataclasses.field(repr=False)
    temporary_confirmation_hash: str = dataclasses.field(repr=False)
    created_at: float
    expires_at: float
    state: ApplicationState = ApplicationState.OPEN
    failures: int = 0
    # The enrollment that registered a user with this application (step 3).
    enrollment_id: str = ""

    def current_state(self, now: float) -> ApplicationState:
        """Current_state is the state with expiry applied at `now`."""
        if self.state is ApplicationState.OPEN and now >= self.expires_at:
            return ApplicationState.EXPIRED
        return self.state

    def with_failure(self) -> Application:
        """With_failure counts one wrong notice entry; the fifth locks the application."""
        failures = self.failures + 1
        state = ApplicationState.LOCKED if failures >= MAX_FAILURES else self.state
        return replace(self, failures=failures, state=state)

    def unlocked(self) -> Application:
        """Unlocked is the operator's unlock: the count starts again."""
        if self.state is not ApplicationState.LOCKED:
            raise FailedPrecondition(
                f"the application is {self.state.value}, not LOCKED", reason="APPLICATION_NOT_LOCKED"
            )
        return replace(self, state=ApplicationState.OPEN, failures=0)

    def spent(self, enrollment_id: str) -> Application:
        """Spent marks the temporary passwords used by the enrollment that registered a user (step 3)."""
        if self.state is not ApplicationState.OPEN:
            raise FailedPrecondition(
                f"the application is {self.state.value}: its temporary passwords can no longer be used",
                reason="APPLICATION_NOT_OPEN",
            )
        return replace(self, state=ApplicationState.USED, enrollment_id=enrollment_id)


@dataclass(frozen=True)
class Enrollment:
    """Enrollment is one user's way through the ten steps, with what each step established."""

    enrollment_id: str
    application_id: str
    state: State
    created_at: float
    updated_at: float
    expires_at: float
    session_digest: str = dataclasses.field(repr=False)
    locked_from: State | None = None
    # Step 2
    user_name: str = ""
    email: str = ""
    login_id: str = ""
    login_password_hash: str = dataclasses.field(default="", repr=False)
    confirmation_password_hash: str = dataclasses.field(default="", repr=False)
    # Step 3
    user_id: str = ""
    # Step 4
    certificate_serial: str = ""
    certificate_fingerprint: str = ""
    # Step 6
    password_failures: int = 0
    # Step 7
    mobile_email: str = ""
    token_id: str = ""
    service_id: str = ""
    app_user_id: str = ""

    @property
    def next_step(self) -> Step | None:
        """Next_step is the step the enrollment expects, or None when it takes no more."""
        return next_step(self.state)

    def current(self, now: float) -> Enrollment:
        """Current is the record with expiry applied at `now` (an idle enrollment in progress becomes EXPIRED)."""
        if self.state in _EXPIRABLE and now >= self.expires_at:
            return replace(self, state=transition(self.state, Event.EXPIRE), updated_at=now)
        return self

    def advanced(self, step: Step, now: float, idle_seconds: float, **changes: Any) -> Enrollment:
        """Advanced takes `step` (refused unless the state allows it) and records what the step established."""
        current = self.current(now)
        state = transition(current.state, step)
        return replace(current, state=state, updated_at=now, expires_at=now + idle_seconds, **changes)

    def with_event(self, event: Event, now: float) -> Enrollment:
        """With_event applies a side event (expire, lock, cancel)."""
        state = transition(self.state, event)
        locked_from = self.state if event is Event.LOCK else self.locked_from
        return replace(self, state=state, updated_at=now, locked_from=locked_from)

    def with_password_failure(self, now: float) -> Enrollment:
        """With_password_failure counts a wrong login password (step 6); the fifth locks the enrollment."""
        failed = replace(self, password_failures=self.password_failures + 1, updated_at=now)
        if failed.password_failures >= MAX_FAILURES:
            return failed.with_event(Event.LOCK, now)
        return failed

    def unlocked(self, now: float, idle_seconds: float) -> Enrollment:
        """Unlocked is the operator's unlock: the enrollment resumes where it stood, with a fresh count."""
        if self.state is not State.LOCKED or self.locked_from is None:
            raise FailedPrecondition(
                f"the enrollment is {self.state.value}, not LOCKED", reason="ENROLLMENT_NOT_LOCKED"
            )
        return replace(
            self,
            state=self.locked_from,
            locked_from=None,
            password_failures=0,
            updated_at=now,
            expires_at=now + idle_seconds,
        )


_EXPIRABLE = frozenset(s for s in State if next_step(s) is not None)


def _encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    return value


def dump_record(record: Application | Enrollment) -> bytes:
    """dump_record serialises a record to JSON bytes with a schema version."""
    body = {f.name: _encode(getattr(record, f.name)) for f in dataclasses.fields(record)}
    body["schema"] = SCHEMA_VERSION
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def load_application(data: bytes) -> Application:
    """load_application reads an Application back."""
    body = json.loads(data)
    body.pop("schema", None)
    body["account_type"] = AccountType(body["account_type"])
    body["state"] = ApplicationState(body["state"])
    return Application(**body)


def load_enrollment(data: bytes) -> Enrollment:
    """load_enrollment reads an Enrollment back."""
    body = json.loads(data)
    body.pop("schema", None)
    body["state"] = State(body["state"])
    body["locked_from"] = State(body["locked_from"]) if body.get("locked_from") else None
    return Enrollment(**body)
