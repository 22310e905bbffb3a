"""Revocation on every replica within two seconds: a revoked-serial set loaded from one CA's CRL (customer or
internal), kept current by the CA's WatchRevocations stream, and a short-lived status lookup while the stream is
down. The gateway follows the customer CA for its customers' certificates; the OTP and enrollment services follow
the internal CA and refuse a revoked internal caller (`RevokedPeers`, the gRPC server's peer check).

How a revocation reaches this replica:

1. At start (and after every reconnection) the watcher opens WatchRevocations, then loads the issuer's signed
   CRL: everything revoked before the stream was up is in the CRL, everything after arrives on the stream.
   Only then is the registry *live*.
2. While live, a check is a set lookup: the CA pushes each revocation (from any CA replica) as it commits, so a
   revoked serial is known here within the stream's latency. A CA that finds this watcher fell behind ends the
   stream (an error status): the watcher reconnects and reloads the CRL (step 1).
   Defence in depth: while live, the CRL is also re-read every `crl_refresh` seconds (60 by default; the
   gateway's KAGI_GATEWAY_CRL_REFRESH_SECONDS), so even an event lost on the way is refused within that time; a
   re-read that fails ends the stream too, so the checks fall back to asking the CA (step 3) until it is back.
3. While not live (the CA unreachable, the stream broken), each check asks the CA's GetCertificateStatus,
   trusting a "good" answer for at most `status_ttl` seconds (1 s by default), so a revocation still takes
   effect within 2 s. If the CA cannot answer either, the check fails closed (RevocationUnavailable).
4. The stream is reopened with exponential backoff and jitter (0.1 s doubling to 5 s).

Serials only ever join the set: a revocation is final.

Others keep copies that a revocation makes stale (the CRL files, the OCSP response cache): `on_revocation`
listeners are told of each revoked serial the stream delivers, and of each one a periodic CRL re-read finds that
the stream did not. `epoch` counts the stream's connections: a copy made before the current one may miss a
revocation made while the stream was down, and nothing is said of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import grpc
import structlog
from cryptography import x509
from prometheus_client import Counter, Gauge

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.errors import Unauthenticated, Unavailable
from kagi.runtime.grpc_server import client_trust_anchor
from kagi.runtime.metrics import metered, revocation_stream_lag
from kagi.runtime.settings import TlsFiles

log = structlog.get_logger("kagi.revocation")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
# Well under the CA's replay window for new subscribers (see _subscribed).
SUBSCRIBE_GRACE = 0.3
# Three missed heartbeats (the CA sends one every quiet second) and the stream counts as dead.
STREAM_SILENCE_LIMIT = 3.0
PEERS_START_WAIT = 3.0
"""How long a service waits at start for the internal CA's stream before it serves (checking with the CA)."""
_STATUS_CACHE_LIMIT = 65536


class Status(Enum):
    """What a revocation check concluded about a serial."""

    GOOD = "GOOD"
    REVOKED = "REVOKED"
    # Never issued by the followed CA, by the CA's own records.
    UNKNOWN = "UNKNOWN"


class RevocationUnavailable(Exception):
    """The stream is down and the CA cannot answer a status query either."""


class CrlRejected(Exception):
    """The CRL the CA returned is not signed by an issuing CA this replica trusts."""


class RevocationMetrics(Protocol):
    """The metrics a registry keeps (the gateway's GatewayMetrics has them)."""

    @property
    def revoked_serials(self) -> Gauge:
        """Return the gauge of how many serials are known revoked."""

    @property
    def backend_errors(self) -> Counter:
        """Return the counter of failed calls to the CA, by service ("ca") and code."""

    @property
    def revocation_events(self) -> Counter:
        """Return the counter of revocation events received."""

    @property
    def revocation_stream_up(self) -> Gauge:
        """Return the gauge that is 1 while the stream is live."""


_STATUS_FROM_PB = {
    ca_pb2.GetCertificateStatusResponse.STATUS_GOOD: Status.GOOD,
    ca_pb2.GetCertificateStatusResponse.STATUS_REVOKED: Status.REVOKED,
}


def crl_serials(der: bytes, issuers: Sequence[x509.Certificate]) -> set[int]:
    """Return the serials a DER CRL lists, after checking it was signed by one of `issuers`."""
    crl = x509.load_der_x509_crl(der)
    for issuer in issuers:
        if crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            return {entry.serial_number for entry in crl}
    raise CrlRejected("the CRL is not signed by a trusted issuing CA")


class RevocationRegistry:
    """Answers "is this certificate of the followed CA revoked?" per request (see the module doc).

    `issuer` is the CA followed (ISSUER_CUSTOMER for the gateway's customers, ISSUER_INTERNAL for kagi's own
    callers) and `issuing_cas` its certificates, which the CRL must be signed by.
    """

    def __init__(
        self,
        ca: ca_pb2_grpc.CertificateAuthorityServiceStub,
        issuing_cas: Sequence[x509.Certificate],
        metrics: RevocationMetrics | None = None,
        *,
        issuer: ca_pb2.Issuer.ValueType = ca_pb2.ISSUER_CUSTOMER,
        status_ttl: float = 1.0,
        call_timeout: float = 2.0,
        crl_refresh: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ca = ca
        self._issuing_cas = list(issuing_cas)
        self._metrics = metrics
        self._issuer = issuer
        self._status_ttl = status_ttl
        self._call_timeout = call_timeout
        self._crl_refresh = crl_refresh
        self._monotonic = monotonic
        self._revoked: set[int] = set()
        self._live = False
        self._became_live = asyncio.Event()
        self._status_cache: dict[int, tuple[float, Status]] = {}
        self._inflight: dict[int, asyncio.Future[Status]] = {}
        self._listeners: list[Callable[[int, int | None], None]] = []
        self._epoch = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        """Tell whether the stream is connected and the CRL loaded since its (re)connection."""
        return self._live

    @property
    def epoch(self) -> int:
        """Count the times this registry became live; a copy made in an earlier epoch may miss revocations."""
        return self._epoch

    @property
    def revoked_count(self) -> int:
        """Return how many serials this registry knows to be revoked."""
        return len(self._revoked)

    def on_revocation(self, listener: Callable[[int, int | None], None]) -> None:
        """Register `listener(issuer, serial)` for every revocation the stream delivers or a CRL re-read finds.

        `serial` is None when the event's serial cannot be read: then any serial of `issuer` may be revoked.
        """
        self._listeners.append(listener)

    async def start(self, wait: float) -> None:
        """Begin watching and waits up to `wait` seconds for the registry to become live."""
        self._task = asyncio.create_task(self._watch(), name="kagi-revocation-watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._became_live.wait(), wait)
        if not self._live:
            log.warning("revocation stream not up yet: checking each certificate with the CA meanwhile")

    async def stop(self) -> None:
        """End the watcher."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_live(False)

    async def status(self, serial: int, serial_hex: str) -> Status:
        """Return the serial's revocation status; raise RevocationUnavailable when it cannot be known."""
        if serial in self._revoked:
            return Status.REVOKED
        if self._live:
            return Status.GOOD
        return await self._query(serial, serial_hex)

    # -- the fallback --------------------------------------------------------------------------------------

    async def _query(self, serial: int, serial_hex: str) -> Status:
        now = self._monotonic()
        cached = self._status_cache.get(serial)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._inflight.get(serial)
        if pending is not None:
            # Concurrent requests for one certificate share one CA call.
            return await asyncio.shield(pending)
        future: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
        self._inflight[serial] = future
        try:
            status = await self._ask_ca(serial_hex)
        except BaseException as exc:
            # Whoever shares this lookup learns it failed; the status stays unknown here, so: fail closed.
            future.set_exception(RevocationUnavailable("the CA cannot answer a status query"))
            future.exception()  # retrieved here, so an unshared failure is not reported as unhandled
            if isinstance(exc, Exception):
                raise RevocationUnavailable("the CA cannot answer a status query") from None
            raise
        finally:
            self._inflight.pop(serial, None)
        future.set_result(status)
        if status is Status.REVOKED:
            self._revoked.add(serial)
            self._count_revoked()
        else:
            if len(self._status_cache) >= _STATUS_CACHE_LIMIT:
                self._status_cache.clear()
            self._status_cache[serial] = (self._monotonic() + self._status_ttl, status)
        return status

    async def _ask_ca(self, serial_hex: str) -> Status:
        request = ca_pb2.GetCertificateStatusRequest(serial_number=serial_hex, issuer=self._issuer)
        try:
            response = await self._ca.GetCertificateStatus(request, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as exc:
            self._count_error(exc.code().name)
            raise
        return _STATUS_FROM_PB.get(response.status, Status.UNKNOWN)

    # -- the stream ----------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        backoff = BACKOFF_INITIAL
        while True:
            call = self._ca.WatchRevocations(ca_pb2.WatchRevocationsRequest())
            refresher: asyncio.Task[None] | None = None
            try:
                await self._subscribed(call)
                await self._load_crl()
                self._set_live(True)
                refresher = asyncio.create_task(self._refresh_crl(), name="kagi-crl-refresh")
                backoff = BACKOFF_INITIAL
                log.info("revocation stream connected", revoked=len(self._revoked))
                while True:
                    # The CA sends a heartbeat every quiet second: silence means a dead connection.
                    event = await self._next_event(call, refresher)
                    if event is grpc.aio.EOF:
                        break
                    if not event.heartbeat:
                        self._revoked_now(event)
                log.warning("revocation stream ended by the CA")
            except asyncio.CancelledError:
                call.cancel()
                raise
            except TimeoutError:
                self._count_error("STREAM_SILENT")
                log.warning("revocation stream silent; reconnecting", silent_seconds=STREAM_SILENCE_LIMIT)
            except grpc.aio.AioRpcError as exc:
                self._count_error(exc.code().name)
                log.warning("revocation stream down", grpc_code=exc.code().name, retry_in=round(backoff, 2))
            except (CrlRejected, ValueError) as exc:
                log.error("CRL refused", issuer=self._issuer_name, error=str(exc))
            finally:
                self._set_live(False)
                call.cancel()
                if refresher is not None:
                    refresher.cancel()
                    if refresher.done() and not refresher.cancelled():
                        refresher.exception()  # seen (and handled above when it ended the stream)
            # Jitter keeps a fleet of gateways from reconnecting to a restarted CA in lockstep.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret
            backoff = min(backoff * 2, BACKOFF_MAX)

    @staticmethod
    async def _subscribed(call: grpc.aio.UnaryStreamCall) -> None:
        """Give the CA a moment to register the subscription before the CRL is loaded.

        The CA sends initial metadata once the subscription is registered, which ends the wait at once; the
        CA also replays the revocations of the last few seconds to a new subscriber, which covers whatever
        committed between this moment and the subscription, or too recently for the CRL. A call that already
        failed raises here.
        """
        headers = asyncio.ensure_future(call.initial_metadata())
        await asyncio.wait({headers}, timeout=SUBSCRIBE_GRACE)
        if not headers.done():
            headers.cancel()
        if call.done():
            code = await call.code()
            if code != grpc.StatusCode.OK:
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), await call.details())

    @staticmethod
    async def _next_event(call: grpc.aio.UnaryStreamCall, refresher: asyncio.Task[None]) -> Any:
        """Read the stream's next message; raise TimeoutError after the silence limit, or the periodic CRL
        re-read's error when that failed (either way the watcher reconnects)."""
        read = asyncio.ensure_future(call.read())
        try:
            done, _ = await asyncio.wait(
                {read, refresher}, timeout=STREAM_SILENCE_LIMIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not read.done():
                read.cancel()
        if read in done:
            return read.result()
        if refresher in done:
            refresher.result()  # raises what made the re-read fail
            raise RuntimeError("the CRL re-read ended")  # it never ends without an error
        raise TimeoutError

    async def _refresh_crl(self) -> None:
        """Re-read the CRL every `crl_refresh` seconds while the stream is live.

        A revocation the stream never delivered is thus refused within `crl_refresh` seconds (plus one CRL
        fetch). A re-read that fails ends the stream (see _next_event): the checks ask the CA meanwhile.
        """
        while True:
            await asyncio.sleep(self._crl_refresh)
            await self._load_crl(announce=True)
            log.debug("CRL re-read", issuer=self._issuer_name, revoked=len(self._revoked))

    async def _load_crl(self, *, announce: bool = False) -> None:
        """Add the issuer's CRL's serials to the set; with `announce`, tell the listeners of the new ones."""
        request = ca_pb2.GetCrlRequest(issuer=self._issuer)
        response = await self._ca.GetCrl(request, timeout=self._call_timeout * 5)
        serials = crl_serials(response.crl, self._issuing_cas)
        # A serial the stream never delivered was lost on the way. At a (re)connection nobody is told: the
        # new epoch already tells every copy that it may be stale.
        missed = serials - self._revoked if announce else set()
        self._revoked |= serials
        self._count_revoked()
        for serial in missed:
            log.warning("revocation found in the CRL but never streamed", serial=f"{serial:x}")
            for listener in self._listeners:
                listener(self._issuer, serial)

    def _revoked_now(self, event: ca_pb2.WatchRevocationsResponse) -> None:
        if self._metrics is not None:
            self._metrics.revocation_events.inc()
        if event.HasField("revoke_time"):  # how late the stream told us (the CA's clock against ours)
            lag = time.time() - event.revoke_time.ToNanoseconds() / 1e9
            revocation_stream_lag.labels(ca_pb2.Issuer.Name(event.issuer).removeprefix("ISSUER_").lower()).set(lag)
        serial: int | None = None
        try:
            serial = int(event.serial_number, 16)
        except ValueError:
            log.error("revocation event with an unreadable serial", serial=event.serial_number[:64])
        for listener in self._listeners:
            listener(event.issuer, serial)
        if event.issuer != self._issuer or serial is None:
            return
        self._revoked.add(serial)
        self._status_cache.pop(serial, None)
        self._count_revoked()
        log.info("certificate revoked", issuer=self._issuer_name, serial=event.serial_number)

    def _set_live(self, live: bool) -> None:
        if live and not self._live:
            self._epoch += 1
        self._live = live
        if self._metrics is not None:
            self._metrics.revocation_stream_up.set(1 if live else 0)
        if live:
            self._became_live.set()
        else:
            self._became_live.clear()

    @property
    def _issuer_name(self) -> str:
        return ca_pb2.Issuer.Name(self._issuer).removeprefix("ISSUER_").lower()

    def _count_revoked(self) -> None:
        if self._metrics is not None:
            self._metrics.revoked_serials.set(len(self._revoked))

    def _count_error(self, code: str) -> None:
        if self._metrics is not None:
            self._metrics.backend_errors.labels("ca", code).inc()


class RevokedPeers:
    """Refuses a kagi caller whose internal certificate the CA revoked: the gRPC server's peer check.

    A revoked caller is UNAUTHENTICATED (CALLER_CERTIFICATE_REVOKED) on every call, on a new connection or one
    it already had, within 2 s of its revocation. While the stream is down the CA is asked (each "good" trusted
    for 1 s); when it cannot answer either, calls fail closed: UNAVAILABLE (CALLER_REVOCATION_UNKNOWN), which
    callers retry. A serial the CA has no record of is not refused: the TLS handshake proved the internal CA
    signed it, and the live set (revocations only) could not refuse it either.
    """

    def __init__(self, registry: RevocationRegistry) -> None:
        self.registry = registry

    async def check_peer(self, serial: int) -> None:
        """Raise Unauthenticated when SERIAL is revoked, Unavailable when that cannot be known now."""
        try:
            status = await self.registry.status(serial, format(serial, "x"))
        except RevocationUnavailable:
            raise Unavailable(
                "the caller's certificate cannot be checked for revocation now (the CA is unreachable); retry",
                reason="CALLER_REVOCATION_UNKNOWN",
            ) from None
        if status is Status.REVOKED:
            raise Unauthenticated("the caller's certificate is revoked", reason="CALLER_CERTIFICATE_REVOKED")

    async def start(self, wait: float) -> None:
        """Begin following the internal CA; wait up to `wait` seconds for the stream (see RevocationRegistry)."""
        await self.registry.start(wait)

    async def stop(self) -> None:
        """Stop following."""
        await self.registry.stop()


@dataclass(frozen=True)
class _PeerMetrics:
    """What a service's follower of the internal CA reports (prometheus-client's default registry)."""

    revoked_serials: Gauge
    backend_errors: Counter
    revocation_events: Counter
    revocation_stream_up: Gauge


@functools.cache
def _peer_metrics() -> _PeerMetrics:
    # Made on first use, so that only the services (not the gateway, which has its own) carry them.
    return _PeerMetrics(
        revoked_serials=Gauge(
            "kagi_internal_revoked_serials",
            "Internal certificate serials this process knows to be revoked (its callers are refused).",
            multiprocess_mode="liveall",
        ),
        backend_errors=Counter(
            "kagi_internal_revocation_errors",
            "Failed calls to the CA while following the internal CA's revocations, by gRPC status code.",
            ["service", "code"],
        ),
        revocation_events=Counter(
            "kagi_internal_revocation_events", "Revocation events received on the CA's revocation stream."
        ),
        revocation_stream_up=Gauge(
            "kagi_internal_revocation_stream_connected",
            "1 while the internal CA's revocation stream is connected and its CRL loaded; 0: each caller is "
            "checked with the CA, and calls fail closed when it cannot answer.",
            multiprocess_mode="liveall",
        ),
    )


def follow_internal_ca(channel: grpc.aio.Channel, tls: TlsFiles) -> RevokedPeers:
    """Return the peer check of a service whose callers the internal CA certifies, following it over `channel`.

    The CRL must be signed by the CA the service trusts its callers under (`client_trust_anchor`: the internal
    CA). Call `start` before serving and `stop` when done.
    """
    internal = x509.load_pem_x509_certificates(client_trust_anchor(tls))
    stub = ca_pb2_grpc.CertificateAuthorityServiceStub(metered(channel))  # unary calls timed (kagi_grpc_client_*)
    return RevokedPeers(RevocationRegistry(stub, internal, _peer_metrics(), issuer=ca_pb2.ISSUER_INTERNAL))
