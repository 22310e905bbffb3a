"""The catalogue of error reasons every kagi component shares, and the shape all reason catalogues take.

A catalogue is an Enum whose member names are `google.rpc.ErrorInfo` reasons and whose values say what each
means: its error kind (which fixes the gRPC code through the one table in `kagi.runtime.grpc_errors`), the
HTTP status the gateway answers it with, and one line for the people who read it. Each service keeps its own
catalogue in its domain (`services/<service>/domain/reasons.py`); this one holds the reasons of the code they
share: the generic reason of each kind, the lost race, the store, idempotency, the gRPC runtime, the soft
token and the gateway's own answers. Pure data: nothing here knows gRPC or HTTP libraries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, unique

from kagi.errors import ErrorKind


@dataclass(frozen=True, slots=True)
class Reason:
    """What a reason means: its kind (None for answers only the gateway gives), HTTP status and one line."""

    kind: ErrorKind | None
    http_status: int
    meaning: str


class ReasonCatalogue(Enum):
    """A catalogue of reasons: each member's name is the ErrorInfo reason and its value the Reason it is."""

    _value_: Reason

    @property
    def reason(self) -> str:
        """Return the ErrorInfo reason string."""
        return self.name

    @property
    def kind(self) -> ErrorKind | None:
        """Return the error kind (None: the gateway answers it itself, it never travels over gRPC)."""
        return self._value_.kind

    @property
    def http_status(self) -> int:
        """Return the HTTP status the gateway answers with."""
        return self._value_.http_status

    @property
    def meaning(self) -> str:
        """Return the one-line meaning."""
        return self._value_.meaning


_UNAUTH = ErrorKind.UNAUTHENTICATED


@unique
class SharedReason(ReasonCatalogue):
    """The reasons of kagi's shared code and of the gateway itself."""

    # The generic reason of each kind: what an error raised without a more precise reason carries.
    INVALID_ARGUMENT = Reason(ErrorKind.INVALID_ARGUMENT, 400, "The input breaks a rule; `fields` names each field.")
    FAILED_PRECONDITION = Reason(ErrorKind.FAILED_PRECONDITION, 409, "Not allowed in the object's current state.")
    NOT_FOUND = Reason(ErrorKind.NOT_FOUND, 404, "No such object (or route), or the caller may not learn of it.")
    ALREADY_EXISTS = Reason(ErrorKind.ALREADY_EXISTS, 409, "An object with that unique name exists already.")
    PERMISSION_DENIED = Reason(ErrorKind.PERMISSION_DENIED, 403, "The caller is known but may not do this.")
    UNAUTHENTICATED = Reason(_UNAUTH, 401, "The caller's credential is missing, wrong or expired.")
    RESOURCE_EXHAUSTED = Reason(ErrorKind.RESOURCE_EXHAUSTED, 429, "Throttled (or too large); retry later.")
    ABORTED = Reason(ErrorKind.ABORTED, 409, "A concurrent request won; re-read and retry.")
    UNAVAILABLE = Reason(ErrorKind.UNAVAILABLE, 503, "A dependency cannot be reached right now; retry shortly.")
    INTERNAL = Reason(ErrorKind.INTERNAL, 500, "An internal error; no detail is given.")

    # A lost optimistic-concurrency race, in every service (kagi.errors.ConcurrentChange).
    CONCURRENT_CHANGE = Reason(ErrorKind.ABORTED, 409, "A concurrent writer kept winning the race; retry.")

    # The store (kagi/store).
    KEY_EXISTS = Reason(ErrorKind.ALREADY_EXISTS, 409, "Create-if-absent found a live entry under the key.")
    VERSION_MISMATCH = Reason(ErrorKind.ABORTED, 409, "A stored entry changed since it was read (stale version).")
    STORE_UNAVAILABLE = Reason(ErrorKind.UNAVAILABLE, 503, "The store cannot be reached; nothing was written.")
    STORE_CLOSED = Reason(ErrorKind.UNAVAILABLE, 503, "The store was closed (the process is stopping).")
    INVALID_KEY = Reason(ErrorKind.INVALID_ARGUMENT, 400, "A store collection or key breaks the naming rules.")
    INVALID_STORE_CONFIG = Reason(ErrorKind.INVALID_ARGUMENT, 400, "A bad store URL, namespace or store file.")
    STORE_NOT_DURABLE = Reason(
        ErrorKind.INVALID_ARGUMENT, 400, "The Redis server would lose acknowledged writes (no AOF, or eviction)."
    )
    STORE_PERMISSION_DENIED = Reason(
        ErrorKind.INVALID_ARGUMENT, 400, "The Redis user may not run a command or reach a key the store needs (ACL)."
    )

    # Idempotent mutations (kagi/idempotency.py).
    INVALID_REQUEST_ID = Reason(ErrorKind.INVALID_ARGUMENT, 400, "request_id is too long or not printable ASCII.")
    REQUEST_ID_REUSED = Reason(
        ErrorKind.INVALID_ARGUMENT, 400, "request_id was used before for a different request; use a new one."
    )
    REQUEST_IN_PROGRESS = Reason(ErrorKind.ABORTED, 409, "The first request with this request_id is still running.")

    # Shared records: password hashes and the audit trail.
    PASSWORD_HASH_INVALID = Reason(ErrorKind.INTERNAL, 500, "A stored password hash is malformed or its pepper gone.")
    AUDIT_RECORD_MALFORMED = Reason(ErrorKind.INVALID_ARGUMENT, 400, "A stored audit record cannot be decoded.")
    AUDIT_CHAIN_BROKEN = Reason(ErrorKind.INTERNAL, 500, "The audit chain's head does not match its last record.")

    # The gRPC runtime (kagi/runtime): callers, relayed client certificates, calls to other services.
    CLIENT_CA_UNKNOWN = Reason(ErrorKind.INVALID_ARGUMENT, 400, "Settings: the CA to trust callers under is unknown.")
    CALLER_NOT_AUTHENTICATED = Reason(_UNAUTH, 401, "The caller showed no kagi internal client certificate.")
    CALLER_NOT_ALLOWED = Reason(ErrorKind.PERMISSION_DENIED, 403, "The caller's role may not call this RPC.")
    CALLER_CERTIFICATE_REVOKED = Reason(_UNAUTH, 401, "The caller's internal certificate is revoked.")
    CALLER_REVOCATION_UNKNOWN = Reason(
        ErrorKind.UNAVAILABLE, 503, "The caller's certificate cannot be checked for revocation now (fails closed)."
    )
    CLIENT_CERT_REQUIRED = Reason(_UNAUTH, 401, "This step needs the customer's client certificate.")
    CLIENT_CERT_NOT_RELAYED = Reason(
        ErrorKind.PERMISSION_DENIED, 403, "A client certificate came from a caller other than the gateway."
    )
    SERVICE_UNAVAILABLE = Reason(ErrorKind.UNAVAILABLE, 503, "A called service did not answer (down or too slow).")

    # The soft token (kagi/softtoken): local to the `kagi token` command, never on the wire.
    GATEWAY_UNREACHABLE = Reason(ErrorKind.UNAVAILABLE, 503, "The soft token cannot reach the gateway.")
    NO_TOKEN_FILE = Reason(ErrorKind.NOT_FOUND, 404, "No soft token file yet: activate a token first.")
    BAD_TOKEN_FILE = Reason(ErrorKind.INVALID_ARGUMENT, 400, "The file is not a kagi soft token file.")
    WRONG_PASSWORD = Reason(_UNAUTH, 401, "The password given is wrong (login or usage-start password).")

    # The gateway's own answers (gateway/): the request never reached a service, or a start-up check failed.
    MALFORMED_JSON = Reason(ErrorKind.INVALID_ARGUMENT, 400, "The body is not a JSON object.")
    INVALID_IDEMPOTENCY_KEY = Reason(ErrorKind.INVALID_ARGUMENT, 400, "The Idempotency-Key header is malformed.")
    SESSION_OR_LOGIN_REQUIRED = Reason(
        ErrorKind.INVALID_ARGUMENT, 400, "Send either a session (access token) or the login ID and password."
    )
    SESSION_REQUIRED = Reason(_UNAUTH, 401, "The Authorization header carries no well-formed session token.")
    ACCESS_TOKEN_REQUIRED = Reason(_UNAUTH, 401, "The Authorization header carries no well-formed access token.")
    ACCESS_TOKEN_INVALID = Reason(_UNAUTH, 401, "The access token is expired, ended, or not this user's.")
    CREDENTIAL_REQUIRED = Reason(_UNAUTH, 401, "This route needs an access token or the login password.")
    CLIENT_CERT_EXPIRED = Reason(_UNAUTH, 401, "The client certificate has expired.")
    CLIENT_CERT_NOT_YET_VALID = Reason(_UNAUTH, 401, "The client certificate is not valid yet.")
    CLIENT_CERT_REVOKED = Reason(_UNAUTH, 401, "The client certificate is revoked.")
    CLIENT_CERT_UNKNOWN = Reason(_UNAUTH, 401, "The CA does not know the client certificate.")
    CLIENT_CERT_NOT_CUSTOMER = Reason(
        ErrorKind.PERMISSION_DENIED, 403, "The client certificate is not a customer certificate of this bank."
    )
    RATE_LIMITED = Reason(ErrorKind.RESOURCE_EXHAUSTED, 429, "Too many requests; retry after Retry-After seconds.")
    REVOCATION_STATUS_UNAVAILABLE = Reason(
        ErrorKind.UNAVAILABLE, 503, "The client certificate's status cannot be checked now (fails closed)."
    )
    PKI_UNAVAILABLE = Reason(ErrorKind.UNAVAILABLE, 503, "The CA cannot be reached for its certificates or CRLs.")
    CA_UNAVAILABLE = Reason(ErrorKind.UNAVAILABLE, 503, "Start-up: the CA gave no certificates in time.")
    METHOD_NOT_ALLOWED = Reason(None, 405, "The route does not take this HTTP method (see Allow).")
    BODY_TOO_LARGE = Reason(None, 413, "The body is larger than the gateway accepts (64 KiB).")
    UNSUPPORTED_MEDIA_TYPE = Reason(None, 415, "The body is not application/json.")


def merge(catalogues: Iterable[type[ReasonCatalogue]]) -> dict[str, Reason]:
    """Return every reason of `catalogues` by name; raise ValueError if two list one reason differently.

    A reason may appear in more than one catalogue (a shared one a service raises too) as long as every
    listing gives it the same kind and HTTP status: a client must be able to act on the reason alone.
    """
    merged: dict[str, Reason] = {}
    clashes: list[str] = []
    for catalogue in catalogues:
        for member in catalogue:
            seen = merged.setdefault(member.reason, member.value)
            if (seen.kind, seen.http_status) != (member.kind, member.http_status):
                clashes.append(f"{catalogue.__name__}.{member.reason}")
    if clashes:
        raise ValueError("reasons listed with another kind or HTTP status elsewhere: " + ", ".join(clashes))
    return merged


def generic_reasons() -> Mapping[ErrorKind, SharedReason]:
    """Return the generic reason of each kind: what an error raised without a more precise reason carries."""
    return {kind: SharedReason[kind.value] for kind in ErrorKind}
