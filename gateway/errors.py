"""The gateway's errors: the HTTP status of each service answer (by its catalogued reason) and the JSON error body."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import grpc

from kagi.reasons import Reason, ReasonCatalogue, SharedReason, generic_reasons, merge
from kagi.runtime.grpc_client import error_from_rpc
from kagi.runtime.grpc_errors import STATUS_FOR_KIND
from services.ca_service.domain.reasons import CaReason
from services.enrollment_service.domain.reasons import EnrollmentReason
from services.otp_service.domain.reasons import OtpReason

CATALOGUES: tuple[type[ReasonCatalogue], ...] = (SharedReason, CaReason, OtpReason, EnrollmentReason)
"""The reason catalogues of everything whose answers reach the gateway, its own included."""

REASONS: Mapping[str, Reason] = merge(CATALOGUES)
"""Every catalogued reason by name (a reason listed twice has one kind and status, or import fails)."""

HTTP_STATUS_FOR_CODE: Mapping[grpc.StatusCode, int] = {
    **{STATUS_FOR_KIND[kind]: generic.http_status for kind, generic in generic_reasons().items()},
    # Codes no kagi error has: gRPC's own refusals (a call cancelled or past its deadline) and OUT_OF_RANGE.
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.CANCELLED: 503,
}
"""The status of an answer whose reason the catalogues do not list (any other code: 500).

Each kind's status is its generic reason's in kagi.reasons, so the catalogue is the one place a status is set.
"""

UNAVAILABLE_MESSAGE = (
    "ただいまサービスをご利用いただけません。しばらくしてからやり直してください"
    " / the service is temporarily unavailable: retry shortly"
)
INTERNAL_MESSAGE = "システムエラーが発生しました / internal error"
INVALID_INPUT_MESSAGE = "入力内容に誤りがあります / the input is invalid"
RETRY_AFTER_SECONDS = "1"
THROTTLED_RETRY_AFTER_SECONDS = 60
"""Retry-After on a 429 whose service named no time (a minute)."""
RETRY_AFTER_METADATA = ("retry_after_seconds", "retry_after")
"""The ErrorInfo metadata keys a service names its retry time in (seconds), in order."""


def http_status_for(code: grpc.StatusCode, reason: str) -> int:
    """Return the HTTP status for a service's gRPC code and ErrorInfo reason.

    A catalogued reason answered with the code of its kind gets the catalogue's status (so a lockout is 423 and
    throttling 429, both RESOURCE_EXHAUSTED); anything else gets its code's status, and an unknown code 500.
    The code must agree because it is what the service actually said: a reason raised with another kind than
    its catalogue entry is a bug the catalogue test names, and the code is the safer guide until it is fixed.
    """
    entry = REASONS.get(reason)
    if entry is not None and entry.kind is not None and STATUS_FOR_KIND[entry.kind] == code:
        return entry.http_status
    return HTTP_STATUS_FOR_CODE.get(code, 500)


class HttpError(Exception):
    """An error answer: HTTP status, stable reason, message, per-field messages and extra headers."""

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
        """Return the JSON error document: {"error": {"code", "reason", "message", "fields"}}."""
        return {"error": {"code": self.status, "reason": self.reason, "message": self.message, "fields": self.fields}}


def retry_after(metadata: Mapping[str, str]) -> str:
    """Return the Retry-After of a throttled answer.

    It is the whole seconds the service named in its ErrorInfo metadata (at least 1), or
    THROTTLED_RETRY_AFTER_SECONDS when it named none (or nothing readable).
    """
    for key in RETRY_AFTER_METADATA:
        try:
            seconds = float(metadata[key])
        except (KeyError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return str(max(1, math.ceil(seconds)))
    return str(THROTTLED_RETRY_AFTER_SECONDS)


def invalid_input(fields: Mapping[str, str], *, reason: str = "INVALID_ARGUMENT") -> HttpError:
    """Return a 400 naming each offending field and its rule."""
    return HttpError(400, reason, INVALID_INPUT_MESSAGE, fields=fields)


def http_error_from_rpc(exc: grpc.aio.AioRpcError) -> HttpError:
    """Turn a failed service call into the HTTP error the customer sees.

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
