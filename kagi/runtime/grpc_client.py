"""Client channels to kagi services: mTLS with the caller's internal identity, request-id propagation, and the
translation of a failed call back into the domain error it carried.
"""

from __future__ import annotations

import asyncio
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
from kagi.runtime.tls_reload import TlsMaterial, WatchedFiles, watch_tls_files


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
        # round_robin reconnects a lost replica at once and then backs off; gRPC's default backoff grows to two
        # minutes, during which a restarted single replica would see calls fail fast. Retry at least each second.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    interceptors = [RequestIdInterceptor()] if request_ids else []
    if tls is None:
        host = target.rsplit(":", 1)[0]
        if not is_loopback(host):
            raise ValueError(f"plaintext gRPC to {target} refused: only loopback targets may be plaintext")
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    watched = watch_tls_files(tls, what=f"grpc client of {target}")

    def connect(material: TlsMaterial) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=material.ca_pem,
            private_key=material.identity.key_pem,
            certificate_chain=material.identity.chain_pem,
        )
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)

    return ReloadingChannel(watched, connect)


RETIRE_GRACE_SECONDS = 60.0
"""How long a channel replaced by new certificates lets its calls in flight finish before it closes."""


class ReloadingChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A channel that follows its certificate files: once they change (or SIGHUP came) and check out, the next
    call opens a new channel with them and every later call goes there; the old one closes once its calls in
    flight end (at most RETIRE_GRACE_SECONDS). Stubs made on it keep working across the swap."""

    def __init__(self, watched: WatchedFiles[TlsMaterial], connect: Callable[[TlsMaterial], grpc.aio.Channel]) -> None:
        self._watched = watched
        self._connect = connect
        self._generation = watched.generation
        self._serial = watched.current().identity.serial
        self._channel = connect(watched.current())
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def certificate_serial(self) -> int:
        """Return the serial number of the client certificate the channel calls go to presents."""
        return self._serial

    def current(self) -> grpc.aio.Channel:
        """Return the channel calls go to now, opening a new one first when the certificate files changed."""
        if self._watched.changed_since(self._generation):
            self._generation = self._watched.generation
            material = self._watched.current()
            old, self._channel = self._channel, self._connect(material)
            self._serial = material.identity.serial
            task = asyncio.get_running_loop().create_task(old.close(RETIRE_GRACE_SECONDS))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return self._channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Return a callable for a unary method that calls through the current channel."""
        return _Following(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Return a callable for a server-streaming method that calls through the current channel."""
        return _Following(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Return a callable for a client-streaming method that calls through the current channel."""
        return _Following(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Return a callable for a bidirectional method that calls through the current channel."""
        return _Following(self, "stream_stream", method, args, kwargs)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """Return the current channel's connectivity."""
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait for the current channel's connectivity to change from `last_observed_state`."""
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Wait until the current channel is ready."""
        await self.current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close the current channel (and any being retired) within `grace` seconds."""
        await self._channel.close(grace)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)


class _Following:
    """A method's multi-callable that resolves the channel at each call (kept per channel, made once each)."""

    __slots__ = ("_args", "_callable", "_channel", "_kind", "_kwargs", "_method", "_owner")

    def __init__(
        self, owner: ReloadingChannel, kind: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._owner = owner
        self._kind = kind
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._channel: grpc.aio.Channel | None = None
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        if channel is not self._channel:
            self._callable = getattr(channel, self._kind)(self._method, *self._args, **self._kwargs)
            self._channel = channel
        return self._callable(*args, **kwargs)


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
