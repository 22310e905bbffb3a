"""Client channels to kagi services: mTLS with the caller's internal identity, request-id propagation, and the
translation of a failed call back into the domain error it carried.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status.rpc_status import GRPC_DETAILS_METADATA_KEY

from kagi.errors import KagiError, Unavailable
from kagi.runtime.grpc_errors import KIND_FOR_STATUS, error_from_status
from kagi.runtime.grpc_server import MAX_RESPONSE_BYTES
from kagi.runtime.logging import REQUEST_ID_HEADER, new_request_id, request_id_var
from kagi.runtime.settings import TlsFiles, is_loopback


class RequestIdInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Sends the current request id along, so one id follows a request across services."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = list(details.metadata or ())
        if not any(key == REQUEST_ID_HEADER for key, _ in metadata):
            metadata.extend(request_metadata())
        details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(details, request)


ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""Spreads a channel's calls over every address its target resolves to (each pod behind a headless Service)."""


def request_metadata() -> tuple[tuple[str, str]]:
    """Return the metadata that carries the current request id (a new one when there is none) to a called service."""
    return ((REQUEST_ID_HEADER, request_id_var.get() or new_request_id()),)


def open_channel(
    target: str, tls: TlsFiles | None, *, server_name: str | None = None, request_ids: bool = True
) -> grpc.aio.Channel:
    """Connect to a kagi service: mTLS with `tls`, or plaintext only to a loopback target.

    The server's certificate must name `server_name` when one is given (the role name, `ca.kagi.internal`),
    whatever address `target` names; else the host in `target`. Calls go round-robin over every address the
    target resolves to (`dns:///kagi-otp.kagi.svc.cluster.local:50052` names every pod of a headless Service;
    `ipv4:10.0.0.5:50052,10.0.0.6:50052` lists them), so replicas share the load.

    The channel sends the current request id along with every call, unless `request_ids` is false: then the caller
    passes `request_metadata()` with each call itself, which costs less (grpc.aio runs every call of a channel with
    an interceptor through tasks of its own, a tenth of a millisecond of CPU per call on the hot path).
    """
    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", 30_000),
        # Answers may be large (CRLs, list pages); what a client sends is capped by the server (MAX_REQUEST_BYTES).
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
        ("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG),
    ]
    interceptors = [RequestIdInterceptor()] if request_ids else []
    if tls is None:
        host = target.rsplit(":", 1)[0]
        if not is_loopback(host):
            raise ValueError(f"plaintext gRPC to {target} refused: only loopback targets may be plaintext")
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    chain, key, ca = tls.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def error_from_rpc(exc: grpc.aio.AioRpcError) -> KagiError:
    """Turn a failed call into the domain error the server raised (reason and fields kept)."""
    for key, value in exc.trailing_metadata() or ():
        if key == GRPC_DETAILS_METADATA_KEY and isinstance(value, bytes):
            return error_from_status(status_pb2.Status.FromString(value))
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"service unavailable: {exc.details() or code.name}", reason="SERVICE_UNAVAILABLE")
    kind = KIND_FOR_STATUS.get(code)
    status = status_pb2.Status(code=code.value[0], message=exc.details() or code.name)
    error = error_from_status(status)
    if kind is None:
        error.reason = code.name
    return error
