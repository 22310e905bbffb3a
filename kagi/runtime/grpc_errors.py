"""The one mapping from domain errors to gRPC status codes, with google.rpc.ErrorInfo and BadRequest details.

An error's kind fixes its code here; its reason, and what the reason means, are in the reason catalogues
(kagi/reasons.py and each service's domain/reasons.py).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from kagi.errors import ErrorKind, KagiError

STATUS_FOR_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.ABORTED: grpc.StatusCode.ABORTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

KIND_FOR_STATUS: dict[grpc.StatusCode, ErrorKind] = {code: kind for kind, code in STATUS_FOR_KIND.items()}

INTERNAL_MESSAGE = "internal error"


def to_status(error: KagiError, *, domain: str) -> status_pb2.Status:
    """Convert a domain error to a google.rpc.Status carrying ErrorInfo and, for fields, BadRequest."""
    code = STATUS_FOR_KIND[error.kind]
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    details = [_pack(info)]
    if error.fields:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=name, description=rule)
            for name, rule in error.fields.items()
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


def internal_status() -> status_pb2.Status:
    """Return what any unexpected exception becomes: INTERNAL, no detail leaked."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_from_status(status: status_pb2.Status) -> KagiError:
    """Rebuild a domain error from a google.rpc.Status (what a gRPC client received)."""
    kind = ErrorKind.INTERNAL
    for code, candidate in KIND_FOR_STATUS.items():
        if code.value[0] == status.code:
            kind = candidate
            break
    reason = kind.value
    metadata: dict[str, str] = {}
    fields: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = {v.field: v.description for v in bad.field_violations}
    error_class = _ERROR_CLASS[kind]
    return error_class(status.message, reason=reason, fields=fields, metadata=metadata)


def _error_classes() -> dict[ErrorKind, type[KagiError]]:
    classes: dict[ErrorKind, type[KagiError]] = {ErrorKind.INTERNAL: KagiError}
    for cls in KagiError.__subclasses__():
        classes.setdefault(cls.kind, cls)
    return classes


_ERROR_CLASS = _error_classes()
