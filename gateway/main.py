"""Wiring of the gateway: settings, channels to the services, the customer CA and revocation state, then the
HTTPS listener and the plain-HTTP PKI listener."""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from gateway.app import GatewayContext, http_application, https_application, readiness
from gateway.backends import Backends
from gateway.edge import ClientAddresses, ConnectionGuard, EdgeRuntime, make_runner
from gateway.errors import HttpError
from gateway.metrics import GatewayMetrics
from gateway.pki import CaCertificates, PkiFiles, fetch_ca_certificates
from gateway.ratelimit import OcspLimit, RateLimiter, rate_limits
from gateway.settings import GatewaySettings
from gateway.tls import (
    HANDSHAKE_TIMEOUT_SECONDS,
    CustomerCertificateVerifier,
    HttpsCertificate,
    TlsListener,
    load_customer_cas,
)
from kagi.clients.revocation import RevocationRegistry
from kagi.errors import Unavailable
from kagi.runtime.management import ManagementListener
from kagi.store import open_store

__all__ = ["GatewayComponent", "GatewaySettings", "start_gateway"]

log = structlog.get_logger("kagi.gateway")

# How long start waits for the revocation state before serving anyway (checks then ask the CA per request).
REVOCATION_START_WAIT = 5.0


class GatewayComponent:
    """A running gateway: its HTTPS and plain-HTTP listeners and what they share."""

    def __init__(
        self,
        https: tuple[web.AppRunner, TlsListener],
        http: tuple[web.AppRunner, web.TCPSite] | None,
        context: GatewayContext,
        limiter: RateLimiter | None = None,
        management: ManagementListener | None = None,
    ) -> None:
        self._https = https
        self._http = http
        self.context = context
        self._limiter = limiter
        self.management = management

    @property
    def https_port(self) -> int:
        """Return where the customer API listens (HTTPS)."""
        return self._https[1].port

    @property
    def http_port(self) -> int | None:
        """Return where the plain-HTTP PKI files are served, or None when that port is off."""
        return self._http[1].port if self._http is not None else None

    @property
    def metrics(self) -> GatewayMetrics:
        """Return this gateway's collectors."""
        return self.context.metrics

    @property
    def management_port(self) -> int | None:
        """Return where /healthz, /readyz and /metrics are served (plain HTTP), or None."""
        return self.management.port if self.management is not None else None

    async def ready(self) -> tuple[bool, dict[str, object]]:
        """Return the management listener's readiness probe: every backend SERVING."""
        return await readiness(self.context)

    async def stop(self, grace: float = 5.0) -> None:
        """Close the listeners, lets requests in flight finish for up to `grace` seconds, then close."""
        if self.management is not None:
            await self.management.stop()
        runners = [self._https[0]] + ([self._http[0]] if self._http else [])
        for runner in runners:
            for site in list(runner.sites):
                await site.stop()
        for runner in runners:
            if runner.server is not None:
                runner.server.pre_shutdown()  # idle kept-alive connections close now instead of holding the stop
                await runner.server.shutdown(grace)
            await runner.cleanup()
        await self.context.revocation.stop()
        await self.context.backends.close()
        if self._limiter is not None:
            await self._limiter.close()


async def _ca_certificates(backends: Backends, target: str, within: float) -> CaCertificates:
    """_ca_certificates waits (with backoff) for the CA to hand out its certificates, up to `within` seconds."""
    deadline = time.monotonic() + within
    delay = 0.1
    while True:
        try:
            return await fetch_ca_certificates(backends)
        except HttpError as exc:
            if time.monotonic() + delay > deadline:
                raise Unavailable(
                    f"the CA at {target} gave no certificates within {within:.0f} s ({exc.reason})",
                    reason="CA_UNAVAILABLE",
                ) from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def start_gateway(settings: GatewaySettings) -> GatewayComponent:
    """Build the gateway from its settings and start serving."""
    metrics = GatewayMetrics()
    backends = Backends.open(
        {"ca": settings.ca_target, "otp": settings.otp_target, "enrollment": settings.enrollment_target},
        settings.backend_tls,
        metrics,
        dns_suffix=settings.internal_dns_suffix,
        call_timeout=settings.call_timeout_seconds,
    )
    certificates: CaCertificates | None = None
    try:
        if settings.customer_ca_file is not None:
            bundle = settings.customer_ca_file.read_bytes()
        else:
            certificates = await _ca_certificates(backends, settings.ca_target, settings.startup_timeout_seconds)
            bundle = certificates.root_pem + certificates.customer_pem
        customer_cas = load_customer_cas(bundle)
        revocation = RevocationRegistry(
            backends.ca,
            customer_cas,
            metrics,
            status_ttl=settings.status_cache_seconds,
            crl_refresh=settings.crl_refresh_seconds,
        )
        await revocation.start(wait=min(REVOCATION_START_WAIT, settings.startup_timeout_seconds))
    except BaseException:
        await backends.close()
        raise
    addresses = ClientAddresses(settings.trusted_proxies)
    limiter: RateLimiter | None = None
    if settings.rate_limits:
        store = open_store(settings.store_url, namespace="gateway", state_dir=None) if settings.store_url else None
        limiter = RateLimiter(settings.rate_limits, metrics, store=store)
    context = GatewayContext(
        backends=backends,
        verifier=CustomerCertificateVerifier(customer_cas, metrics),
        revocation=revocation,
        pki=PkiFiles(backends, revocation, initial=certificates, ocsp_cache_size=settings.ocsp_cache_size),
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        rate_limits=rate_limits(limiter, addresses) if limiter is not None else None,
    )
    if limiter is not None:
        context.pki.ocsp_limit = OcspLimit(limiter, addresses)
    limits = settings.edge
    capped = limits.max_connections > 0 or limits.max_connections_per_address > 0
    edge = EdgeRuntime(limits, ConnectionGuard(limits, addresses, metrics) if capped else None, metrics)
    reuse_port = settings.workers > 1
    https_runner = make_runner(https_application(context), edge)
    await https_runner.setup()
    https_site = TlsListener(
        https_runner,
        settings.host,
        settings.https_port,
        HttpsCertificate(*settings.https_certificate, bundle.decode()),
        metrics,
        reuse_port=reuse_port,
        guard=edge.guard,
        # A slow handshake holds a connection like a slow header does: the same deadline (10 s at most).
        handshake_timeout=min(HANDSHAKE_TIMEOUT_SECONDS, limits.header_timeout or HANDSHAKE_TIMEOUT_SECONDS),
    )
    await https_site.start()
    http: tuple[web.AppRunner, web.TCPSite] | None = None
    if settings.http_port is not None:
        http_runner = make_runner(http_application(context), edge)
        await http_runner.setup()
        http_site = web.TCPSite(http_runner, settings.host, settings.http_port, reuse_port=reuse_port or None)
        await http_site.start()
        http = (http_runner, http_site)
    management: ManagementListener | None = None
    if settings.management is not None:
        management = ManagementListener(
            *settings.management,
            {"gateway": lambda: readiness(context)},
            registries=lambda: (metrics.registry,),
            reuse_port=reuse_port,
        )
        await management.start()
    component = GatewayComponent((https_runner, https_site), http, context, limiter, management)
    log.info(
        "gateway started",
        https=f"https://{settings.host}:{component.https_port}",
        http=f"http://{settings.host}:{component.http_port}" if http else None,
        management=f"http://{management.host}:{management.port}" if management else None,
        revocation_live=revocation.live,
        backends={"ca": settings.ca_target, "otp": settings.otp_target, "enrollment": settings.enrollment_target},
    )
    return component
