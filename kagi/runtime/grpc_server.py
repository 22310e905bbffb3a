"""The gRPC server bootstrap every kagi service uses: mTLS, per-RPC allow-lists, request ids, error mapping,
logging, server reflection and the standard health service.

Callers' certificates are verified against the internal CA alone (not the root the customer CA shares), so a
customer certificate fails the TLS handshake on every port, health and reflection included. Requests are capped
at MAX_REQUEST_BYTES before anything runs; answers (CRLs, list pages) may be up to MAX_RESPONSE_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from kagi.errors import InvalidArgument, KagiError, PermissionDenied, Unauthenticated
from kagi.runtime.grpc_errors import internal_status, to_status
from kagi.runtime.identity import ANONYMOUS, PLAINTEXT_CALLER, Caller, Role, caller_from_pem
from kagi.runtime.logging import REQUEST_ID_HEADER, new_request_id, request_id_var
from kagi.runtime.metrics import observe_served_call
from kagi.runtime.settings import ListenSettings, TlsFiles
from kagi.runtime.tls_reload import FileProblem, TlsMaterial, watch_tls_files

log = structlog.get_logger("kagi.grpc")

caller_var: ContextVar[Caller] = ContextVar("kagi_caller", default=ANONYMOUS)
metadata_var: ContextVar[Mapping[str, str]] = ContextVar("kagi_metadata", default={})  # noqa: B039

CLIENT_CERT_SERIAL_HEADER = "x-kagi-client-cert-serial"
CLIENT_CERT_SHA256_HEADER = "x-kagi-client-cert-sha256"
CLIENT_CERT_SUBJECT_HEADER = "x-kagi-client-cert-subject"
# The customer's address as the gateway saw it (per-address throttles); believed from the gateway only.
CLIENT_ADDRESS_HEADER = "x-kagi-client-address"
_RELAYED_HEADERS = (
    CLIENT_CERT_SERIAL_HEADER,
    CLIENT_CERT_SHA256_HEADER,
    CLIENT_CERT_SUBJECT_HEADER,
    CLIENT_ADDRESS_HEADER,
)
# Only the kagi gateway terminates customers' mTLS and relays what it verified; a bank front-end passes the
# certificate itself in the request (UserService), where the enrollment service checks it.
_CLIENT_CERT_RELAYS = frozenset({Role.GATEWAY})

# Health and reflection are open to any caller that passed the TLS handshake: operators and probes use them.
_OPEN_SERVICES = frozenset({"grpc.health.v1.Health", reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"})

MAX_REQUEST_BYTES = 64 * 1024
"""Caps every request a kagi server receives, refused (RESOURCE_EXHAUSTED) before the method or
the role check runs. The largest requests carry a CSR or a client certificate, each capped at 16 KiB by its
service."""

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""The largest answer a server sends and a client accepts: a CRL of 100k revoked
certificates is about 5 MB of DER."""

MAX_MESSAGE_BYTES = MAX_RESPONSE_BYTES
"""MAX_RESPONSE_BYTES under its former name (what clients accept)."""


def client_trust_anchor(tls: TlsFiles) -> bytes:
    """Return the PEM of the CA a server verifies its callers' certificates against.

    That is `tls.client_ca_file` when set, else the issuer of the server's own certificate taken from its chain
    (the internal CA: every kagi service certificate comes from it). Never the root: the customer CA shares the
    root, so trusting it would let a customer certificate through the handshake. A chain without the issuer, or
    an issuer that is itself a root, is refused with the setting to use.
    """
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return trust_anchor_of(tls, tls.cert_file.read_bytes(), client_ca)


def trust_anchor_of(tls: TlsFiles, chain_pem: bytes, client_ca_pem: bytes | None) -> bytes:
    """Return `client_trust_anchor` for the given contents of `tls`'s certificate chain and client CA files."""
    if client_ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(client_ca_pem)
        except ValueError:
            raise InvalidArgument(
                f"{tls.client_ca_file} holds no PEM certificate", fields={"client_ca_file": "not a PEM certificate"}
            ) from None
        return client_ca_pem
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise InvalidArgument(
            f"{tls.cert_file} holds no PEM certificate", fields={"cert_file": "not a PEM certificate"}
        ) from None
    leaf = chain[0]
    for candidate in chain[1:]:
        if candidate.subject != leaf.issuer or not _issued(leaf, candidate):
            continue
        if candidate.subject == candidate.issuer:
            break  # a root: set the internal CA explicitly
        return candidate.public_bytes(serialization.Encoding.PEM)
    raise InvalidArgument(
        f"cannot tell which CA to trust callers under: {tls.cert_file} should hold the server's certificate followed "
        "by the internal CA that issued it, or set KAGI_<C>_TLS_CLIENT_CA to the internal CA certificate",
        reason="CLIENT_CA_UNKNOWN",
        fields={"client_ca_file": "set it to the internal CA certificate"},
    )


def _issued(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def current_caller() -> Caller:
    """Return the authenticated caller of the RPC being served."""
    return caller_var.get()


@dataclass(frozen=True, slots=True)
class RelayedCertificate:
    """A customer's client certificate as verified and relayed by the gateway."""

    serial_number: str
    fingerprint_sha256: str
    subject: str


def relayed_client_certificate() -> RelayedCertificate:
    """Return the customer certificate the gateway verified for this request.

    The metadata is trusted only when the caller is the gateway; anyone else sending it is refused, so a
    service never believes a certificate it did not see verified.
    """
    _check_relay(current_caller())
    metadata = metadata_var.get()
    serial = metadata.get(CLIENT_CERT_SERIAL_HEADER, "")
    fingerprint = metadata.get(CLIENT_CERT_SHA256_HEADER, "")
    if not serial or not fingerprint:
        raise Unauthenticated("this step needs the client certificate", reason="CLIENT_CERT_REQUIRED")
    return RelayedCertificate(serial.lower(), fingerprint.lower(), metadata.get(CLIENT_CERT_SUBJECT_HEADER, ""))


def relayed_client_address() -> str:
    """Return the customer's address the gateway relayed for this call ("" when none).

    Only the gateway (or a plaintext development caller) is believed; `_enter` refuses it from anyone else.
    """
    caller = current_caller()
    if not caller.plaintext and caller.role not in _CLIENT_CERT_RELAYS:
        return ""
    return metadata_var.get().get(CLIENT_ADDRESS_HEADER, "")[:64]


def _check_relay(caller: Caller) -> None:
    if not caller.plaintext and caller.role not in _CLIENT_CERT_RELAYS:
        raise PermissionDenied(
            "a client certificate is only accepted as relayed by the kagi gateway",
            reason="CLIENT_CERT_NOT_RELAYED",
        )


class PeerRevocation(Protocol):
    """Tells a server whether a caller's internal certificate is revoked (kagi.clients.revocation.RevokedPeers,
    or the CA's own records)."""

    async def check_peer(self, serial: int) -> None:
        """Raise Unauthenticated (CALLER_CERTIFICATE_REVOKED) if revoked, Unavailable if that cannot be known."""


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to serve: how to register it and which roles may call each method.

    A method missing from `allowed_roles` may be called by no one: access is denied by default.
    """

    name: str
    register: Callable[[grpc.aio.Server], None]
    allowed_roles: Mapping[str, frozenset[Role]]


@dataclass
class _Policy:
    allowed: dict[str, frozenset[Role]] = field(default_factory=dict)


class KagiServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates the caller, applies the allow-list and maps errors, per RPC.

    A method's wrapped handler is built once, on its first call, and kept: the per-call work is the checks
    themselves (caller, allow-list, relayed headers), the request id and the error mapping, nothing more.
    """

    def __init__(
        self,
        bindings: Sequence[ServiceBinding],
        *,
        domain: str,
        plaintext: bool,
        peers: PeerRevocation | None = None,
    ) -> None:
        self._policies = {b.name: dict(b.allowed_roles) for b in bindings}
        self._domain = domain
        self._plaintext = plaintext
        self._peers = peers
        # Wrapped handlers by full method name; only methods the server has (a handler was found) are kept.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._log_ok = False

    def log_successes(self, enabled: bool) -> None:
        """Say whether each successful call gets its access line (INFO; failures always get theirs)."""
        self._log_ok = enabled

    def _served(self, method: str, code: str, start: float, error: BaseException | None = None) -> None:
        """Record the call's metrics and write its access line (its request id comes from the log context)."""
        seconds = time.perf_counter() - start
        caller = caller_var.get()
        role = caller.role.value if caller.role is not None else ("plaintext" if caller.plaintext else "anonymous")
        observe_served_call(method, code, role, seconds, error)
        if error is None and not self._log_ok:
            return
        reason = {"reason": error.reason} if isinstance(error, KagiError) else {}
        log.info("rpc", method=method, role=role, grpc_code=code, ms=round(seconds * 1000, 2), **reason)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        wrapped = self._handlers.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:
            return None
        wrapped = self._wrap(handler, details.method)
        self._handlers[details.method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, _, method = full_method.lstrip("/").partition("/")
        if service in _OPEN_SERVICES:
            allowed: frozenset[Role] | None = None
        else:
            allowed = self._policies.get(service, {}).get(method, frozenset())
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, full_method, method, allowed),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, full_method, method, allowed),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _enter(self, context: grpc.aio.ServicerContext, method: str, allowed: frozenset[Role] | None) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        metadata_var.set(metadata)
        request_id = metadata.get(REQUEST_ID_HEADER) or new_request_id()
        request_id_var.set(request_id[:128])
        caller = self._caller(context)
        caller_var.set(caller)
        # Per call, so a revoked caller is refused on a connection it opened before the revocation too. Health and
        # reflection (allowed None) stay open to whoever passed the handshake, as the probes need.
        if self._peers is not None and caller.serial is not None and allowed is not None:
            await self._peers.check_peer(caller.serial)
        if allowed is not None:
            caller.require(allowed, method)
        if any(header in metadata for header in _RELAYED_HEADERS):
            # Refused, not ignored: a caller that sends a customer's identity it may not relay is probing.
            _check_relay(caller)

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        if self._plaintext:
            return PLAINTEXT_CALLER
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            return ANONYMOUS
        return caller_from_pem(pems[0])

    async def _fail(self, context: grpc.aio.ServicerContext, method: str, exc: BaseException, start: float) -> None:
        if isinstance(exc, KagiError):
            status = to_status(exc, domain=self._domain)
            self._served(method, exc.kind.value, start, exc)
        else:
            status = internal_status()
            log.error("rpc crashed", method=method, exc_info=exc)
            self._served(method, "INTERNAL", start, exc)
        await context.abort_with_status(rpc_status.to_status(status))

    def _wrap_unary(
        self,
        inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
        full_method: str,
        method: str,
        allowed: frozenset[Role] | None,
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                await self._enter(context, method, allowed)
                response = await inner(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # every failure becomes a status; unknown ones say nothing more
                await self._fail(context, full_method, exc, start)
                raise AssertionError("abort_with_status returned") from exc  # pragma: no cover
            self._served(full_method, "OK", start)
            return response

        return behavior

    def _wrap_stream(
        self,
        inner: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
        full_method: str,
        method: str,
        allowed: frozenset[Role] | None,
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            try:
                await self._enter(context, method, allowed)
                async for item in inner(request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await self._fail(context, full_method, exc, start)
            else:
                self._served(full_method, "OK", start)

        return behavior


class GrpcServer:
    """Runs one or more kagi gRPC services on one port with health and reflection."""

    def __init__(
        self,
        listen: ListenSettings,
        bindings: Sequence[ServiceBinding],
        *,
        domain: str,
        readiness: Callable[[], Awaitable[None]] | None = None,
        readiness_interval: float = 5.0,
        peers: PeerRevocation | None = None,
    ) -> None:
        self._listen = listen
        self._bindings = list(bindings)
        self._readiness = readiness
        self._readiness_interval = readiness_interval
        self._readiness_task: asyncio.Task[None] | None = None
        self.health = HealthServicer()
        self.port = 0
        self.certificate_serial: int | None = None
        """The serial number of the certificate new handshakes get (None in plaintext)."""
        self._interceptor = KagiServerInterceptor(
            self._bindings, domain=domain, plaintext=listen.tls is None, peers=peers
        )
        self._server = grpc.aio.server(
            interceptors=[self._interceptor],
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        for binding in self._bindings:
            binding.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [b.name for b in self._bindings]
        reflection.enable_server_reflection([*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], self._server)

    @property
    def service_names(self) -> list[str]:
        """Return the kagi services this server carries."""
        return [b.name for b in self._bindings]

    async def start(self) -> int:
        """Bind the port (returning it: 0 asks for a free one) and begin serving."""
        if self._listen.tls is None:
            self.port = self._server.add_insecure_port(self._listen.address)
        else:
            self.port = self._server.add_secure_port(self._listen.address, self._server_credentials(self._listen.tls))
        if self.port == 0:
            raise OSError(f"cannot listen on {self._listen.address}")
        # Logging is configured by now (main does it first); above INFO, a success costs no log call at all.
        self._interceptor.log_successes(log.is_enabled_for(logging.INFO))
        await self._server.start()
        await self._set_serving(self._readiness is None)
        if self._readiness is not None:
            await self.check_readiness()
            self._readiness_task = asyncio.create_task(self._watch_readiness())
        log.info(
            "grpc server started",
            address=self._listen.address,
            port=self.port,
            services=self.service_names,
            mtls=self._listen.tls is not None,
        )
        return self.port

    def _server_credentials(self, tls: TlsFiles) -> grpc.ServerCredentials:
        """Return credentials that follow the certificate files: gRPC asks the fetcher at each new handshake,
        and the fetcher hands it a new configuration once the files changed (or SIGHUP came) and check out."""
        # Callers are verified against the internal CA alone (BoringSSL accepts an intermediate as the
        # anchor: a chain leaf -> internal CA verifies, one through the customer CA does not).
        client_trust_anchor(tls)  # a chain that names no CA to trust callers under refuses to start

        def load(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
            try:
                anchor = trust_anchor_of(tls, material.identity.chain_pem, material.client_ca_pem)
            except InvalidArgument as exc:
                raise FileProblem(str(exc)) from None
            return grpc.ssl_server_certificate_configuration(
                [(material.identity.key_pem, material.identity.chain_pem)], root_certificates=anchor
            )

        watched = watch_tls_files(tls, what=f"grpc server {self._listen.address}")
        initial = load(watched.current())
        self.certificate_serial = watched.current().identity.serial
        seen = watched.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal seen
            if not watched.changed_since(seen):
                return None
            seen = watched.generation
            material = watched.current()
            try:
                configuration = load(material)
            except FileProblem as exc:
                log.warning("tls files not reloaded: the previous ones stay in use", problem=str(exc))
                return None
            self.certificate_serial = material.identity.serial
            return configuration

        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)

    async def check_readiness(self) -> bool:
        """Run the readiness probe once and publish SERVING or NOT_SERVING."""
        if self._readiness is None:
            return True
        try:
            await self._readiness()
        except Exception as exc:  # any failure of a dependency means not ready; the reason is logged
            log.warning("not ready", error=str(exc))
            await self._set_serving(False)
            return False
        await self._set_serving(True)
        return True

    async def _watch_readiness(self) -> None:
        while True:
            await asyncio.sleep(self._readiness_interval)
            await self.check_readiness()

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, lets calls in flight finish for up to `grace` seconds, then close."""
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def wait(self) -> None:
        """Return when the server has stopped."""
        await self._server.wait_for_termination()
