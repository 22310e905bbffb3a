"""TLS for the gateway: the HTTPS server context, the HTTPS listener that counts handshakes, and the per-request
check that a client certificate was issued by the customer CA and is still within its validity."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import tempfile
from asyncio import sslproto
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.edge import ConnectionGuard, GuardedRequestHandler
from gateway.errors import HttpError
from gateway.metrics import GatewayMetrics
from kagi.runtime.grpc_server import (
    CLIENT_CERT_SERIAL_HEADER,
    CLIENT_CERT_SHA256_HEADER,
    CLIENT_CERT_SUBJECT_HEADER,
)
from kagi.runtime.tls_reload import CertifiedKey, watch_key_pair

log = structlog.get_logger("kagi.gateway.tls")

# TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are all acceptable and stay at their defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
HANDSHAKE_TIMEOUT_SECONDS = 10
_CACHE_SIZE = 4096

MSG_CERT_REQUIRED = (
    "電子証明書が必要です。発行した電子証明書を選択してください"
    " / this step needs your client certificate: choose the certificate that was issued to you"
)
MSG_CERT_NOT_CUSTOMER = (
    "この電子証明書はご利用いただけません / this certificate was not issued by the bank's customer CA"
)
MSG_CERT_EXPIRED = "電子証明書の有効期限が切れています / the client certificate has expired"
MSG_CERT_NOT_YET_VALID = "電子証明書の有効期間前です / the client certificate is not valid yet"

# OpenSSL X509_V_ERR_* codes a client certificate fails the handshake with, as metric reasons.
_VERIFY_REASONS = {
    2: "untrusted_issuer",  # unable to get issuer certificate
    9: "not_yet_valid",
    10: "expired",
    18: "untrusted_issuer",  # self-signed leaf
    19: "untrusted_issuer",  # self-signed certificate in chain
    20: "untrusted_issuer",  # unable to get local issuer certificate
    21: "untrusted_issuer",  # unable to verify the first certificate
    26: "invalid_purpose",
}


def server_context(identity: CertifiedKey, client_ca_pem: str) -> ssl.SSLContext:
    """Return the HTTPS context: TLS 1.2+, the gateway's HTTPS certificate, optional client certificates.

    Client certificates are optional at the handshake (steps 1-4 and the app have none) but, when presented,
    must chain to `client_ca_pem` (root and customer CA) or the handshake fails. Routes that need one then
    check that it comes from the customer CA itself, since an internal-CA certificate chains to the same root.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    load_certified_key(context, identity)
    context.load_verify_locations(cadata=client_ca_pem)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_alpn_protocols(["http/1.1"])
    return context


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """Yield a path to `data` held in memory (Linux memfd), or else in a private temporary file."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        descriptor = memfd_create("kagi-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(descriptor, data)
            yield f"/proc/self/fd/{descriptor}"
        finally:
            os.close(descriptor)
        return
    with tempfile.TemporaryDirectory(prefix="kagi-tls-") as directory:
        path = Path(directory) / "pem"
        path.touch(mode=0o600)
        path.write_bytes(data)
        yield str(path)


def load_certified_key(context: ssl.SSLContext, identity: CertifiedKey) -> None:
    """Put a checked certificate chain and key into `context` (new handshakes present them).

    They are loaded from the bytes already checked, never from the files again, so a file replaced meanwhile
    cannot slip in a key that does not match.
    """
    with _memory_file(identity.chain_pem) as chain, _memory_file(identity.key_pem) as key:
        context.load_cert_chain(chain, key)


class HttpsCertificate:
    """The HTTPS listener's context, kept on the current certificate files (KAGI_GATEWAY_PUBLIC_TLS_CERT / _KEY,
    or the internal identity's): a changed pair that checks out is loaded into the same context at the next
    handshake (at most a second after the change, or after SIGHUP); one that does not is logged and ignored."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_pem: str) -> None:
        self._watched = watch_key_pair(cert_file, key_file, what="gateway https certificate")
        self._generation = self._watched.generation
        self.serial = self._watched.current().serial
        self.context = server_context(self._watched.current(), client_ca_pem)

    def __call__(self) -> ssl.SSLContext:
        """Return the context for a new handshake, with the current certificate in it."""
        if self._watched.changed_since(self._generation):
            self._generation = self._watched.generation
            identity = self._watched.current()
            try:
                load_certified_key(self.context, identity)
            except (ssl.SSLError, OSError) as exc:
                log.warning("https certificate not reloaded: the previous one stays in use", problem=str(exc))
            else:
                self.serial = identity.serial
        return self.context


def ascii_rfc4514(name: x509.Name) -> str:
    """Return the RFC 4514 string of `name` with every non-ASCII character escaped as \\XX octets.

    RFC 4514 section 2.4 allows this escape; it keeps Japanese company and user names fit for gRPC metadata,
    whose text values must be printable ASCII.
    """
    text = name.rfc4514_string()
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        c if c.isascii() and c.isprintable() else "".join(f"\\{octet:02x}" for octet in c.encode()) for c in text
    )


def load_customer_cas(bundle_pem: bytes) -> list[x509.Certificate]:
    """Pick the issuing CAs (CA certificates that are not self-signed) out of a bundle.

    Raises ValueError when the bundle holds none: the gateway cannot check issuers without one.
    """
    issuing = []
    for certificate in x509.load_pem_x509_certificates(bundle_pem):
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if constraints.ca and certificate.issuer != certificate.subject:
            issuing.append(certificate)
    if not issuing:
        raise ValueError("the customer CA bundle holds no intermediate (customer) CA certificate")
    return issuing


@dataclass(frozen=True, slots=True)
class CustomerCertificate:
    """A client certificate the customer CA issued, as relayed to the services."""

    serial: int
    serial_hex: str
    fingerprint_sha256: str
    subject: str
    not_before: float
    not_after: float
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Refused:
    status: int
    reason: str
    metric: str
    message: str


class CustomerCertificateVerifier:
    """Checks, per request, the certificate the TLS handshake verified.

    The handshake has already checked the chain to the root, the validity at that moment and the purpose.
    This adds what the handshake cannot: the issuer is the customer CA (authority key identifier equal to its
    subject key identifier and the signature made by its key), and the certificate is still valid *now*
    (a resumed session or a long kept-alive connection is not re-verified by TLS). Results are cached by
    DER, so a client's repeated requests cost one dictionary lookup and two comparisons.
    """

    def __init__(self, customer_cas: Sequence[x509.Certificate], metrics: GatewayMetrics) -> None:
        self._cas = [(ca, _subject_key_id(ca)) for ca in customer_cas]
        self._metrics = metrics
        self._cache: dict[bytes, CustomerCertificate | _Refused] = {}

    def check(self, der: bytes | None, now: float) -> CustomerCertificate:
        """Return the verified customer certificate, or raise HttpError 401/403 with a reason."""
        if der is None:
            self._metrics.certificate_rejections.labels("missing").inc()
            raise HttpError(401, "CLIENT_CERT_REQUIRED", MSG_CERT_REQUIRED)
        result = self._cache.get(der)
        if result is None:
            result = self._examine(der)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[der] = result
        if isinstance(result, _Refused):
            self._metrics.certificate_rejections.labels(result.metric).inc()
            raise HttpError(result.status, result.reason, result.message)
        if now >= result.not_after:
            self._metrics.certificate_rejections.labels("expired").inc()
            raise HttpError(401, "CLIENT_CERT_EXPIRED", MSG_CERT_EXPIRED)
        if now < result.not_before:
            self._metrics.certificate_rejections.labels("not_yet_valid").inc()
            raise HttpError(401, "CLIENT_CERT_NOT_YET_VALID", MSG_CERT_NOT_YET_VALID)
        return result

    def _examine(self, der: bytes) -> CustomerCertificate | _Refused:
        refused = _Refused(403, "CLIENT_CERT_NOT_CUSTOMER", "not_customer_ca", MSG_CERT_NOT_CUSTOMER)
        try:
            certificate = x509.load_der_x509_certificate(der)
            aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except (ValueError, x509.ExtensionNotFound):
            return refused
        issuer = next((ca for ca, ski in self._cas if aki is not None and aki == ski), None)
        if issuer is None:
            return refused
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return refused
        if not _client_auth(certificate):
            return _Refused(403, "CLIENT_CERT_NOT_CUSTOMER", "not_client_auth", MSG_CERT_NOT_CUSTOMER)
        serial_hex = format(certificate.serial_number, "x")
        fingerprint = hashlib.sha256(der).hexdigest()
        subject = ascii_rfc4514(certificate.subject)
        return CustomerCertificate(
            serial=certificate.serial_number,
            serial_hex=serial_hex,
            fingerprint_sha256=fingerprint,
            subject=subject,
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
            metadata=(
                (CLIENT_CERT_SERIAL_HEADER, serial_hex),
                (CLIENT_CERT_SHA256_HEADER, fingerprint),
                (CLIENT_CERT_SUBJECT_HEADER, subject),
            ),
        )


def _subject_key_id(ca: x509.Certificate) -> bytes:
    try:
        return ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest


def _client_auth(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def peer_certificate(request: web.Request) -> bytes | None:
    """Return the DER client certificate of the request's TLS connection, or None."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


def _failure_reason(exc: BaseException) -> tuple[str, str | None]:
    """_failure_reason names a failed handshake for the metrics, and the client-certificate reason if any."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code, "verify_failed")
        return "client_certificate_" + reason, "handshake_" + reason
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "ssl_error").lower(), None
    if isinstance(exc, TimeoutError):
        return "timeout", None
    return "connection_lost", None


class _AlertingSslProtocol(sslproto.SSLProtocol):
    """_AlertingSslProtocol is asyncio's TLS protocol, except that a failed handshake sends its alert.

    asyncio drops what OpenSSL wrote after a fatal handshake error, so the client sees a bare close instead of
    "certificate expired" or "unknown CA": a browser then cannot say why its certificate was refused.
    """

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):  # best effort: the connection is being closed anyway
                self._process_outgoing()  # type: ignore[attr-defined]  # typeshed lags the 3.11 protocol
        super()._on_handshake_complete(handshake_exc)


async def _start_tls(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
) -> asyncio.Transport:
    """_start_tls is loop.start_tls (server side) with _AlertingSslProtocol; it raises when the handshake fails."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls_protocol = _AlertingSslProtocol(
        loop,
        protocol,
        context,
        waiter,
        server_side=True,
        ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]  # typeshed says int; float works
        call_connection_made=False,
    )
    transport.set_protocol(tls_protocol)
    loop.call_soon(tls_protocol.connection_made, transport)
    loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    app_transport: asyncio.Transport = tls_protocol._app_transport
    return app_transport


class _TlsAcceptor(asyncio.Protocol):
    """_TlsAcceptor takes a new TCP connection through the TLS handshake, then hands it to aiohttp.

    Doing the handshake here (rather than with create_server(ssl=...)) lets the gateway see each handshake's
    outcome (failures and their reasons, resumption, protocol version) and send the alert of a failed one.
    """

    def __init__(self, listener: TlsListener) -> None:
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Nothing may be read before start_tls takes the transport over: the ClientHello is the TLS layer's.
        transport.pause_reading()
        self._listener.accepted(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """A connection closed before its handshake began; nothing to clean up."""


class TlsListener(web.BaseSite):
    """An aiohttp site serving HTTPS on host:port, counting connections and handshakes.

    With a `guard`, a connection over its caps is closed at accept, before any TLS work is spent on it.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        context: ssl.SSLContext | Callable[[], ssl.SSLContext],
        metrics: GatewayMetrics,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
        guard: ConnectionGuard | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._guard = guard
        self._handshake_timeout = handshake_timeout
        self._host = host
        self._requested_port = port
        self._context = context
        self._metrics = metrics
        self._reuse_port = reuse_port
        self._pending: set[asyncio.Task[None]] = set()
        self.port = port

    @property
    def name(self) -> str:
        """Return the site's URL."""
        return f"https://{self._host}:{self.port}"

    async def start(self) -> None:
        """Bind the port and begin accepting connections."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _TlsAcceptor(self),
            self._host,
            self._requested_port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listening socket and abandon handshakes in progress."""
        await super().stop()
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def accepted(self, transport: asyncio.Transport) -> None:
        """Start the handshake of a new connection."""
        self._metrics.connections.inc()
        key: str | None = None
        if self._guard is not None:
            peer = transport.get_extra_info("peername")
            key = self._guard.admit(str(peer[0]) if peer else "")
            if key is None:
                transport.abort()  # over a cap: closed before the handshake, the cheapest refusal there is
                return
        task = asyncio.get_running_loop().create_task(self._handshake(transport, key))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _handshake(self, transport: asyncio.Transport, key: str | None) -> None:
        server = self._runner.server
        assert server is not None
        protocol = server()
        if key is not None and self._guard is not None:
            if isinstance(protocol, GuardedRequestHandler):
                protocol.guard_key = key  # uncounted when the connection closes
            else:
                self._guard.release(key)
                key = None
        try:
            context = self._context if isinstance(self._context, ssl.SSLContext) else self._context()
            tls = await _start_tls(transport, protocol, context, self._handshake_timeout)
        except BaseException as exc:
            if key is not None and self._guard is not None:
                self._guard.release(key)
            if not isinstance(exc, OSError | TimeoutError | ConnectionError):
                raise
            reason, certificate_reason = _failure_reason(exc)
            self._metrics.handshake_failures.labels(reason).inc()
            if certificate_reason:
                self._metrics.certificate_rejections.labels(certificate_reason).inc()
            transport.abort()
            return
        ssl_object = tls.get_extra_info("ssl_object")
        self._metrics.handshakes.labels(
            ssl_object.version() or "unknown",
            "true" if ssl_object.session_reused else "false",
            "true" if ssl_object.getpeercert(binary_form=True) is not None else "false",
        ).inc()
        protocol.connection_made(tls)
