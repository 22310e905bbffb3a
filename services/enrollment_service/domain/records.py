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
from services.enrollment_service.domain.states import Event, Kind, State, Step, next_step, transition

SCHEMA_VERSION = 1
DEFAULT_ENROLLMENT_IDLE_SECONDS = 60 * 60
MAX_FAILURES = 5


class AccountType(Enum):
    """The representative account's type."""

    ORDINARY = "ORDINARY"
    CURRENT = "CURRENT"


class ApplicationState(Enum):
    """OPEN until a user registers with it (USED); LOCKED after five wrong notices."""

    OPEN = "OPEN"
    USED = "USED"
    LOCKED = "LOCKED"
    EXPIRED = "EXPIRED"


def account_key(branch_code: str, account_type: AccountType, account_number: str) -> str:
    """Name a representative account uniquely (the index from account to application)."""
    return f"{branch_code}-{account_type.value}-{account_number}"


@dataclass(frozen=True)
class Application:
    """A company's registered application: the notice's account and hashed temporary passwords."""

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
    # The enrollment that registered a user with this application (step 3), or took its reissue (step 4).
    enrollment_id: str = ""
    # REISSUE: a notice for a new certificate of an existing user (a lost PC), not a new user.
    kind: Kind = Kind.SETUP
    user_id: str = ""
    # Step 1 successes: a wrong entry that raced a success (read the application before it) is not counted.
    verifications: int = 0

    def current_state(self, now: float) -> ApplicationState:
        """Return the state with expiry applied at `now`."""
        if self.state is ApplicationState.OPEN and now >= self.expires_at:
            return ApplicationState.EXPIRED
        return self.state

    def with_failure(self) -> Application:
        """Count one wrong notice entry; the fifth locks the application."""
        failures = self.failures + 1
        state = ApplicationState.LOCKED if failures >= MAX_FAILURES else self.state
        return replace(self, failures=failures, state=state)

    def unlocked(self) -> Application:
        """Return the operator's unlock: the count starts again."""
        if self.state is not ApplicationState.LOCKED:
            raise FailedPrecondition(
                f"the application is {self.state.value}, not LOCKED", reason="APPLICATION_NOT_LOCKED"
            )
        return replace(self, state=ApplicationState.OPEN, failures=0)

    def spent(self, enrollment_id: str) -> Application:
        """Mark the temporary passwords used by the enrollment that registered a user (step 3)."""
        if self.state is not ApplicationState.OPEN:
            raise FailedPrecondition(
                f"the application is {self.state.value}: its temporary passwords can no longer be used",
                reason="APPLICATION_NOT_OPEN",
            )
        return replace(self, state=ApplicationState.USED, enrollment_id=enrollment_id)


class Cleanup(Enum):
    """How far the clean-up of an abandoned (cancelled or expired) enrollment has come.

    PENDING is written in the same commit as the CANCELLED or EXPIRED state; REVOKING once a sweeper has begun
    (the certificate and the token may be revoked from then on); DONE once both are revoked and, the setup never
    having completed, the login ID and the user are released.
    """

    NONE = ""
    PENDING = "PENDING"
    REVOKING = "REVOKING"
    DONE = "DONE"


@dataclass(frozen=True)
class Enrollment:
    """One user's way through the ten steps, with what each step established."""

    enrollment_id: str
    application_id: str
    state: State
    created_at: float
    updated_at: float
    expires_at: float
    session_digest: str = dataclasses.field(repr=False)
    # Step 4 retires the session token: it then answers only a replay of that step-4 request (a lost answer).
    retired_session_digest: str = dataclasses.field(default="", repr=False)
    # The request (ledger key) that wrote this record last, and step 4's certificate as answered: together they
    # rebuild a step's answer that a crash lost between the step's write and the ledger's.
    last_request: str = ""
    certificate_pem: str = ""
    chain_pem: str = ""
    locked_from: State | None = None
    kind: Kind = Kind.SETUP
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
    # Cancelled or expired (abandoned): when, the state it expired from (an operator may re-open it), how far
    # the clean-up of its credentials has come, and whether its personal data was erased after the retention.
    abandoned_at: float = 0.0
    expired_from: State | None = None
    cleanup: Cleanup = Cleanup.NONE
    personal_data_erased: bool = False

    @property
    def next_step(self) -> Step | None:
        """Return the step the enrollment expects, or None when it takes no more."""
        return next_step(self.state, self.kind)

    def current(self, now: float) -> Enrollment:
        """Return the record with expiry applied at `now` (an idle enrollment in progress becomes EXPIRED)."""
        if self.state in _EXPIRABLE and now >= self.expires_at:
            return replace(self, state=transition(self.state, Event.EXPIRE), updated_at=now, expired_from=self.state)
        return self

    def advanced(self, step: Step, now: float, idle_seconds: float, **changes: Any) -> Enrollment:
        """Take `step` (refused unless the state allows it) and records what the step established."""
        current = self.current(now)
        state = transition(current.state, step, self.kind)
        return replace(current, state=state, updated_at=now, expires_at=now + idle_seconds, **changes)

    def with_event(self, event: Event, now: float) -> Enrollment:
        """Apply a side event (expire, lock, cancel)."""
        state = transition(self.state, event)
        locked_from = self.state if event is Event.LOCK else self.locked_from
        return replace(self, state=state, updated_at=now, locked_from=locked_from)

    def with_password_failure(self, now: float) -> Enrollment:
        """Count a wrong login password (step 6); the fifth locks the enrollment."""
        failed = replace(self, password_failures=self.password_failures + 1, updated_at=now)
        if failed.password_failures >= MAX_FAILURES:
            return failed.with_event(Event.LOCK, now)
        return failed

    def unlocked(self, now: float, idle_seconds: float) -> Enrollment:
        """Return the operator's unlock: the enrollment resumes where it stood, with a fresh count."""
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

    def abandoned(self, event: Event, now: float) -> Enrollment:
        """Return the record cancelled or expired (CANCEL or EXPIRE), its clean-up pending: write it together
        with the clean-up's marker, so the credentials it created are revoked even after a crash."""
        if event not in (Event.CANCEL, Event.EXPIRE):
            raise ValueError(f"{event.value} does not abandon an enrollment")
        ended = self.with_event(event, now)
        return replace(
            ended,
            abandoned_at=now,
            cleanup=Cleanup.PENDING,
            expired_from=self.state if event is Event.EXPIRE else None,
        )

    def with_cleanup(self, cleanup: Cleanup, now: float) -> Enrollment:
        """Record how far the clean-up of an abandoned enrollment has come."""
        return replace(self, cleanup=cleanup, updated_at=now)

    def without_personal_data(self, now: float) -> Enrollment:
        """Return an abandoned record after its retention period: the user's name, e-mail
        addresses and password hashes are erased; the identifiers (ids, login ID, serial) stay."""
        return replace(
            self,
            user_name="",
            email="",
            mobile_email="",
            certificate_pem="",
            chain_pem="",
            login_password_hash="",
            confirmation_password_hash="",
            personal_data_erased=True,
            updated_at=now,
        )

    def reopened(self, now: float, idle_seconds: float, *, credentials_revoked: bool) -> Enrollment:
        """Return the operator's re-opening of an EXPIRED enrollment with a fresh idle timeout.

        With its credentials untouched it resumes in the state it expired from. Once its certificate and token
        were revoked (or may have been) it resumes where step 4 comes next (REGISTERED for a setup), without
        them, so that step 4 issues a new certificate; one that expired before step 3 simply resumes.
        """
        if self.state is not State.EXPIRED or self.expired_from is None:
            raise FailedPrecondition(
                f"the enrollment is {self.state.value}: only an EXPIRED enrollment can be re-opened",
                reason="ENROLLMENT_NOT_EXPIRED",
                metadata={"state": self.state.value},
            )
        if self.personal_data_erased:
            raise FailedPrecondition(
                "the enrollment's personal data was erased after the retention period: register a new application",
                reason="PERSONAL_DATA_ERASED",
            )
        resumed = replace(
            self,
            state=self.expired_from,
            expired_from=None,
            abandoned_at=0.0,
            cleanup=Cleanup.NONE,
            password_failures=0,
            updated_at=now,
            expires_at=now + idle_seconds,
        )
        if not credentials_revoked or not self.user_id:
            return resumed
        reissuing = next(s for s in State if next_step(s, self.kind) is Step.ISSUE_CERTIFICATE)
        # Back before step 4: the session token step 4 retired authenticates steps up to it again.
        session = self.session_digest or self.retired_session_digest
        resumed = replace(
            resumed,
            state=reissuing,
            certificate_serial="",
            certificate_fingerprint="",
            session_digest=session,
            retired_session_digest="",
        )
        if not any(next_step(s, self.kind) is Step.REQUEST_TOKEN for s in State):
            return resumed  # the token is not this enrollment's (a reissue carries the user's over)
        return replace(resumed, mobile_email="", token_id="", service_id="", app_user_id="")


_EXPIRABLE = frozenset(s for s in State if next_step(s) is not None)


def _encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    return value


def dump_record(record: Application | Enrollment) -> bytes:
    """Serialise a record to JSON bytes with a schema version."""
    body = {f.name: _encode(getattr(record, f.name)) for f in dataclasses.fields(record)}
    body["schema"] = SCHEMA_VERSION
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def load_application(data: bytes) -> Application:
    """Read an Application back."""
    body = json.loads(data)
    body.pop("schema", None)
    body["account_type"] = AccountType(body["account_type"])
    body["state"] = ApplicationState(body["state"])
    body["kind"] = Kind(body.get("kind", Kind.SETUP.value))
    return Application(**body)


def load_enrollment(data: bytes) -> Enrollment:
    """Read an Enrollment back."""
    body = json.loads(data)
    body.pop("schema", None)
    body["state"] = State(body["state"])
    body["locked_from"] = State(body["locked_from"]) if body.get("locked_from") else None
    body["kind"] = Kind(body.get("kind", Kind.SETUP.value))
    body["expired_from"] = State(body["expired_from"]) if body.get("expired_from") else None
    body["cleanup"] = Cleanup(body.get("cleanup", ""))
    return Enrollment(**body)
