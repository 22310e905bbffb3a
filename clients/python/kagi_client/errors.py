"""The details of a kagi error: the ErrorInfo reason (docs/errors.md) and the fields BadRequest names."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class KagiErrorDetails:
    """What a failed kagi call carries besides its gRPC code and message."""

    reason: str
    domain: str
    metadata: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    """Each invalid field and the rule it breaks (google.rpc.BadRequest), for showing beside a form's inputs."""


def error_info(error: grpc.RpcError) -> KagiErrorDetails | None:
    """Return the reason, domain and invalid fields of a failed call (blocking or asyncio), or None without them."""
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    raw = next((value for key, value in trailing or () if key == _DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return None
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    bad_request = error_details_pb2.BadRequest()
    found = None
    fields: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and detail.Unpack(info):
            found = info
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR) and detail.Unpack(bad_request):
            fields.update({violation.field: violation.description for violation in bad_request.field_violations})
    if found is None:
        return None
    return KagiErrorDetails(found.reason, found.domain, dict(found.metadata), fields)
