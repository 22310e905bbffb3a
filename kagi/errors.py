"""The one family of domain errors: each carries a stable reason, a message and optional per-field violations.

Domain code raises these; the gRPC layer maps the kind to a status code in one table
(`kagi.runtime.grpc_errors`) and the gateway maps status codes to HTTP in another. Nothing here knows gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class ErrorKind(Enum):
    """The category a domain error belongs to; each maps to exactly one gRPC status code."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class KagiError(Exception):
    """The base of every error a user of kagi may see; `reason` is stable and machine-readable."""

    kind: ErrorKind = ErrorKind.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        fields: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.fields: dict[str, str] = dict(fields or {})
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        if not self.fields:
            return self.message
        detail = "; ".join(f"{name}: {rule}" for name, rule in self.fields.items())
        return f"{self.message} ({detail})"


class InvalidArgument(KagiError):
    """The input breaks a rule; `fields` names each offending field and the rule it broke."""

    kind = ErrorKind.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class FailedPrecondition(KagiError):
    """The request is valid but not allowed in the object's current state."""

    kind = ErrorKind.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class NotFound(KagiError):
    """The named object does not exist (or the caller may not learn that it does)."""

    kind = ErrorKind.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(KagiError):
    """An object with that unique name exists already."""

    kind = ErrorKind.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class PermissionDenied(KagiError):
    """The caller is known but may not do this."""

    kind = ErrorKind.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(KagiError):
    """The caller's credential is missing, wrong or expired."""

    kind = ErrorKind.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class ResourceExhausted(KagiError):
    """Locked out or throttled after too many attempts."""

    kind = ErrorKind.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Aborted(KagiError):
    """A concurrent change won the race (stale version); the caller may re-read and retry."""

    kind = ErrorKind.ABORTED
    reason = "ABORTED"


class Unavailable(KagiError):
    """A dependency (the store, another service) cannot be reached right now; retry later."""

    kind = ErrorKind.UNAVAILABLE
    reason = "UNAVAILABLE"


class ConcurrentChange(Aborted):
    """A concurrent writer kept winning the race for the same record; re-read and retry.

    Every service answers a lost race with this one reason (gRPC ABORTED, HTTP 409).
    """

    reason = "CONCURRENT_CHANGE"
