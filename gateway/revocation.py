"""Revocation on every gateway replica within two seconds: a revoked-serial set loaded from the customer CRL,
kept current by the CA's WatchRevocations stream, and a short-lived status lookup while the stream is down.

How a revocation reaches this replica:

1. At start (and after every reconnection) the watcher opens WatchRevocations, then loads the signed customer
   CRL: everything revoked before the stream was up is in the CRL, everything after arrives on the stream.
   Only then is the registry *live*.
2. While live, a request's check is a set lookup: the CA pushes each revocation (from any CA replica) as it
   commits, so a revoked serial is known here within the stream's latency. A CA that finds this watcher fell
   behind ends the stream (an error status): the watcher reconnects and reloads the CRL (step 1).
   Defence in depth: while live, the CRL is also re-read every `crl_refresh` seconds (60 by default,
   KAGI_GATEWAY_CRL_REFRESH_SECONDS), so even an event lost on the way is refused within that time; a re-read
   that fails ends the stream too, so the checks fall back to asking the CA (step 3) until it is back.
3. While not live (the CA unreachable, the stream broken), each check asks the CA's GetCertificateStatus,
   trusting a "good" answer for at most `status_ttl` seconds (1 s by default), so a revocation still takes
   effect within 2 s. If the CA cannot answer either, the check fails closed (503).
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
import random
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import grpc
import structlog
from cryptography import x509

from gateway.metrics import GatewayMetrics
from kagi.ca.v1 import ca_pb2, ca_pb2_grpc

log = structlog.get_logger("kagi.gateway.revocation")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
# Well under the CA's replay window for new subscribers (see _subscribed).
SUBSCRIBE_GRACE = 0.3
# Three missed heartbeats (the CA sends one every quiet second) and the stream counts as dead.
STREAM_SILENCE_LIMIT = 3.0
_STATUS_CACHE_LIMIT = 65536


class Status(Enum):
    """What a revocation check concluded about a serial."""

    GOOD = "GOOD"
    REVOKED = "REVOKED"
    # Never issued by the customer CA, by the CA's own records: never accepted.
    UNKNOWN = "UNKNOWN"


class RevocationUnavailable(Exception):
    """The stream is down and the CA cannot answer a status query either."""


class CrlRejected(Exception):
    """The CRL the CA returned is not signed by a customer CA this gateway trusts."""


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
    raise CrlRejected("the customer CRL is not signed by a trusted customer CA")


class RevocationRegistry:
    """Answers "is this customer certificate revoked?" per request (see the module doc)."""

    def __init__(
        self,
        ca: ca_pb2_grpc.CertificateAuthorityServiceStub,
        customer_cas: Sequence[x509.Certificate],
        metrics: GatewayMetrics,
        *,
        status_ttl: float = 1.0,
        call_timeout: float = 2.0,
        crl_refresh: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ca = ca
        self._customer_cas = list(customer_cas)
        self._metrics = metrics
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
            self._metrics.revoked_serials.set(len(self._revoked))
        else:
            if len(self._status_cache) >= _STATUS_CACHE_LIMIT:
                self._status_cache.clear()
            self._status_cache[serial] = (self._monotonic() + self._status_ttl, status)
        return status

    async def _ask_ca(self, serial_hex: str) -> Status:
        request = ca_pb2.GetCertificateStatusRequest(serial_number=serial_hex, issuer=ca_pb2.ISSUER_CUSTOMER)
        try:
            response = await self._ca.GetCertificateStatus(request, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as exc:
            self._metrics.backend_errors.labels("ca", exc.code().name).inc()
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
                self._metrics.backend_errors.labels("ca", "STREAM_SILENT").inc()
                log.warning("revocation stream silent; reconnecting", silent_seconds=STREAM_SILENCE_LIMIT)
            except grpc.aio.AioRpcError as exc:
                self._metrics.backend_errors.labels("ca", exc.code().name).inc()
                log.warning("revocation stream down", grpc_code=exc.code().name, retry_in=round(backoff, 2))
            except (CrlRejected, ValueError) as exc:
                log.error("customer CRL refused", error=str(exc))
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
            log.debug("customer CRL re-read", revoked=len(self._revoked))

    async def _load_crl(self, *, announce: bool = False) -> None:
        """Add the customer CRL's serials to the set; with `announce`, tell the listeners of the new ones."""
        request = ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER)
        response = await self._ca.GetCrl(request, timeout=self._call_timeout * 5)
        serials = crl_serials(response.crl, self._customer_cas)
        # A serial the stream never delivered was lost on the way. At a (re)connection nobody is told: the
        # new epoch already tells every copy that it may be stale.
        missed = serials - self._revoked if announce else set()
        self._revoked |= serials
        self._metrics.revoked_serials.set(len(self._revoked))
        for serial in missed:
            log.warning("revocation found in the CRL but never streamed", serial=f"{serial:x}")
            for listener in self._listeners:
                listener(ca_pb2.ISSUER_CUSTOMER, serial)

    def _revoked_now(self, event: ca_pb2.WatchRevocationsResponse) -> None:
        self._metrics.revocation_events.inc()
        serial: int | None = None
        try:
            serial = int(event.serial_number, 16)
        except ValueError:
            log.error("revocation event with an unreadable serial", serial=event.serial_number[:64])
        for listener in self._listeners:
            listener(event.issuer, serial)
        if event.issuer != ca_pb2.ISSUER_CUSTOMER or serial is None:
            return
        self._revoked.add(serial)
        self._status_cache.pop(serial, None)
        self._metrics.revoked_serials.set(len(self._revoked))
        log.info("certificate revoked", serial=event.serial_number)

    def _set_live(self, live: bool) -> None:
        if live and not self._live:
            self._epoch += 1
        self._live = live
        self._metrics.revocation_stream_up.set(1 if live else 0)
        if live:
            self._became_live.set()
        else:
            self._became_live.clear()
