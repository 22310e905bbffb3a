"""The management listener: plain HTTP `/healthz`, `/readyz` and `/metrics` for orchestrators and Prometheus.

Every component serves one at KAGI_<C>_MANAGEMENT_ADDR (the gRPC services' own health needs a client certificate,
which a kubelet or a load balancer's probe does not have). It is plain HTTP and carries no customer data: bind it
to loopback or to a network only the orchestrator and Prometheus reach. `kagi dev` serves one for everything.

With several worker processes (KAGI_<C>_WORKERS>1) the workers share the listener's port, so a scrape reaches any
one of them: `kagi serve` then sets PROMETHEUS_MULTIPROC_DIR to a fresh directory before starting them, each
worker's metrics live in files there (prometheus-client's multiprocess mode), and /metrics answers what every
worker counted (counters and histograms summed, gauges as each declares: per worker, or summed over live ones).
Process metrics (CPU, memory, file descriptors) describe one process: prometheus-client leaves its process_*
out in that mode, so each worker copies its own into kagi_worker_* gauges (a `pid` label per live worker) every
WORKER_SAMPLE_SECONDS and before answering a scrape. Gauges read from state (CRL age, outbox depth) are read
by the worker that answers, before it answers (`refresh_gauges`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from kagi.errors import InvalidArgument
from kagi.runtime.metrics import MULTIPROCESS_ENV as MULTIPROCESS_ENV  # re-exported: `kagi serve` sets it
from kagi.runtime.metrics import multiprocess_mode, record_worker_process, refresh_gauges

log = structlog.get_logger("kagi.management")

WORKER_SAMPLE_SECONDS = 5.0
"""How often a worker copies its process figures into its kagi_worker_* gauges in multiprocess mode."""

Probe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
"""Says whether a component is ready, with details for the /readyz answer."""

DEFAULT_ADDRESSES = {
    "gateway": "127.0.0.1:9090",
    "ca": "127.0.0.1:9091",
    "otp": "127.0.0.1:9092",
    "enrollment": "127.0.0.1:9093",
}
"""Where each component's management listener binds unless told otherwise."""


def parse_address(name: str, value: str) -> tuple[str, int] | None:
    """Read HOST:PORT ([v6]:PORT too); `off` turns the listener off (None)."""
    if value.strip().lower() in ("off", "none", "-"):
        return None
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"invalid {name}", fields={name: "must be HOST:PORT (e.g. 0.0.0.0:9091) or off"})
    return host, int(port)


def management_address(environ: Mapping[str, str], component: str) -> tuple[str, int] | None:
    """Return KAGI_<C>_MANAGEMENT_ADDR of `component`, or its default."""
    name = f"KAGI_{component.upper()}_MANAGEMENT_ADDR"
    return parse_address(name, environ.get(name) or DEFAULT_ADDRESSES[component])


def render_metrics(registries: Sequence[CollectorRegistry] = ()) -> bytes:
    """Return the process's default registry (process and Python metrics, the services' own) followed
    by `registries` (each family appears in one registry only). In multiprocess mode (PROMETHEUS_MULTIPROC_DIR
    set) it is instead every worker's metrics, merged from the directory: `registries` hold only this worker's
    share of them."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        merged = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return b"".join(generate_latest(registry) for registry in (REGISTRY, *registries))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status, content_type="application/json")


class ManagementListener:
    """Serves /healthz (alive), /readyz (every probe ready: 200, else 503 naming which) and
    /metrics (Prometheus text) on host:port. `reuse_port` lets N worker processes bind the same port."""

    def __init__(
        self,
        host: str,
        port: int,
        probes: Mapping[str, Probe],
        *,
        registries: Callable[[], Sequence[CollectorRegistry]] = tuple,
        reuse_port: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._probes = dict(probes)
        self._registries = registries
        self._reuse_port = reuse_port
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> int:
        """Bind host:port (0: a free port) and return the port."""
        app = web.Application()
        app.add_routes(
            [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz), web.get("/metrics", self.metrics)]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port, reuse_port=self._reuse_port or None)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._requested_port
        if multiprocess_mode():
            self._sampler = asyncio.create_task(self._sample_worker())
        log.info("management listener started", address=f"http://{self.host}:{self.port}")
        return self.port

    @staticmethod
    async def _sample_worker() -> None:
        while True:
            record_worker_process()
            await asyncio.sleep(WORKER_SAMPLE_SECONDS)

    async def stop(self) -> None:
        """Close the listener."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is alive and answering."""
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Each component's readiness; 503 when any is not ready."""
        components: dict[str, Any] = {}
        ready = True
        for name, probe in self._probes.items():
            try:
                ok, detail = await probe()
            except Exception as exc:  # a probe that fails says "not ready", with why
                ok, detail = False, {"error": str(exc)}
            components[name] = {"ready": ok, **detail}
            ready = ready and ok
        return _json({"ready": ready, "components": components}, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        await refresh_gauges()
        if multiprocess_mode():
            record_worker_process()
        return web.Response(body=render_metrics(self._registries()), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Readiness(Protocol):
    async def check_readiness(self) -> bool: ...


def grpc_readiness(server: _Readiness) -> Probe:
    """Return the probe of a gRPC server: its readiness check (the store answers), which also sets
    what its gRPC health reports."""

    async def probe() -> tuple[bool, dict[str, Any]]:
        ready = await server.check_readiness()
        return ready, {"grpc_health": "SERVING" if ready else "NOT_SERVING"}

    return probe


async def start_management(
    address: tuple[str, int] | None, probes: Mapping[str, Probe], *, reuse_port: bool = False
) -> ManagementListener | None:
    """Start a management listener at `address` (None: none) and return it."""
    if address is None:
        return None
    listener = ManagementListener(*address, probes, reuse_port=reuse_port)
    await listener.start()
    return listener
