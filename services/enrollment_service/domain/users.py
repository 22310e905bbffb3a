"""Users: what the setup creates at step 3 and the front-end boundary reads afterwards, changed by pure functions.

A user record never holds a password in clear (memory-hard hashes only). Its lockouts count wrong login
passwords and wrong confirmation passwords separately, five in a row each; the session epoch ends every live
session of the user at once when it moves (a lock, and later a password change or a revoked certificate).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from kagi.errors import FailedPrecondition, ResourceExhausted

MAX_LOGIN_FAILURES = 5
MAX_CONFIRMATION_FAILURES = 5
SCHEMA_VERSION = 1

MSG_LOCKED = (
    "誤入力が続いたためご利用を停止しています。お取引店へご連絡ください"
    " / this user is locked: contact your branch to have it unlocked"
)
MSG_SETUP_INCOMPLETE = "初期設定が完了していません / the initial setup of this user has not been completed"


class UserState(Enum):
    """SETTING_UP until step 10, then ACTIVE; LOCKED while any lock holds."""

    SETTING_UP = "SETTING_UP"
    ACTIVE = "ACTIVE"
    LOCKED = "LOCKED"


class LockReason(Enum):
    """Says why a user is locked (NONE: not locked)."""

    NONE = ""
    LOGIN_PASSWORD = "LOGIN_PASSWORD"
    CONFIRMATION_PASSWORD = "CONFIRMATION_PASSWORD"
    OPERATOR = "OPERATOR"


class PasswordKind(Enum):
    """Names one of the user's two passwords."""

    LOGIN = "login"
    CONFIRMATION = "confirmation"


_LOCK_OF = {PasswordKind.LOGIN: LockReason.LOGIN_PASSWORD, PasswordKind.CONFIRMATION: LockReason.CONFIRMATION_PASSWORD}


class UserLocked(ResourceExhausted):
    """Five wrong passwords in a row or an operator's lock; only an operator unlocks."""

    reason = "USER_LOCKED"


class SetupIncomplete(FailedPrecondition):
    """The user's setup has not reached step 10."""

    reason = "SETUP_INCOMPLETE"


@dataclass(frozen=True)
class User:
    """A customer: who they are, their password hashes, token, lock state and session epoch."""

    user_id: str
    login_id: str
    user_name: str
    email: str
    company_name: str
    application_id: str
    enrollment_id: str
    login_password_hash: str = dataclasses.field(repr=False)
    confirmation_password_hash: str = dataclasses.field(repr=False)
    account: str = ""
    created_at: float = 0.0
    setup_complete: bool = False
    token_id: str = ""
    login_failures: int = 0
    confirmation_failures: int = 0
    lock_reason: LockReason = LockReason.NONE
    session_epoch: int = 0
    # An operator revoked the token and lets the user reissue one without it (a lost phone).
    token_reissue_allowed: bool = False

    @property
    def state(self) -> UserState:
        """Return LOCKED while a lock holds, else ACTIVE once the setup completed."""
        if self.lock_reason is not LockReason.NONE:
            return UserState.LOCKED
        return UserState.ACTIVE if self.setup_complete else UserState.SETTING_UP

    def check_usable(self) -> None:
        """Raise UserLocked or SetupIncomplete unless the user may log in and confirm."""
        if self.lock_reason is not LockReason.NONE:
            raise UserLocked(MSG_LOCKED, metadata={"lock_reason": self.lock_reason.value})
        if not self.setup_complete:
            raise SetupIncomplete(MSG_SETUP_INCOMPLETE)

    def completed(self, token_id: str) -> User:
        """Return the user once step 10 verified the first code of `token_id`."""
        return replace(self, setup_complete=True, token_id=token_id)

    def with_login_failure(self) -> User:
        """Count a wrong login password given with the user's own certificate; the fifth in a row locks."""
        failures = self.login_failures + 1
        if failures >= MAX_LOGIN_FAILURES and self.lock_reason is LockReason.NONE:
            return self._locked(LockReason.LOGIN_PASSWORD, login_failures=failures)
        return replace(self, login_failures=failures)

    def with_confirmation_failure(self) -> User:
        """Count a wrong confirmation password; the fifth in a row locks."""
        failures = self.confirmation_failures + 1
        if failures >= MAX_CONFIRMATION_FAILURES and self.lock_reason is LockReason.NONE:
            return self._locked(LockReason.CONFIRMATION_PASSWORD, confirmation_failures=failures)
        return replace(self, confirmation_failures=failures)

    def with_login_success(self) -> User:
        """Start the login count again after a right password."""
        return replace(self, login_failures=0)

    def with_confirmation_success(self) -> User:
        """Start the confirmation count again after a right confirmation password."""
        return replace(self, confirmation_failures=0)

    def locked_by_operator(self) -> User:
        """Return the user locked by an operator (every session ends)."""
        if self.lock_reason is not LockReason.NONE:
            raise FailedPrecondition(
                f"the user is already locked ({self.lock_reason.value})", reason="USER_ALREADY_LOCKED"
            )
        return self._locked(LockReason.OPERATOR)

    def unlocked(self) -> User:
        """Return the user unlocked by an operator, with both failure counts starting again."""
        if self.lock_reason is LockReason.NONE:
            raise FailedPrecondition("the user is not locked", reason="USER_NOT_LOCKED")
        return replace(self, lock_reason=LockReason.NONE, login_failures=0, confirmation_failures=0)

    def password_hash(self, kind: PasswordKind) -> str:
        """Return the stored hash of the login or the confirmation password."""
        return self.login_password_hash if kind is PasswordKind.LOGIN else self.confirmation_password_hash

    def with_failure(self, kind: PasswordKind) -> User:
        """Count a wrong password of `kind` (five in a row lock)."""
        return self.with_login_failure() if kind is PasswordKind.LOGIN else self.with_confirmation_failure()

    def with_new_password(self, kind: PasswordKind, password_hash: str) -> User:
        """Return the user with a new password of `kind`: its count starts again, a lock it caused is lifted,
        and every session ends (the epoch moves)."""
        lifted = _LOCK_OF[kind]
        lock = LockReason.NONE if self.lock_reason is lifted else self.lock_reason
        changes: dict[str, Any] = (
            {"login_password_hash": password_hash, "login_failures": 0}
            if kind is PasswordKind.LOGIN
            else {"confirmation_password_hash": password_hash, "confirmation_failures": 0}
        )
        return replace(self, lock_reason=lock, session_epoch=self.session_epoch + 1, **changes)

    def sessions_ended(self) -> User:
        """Return the user with every live session ended."""
        return replace(self, session_epoch=self.session_epoch + 1)

    def _locked(self, reason: LockReason, **changes: Any) -> User:
        return replace(self, lock_reason=reason, session_epoch=self.session_epoch + 1, **changes)


def dump_user(user: User) -> bytes:
    """Serialise a user to JSON bytes with a schema version."""
    body = {f.name: getattr(user, f.name) for f in dataclasses.fields(user)}
    body["lock_reason"] = user.lock_reason.value
    body["schema"] = SCHEMA_VERSION
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def load_user(data: bytes) -> User:
    """Read a user back (fields added later take their defaults)."""
    body = json.loads(data)
    body.pop("schema", None)
    body["lock_reason"] = LockReason(body.get("lock_reason", ""))
    known = {f.name for f in dataclasses.fields(User)}
    return User(**{k: v for k, v in body.items() if k in known})
