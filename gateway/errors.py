"""The gateway's errors: the one table from gRPC status (and reason) to HTTP, and the JSON error body."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from typing import Any

import grpc

from kagi.runtime.grpc_client import error_from_rpc

# The one mapping from what a service answered to the HTTP status the customer sees. Rows are tried in order;
# a row with a reason pattern applies only to errors whose ErrorInfo reason matches it (fnmatch syntax).
HTTP_STATUS_TABLE: tuple[tuple[grpc.StatusCode, str | None, int], ...] = (
    (grpc.StatusCode.INVALID_ARGUMENT, None, 400),
    (grpc.StatusCode.OUT_OF_RANGE, None, 400),
    (grpc.StatusCode.UNAUTHENTICATED, None, 401),
    (grpc.StatusCode.PERMISSION_DENIED, None, 403),
    (grpc.StatusCode.NOT_FOUND, None, 404),
    (grpc.StatusCode.FAILED_PRECONDITION, None, 409),
    (grpc.StatusCode.ALREADY_EXISTS, None, 409),
    # A lost optimistic-concurrency race or a retry racing its first attempt: the client may retry.
    (grpc.StatusCode.ABORTED, None, 409),
    # Lockouts (APPLICATION_LOCKED, USER_LOCKED, TOKEN_LOCKED) need an operator; throttling passes by itself.
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "*_LOCKED", 423),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, None, 429),
    (grpc.StatusCode.UNAVAILABLE, None, 503),
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, 503),
    (grpc.StatusCode.CANCELLED, None, 503),
)
"""HTTP_STATUS_TABLE maps (gRPC code, reason pattern or None) to an HTTP status; anything else is 500."""

UNAVAILABLE_MESSAGE = (
    "ただいまサービスをご利用いただけません。しばらくしてからやり直してください"
    " / the service is temporarily unavailable: retry shortly"
)
INTERNAL_MESSAGE = "システムエラーが発生しました / internal error"
INVALID_INPUT_MESSAGE = "入力内容に誤りがあります / the input is invalid"
RETRY_AFTER_SECONDS = "1"
THROTTLED_RETRY_AFTER_SECONDS = 60
"""THROTTLED_RETRY_AFTER_SECONDS is Retry-After on a 429 whose service named no time (a minute)."""
RETRY_AFTER_METADATA = ("retry_after_seconds", "retry_after")
"""RETRY_AFTER_METADATA are the ErrorInfo metadata keys a service names its retry time in (seconds), in order."""


def http_status_for(code: grpc.StatusCode, reason: str) -> int:
    """http_status_for looks a gRPC code and ErrorInfo reason up in HTTP_STATUS_TABLE (500 when absent)."""
    for row_code, pattern, status in HTTP_STATUS_TABLE:
        if row_code == code and (pattern is None or fnmatch.fnmatchcase(reason, pattern)):
            return status
    return 500


class HttpError(Exception):
    """HttpError is an error answer: HTTP status, stable reason, message, per-field messages, extra headers."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        fields: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.fields: dict[str, str] = dict(fields or {})
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """Body is the JSON error document: {"error": {"code", "reason", "message", "fields"}}."""
        return {"error": {"code": self.status, "reason": self.reason, "message": self.message, "fields": self.fields}}


def retry_after(metadata: Mapping[str, str]) -> str:
    """retry_after is the Retry-After of a throttled answer: the whole seconds the service named in its ErrorInfo
    metadata (at least 1), or THROTTLED_RETRY_AFTER_SECONDS when it named none (or nothing readable)."""
    for key in RETRY_AFTER_METADATA:
        try:
            seconds = float(metadata[key])
        except (KeyError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return str(max(1, math.ceil(seconds)))
    return str(THROTTLED_RETRY_AFTER_SECONDS)


def invalid_input(fields: Mapping[str, str], *, reason: str = "INVALID_ARGUMENT") -> HttpError:
    """invalid_input is a 400 naming each offending field and its rule."""
    return HttpError(400, reason, INVALID_INPUT_MESSAGE, fields=fields)


def http_error_from_rpc(exc: grpc.aio.AioRpcError) -> HttpError:
    """http_error_from_rpc turns a failed service call into the HTTP error the customer sees.

    The service's reason, message and field messages are kept (they are written for the customer); for 5xx
    the message is replaced, so no backend address or internal detail reaches the browser. Every 429 carries
    Retry-After (from the service's ErrorInfo metadata); a lockout (423) does not: only an operator lifts it.
    """
    error = error_from_rpc(exc)
    status = http_status_for(exc.code(), error.reason)
    headers: dict[str, str] = {}
    message = error.message
    if status == 429:
        headers = {"Retry-After": retry_after(error.metadata)}
    elif status == 503:
        message, headers = UNAVAILABLE_MESSAGE, {"Retry-After": RETRY_AFTER_SECONDS}
    elif status >= 500:
        message = INTERNAL_MESSAGE
    fields = error.fields if status < 500 else {}
    return HttpError(status, error.reason, message, fields=fields, headers=headers)
