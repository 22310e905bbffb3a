"""kagi's Prometheus metrics beside the gateway's: every gRPC call served and made, each worker's process figures,
the services' business figures, the store's latency and errors, and the gauges read from state at each scrape.

All of them live in prometheus-client's default registry, which the management listener serves (`render_metrics`);
with several workers (PROMETHEUS_MULTIPROC_DIR set by `kagi serve`) each worker writes its figures to that
directory and a scrape of any worker answers for all of them. The recording happens in adapters (the gRPC
server's interceptor, the gRPC api modules, the channels, the store wrapper); the domains know nothing of it.

Per-call figures come from the interceptor kagi's servers run anyway and from a thin wrapper of the channels'
unary calls, not from grpcio-observability: its wheels pin grpcio exactly (1.85.0), while the committed stubs
need grpcio>=1.85.1 (grpcio-tools 1.85.1 made them), so the two cannot be installed together.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from kagi.errors import KagiError
from kagi.store.base import Entry, KeyValueStore, Operation, Page, Placement

log = structlog.get_logger("kagi.metrics")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Names the directory of prometheus-client's multiprocess mode (set by `kagi serve` for workers)."""

RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Latency buckets of gRPC calls and store operations (seconds): sub-millisecond reads up to a 10 s deadline."""

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Latency buckets of enrollment steps (seconds): a step may hash passwords, sign or call two services."""

# --- gRPC calls ------------------------------------------------------------------------------------------------

grpc_server_duration = Histogram(
    "kagi_grpc_server_call_duration_seconds",
    "Time a gRPC server took to answer a call, by service, method and status code (the _count is calls served).",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=RPC_BUCKETS,
)
grpc_server_callers = Counter(
    "kagi_grpc_server_calls",
    "gRPC calls served, by service, method, status code and the caller's role (from its certificate).",
    ["grpc_service", "grpc_method", "grpc_code", "caller_role"],
)
grpc_client_duration = Histogram(
    "kagi_grpc_client_call_duration_seconds",
    "Time a unary gRPC call to another kagi service took, by service, method and status code (the _count is "
    "calls made).",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=RPC_BUCKETS,
)

# --- business figures ------------------------------------------------------------------------------------------

certificates_issued = Counter(
    "kagi_certificates_issued", "Certificates the CA issued (renewals included), by profile.", ["profile"]
)
certificates_revoked = Counter(
    "kagi_certificates_revoked", "Certificates the CA revoked, by RFC 5280 reason.", ["reason"]
)
crl_age = Gauge(
    "kagi_crl_age_seconds",
    "Seconds since the CRL last published for an issuing CA was made (its thisUpdate), read at scrape.",
    ["issuer"],
    multiprocess_mode="mostrecent",
)
crl_size = Gauge(
    "kagi_crl_size_bytes",
    "Size of the DER CRL last published for an issuing CA, read at scrape.",
    ["issuer"],
    multiprocess_mode="mostrecent",
)
crl_next_update = Gauge(
    "kagi_crl_next_update_seconds",
    "Seconds until the nextUpdate of the CRL last published for an issuing CA (negative: relying parties "
    "refuse it), read at scrape.",
    ["issuer"],
    multiprocess_mode="mostrecent",
)
crl_entries = Gauge(
    "kagi_crl_entries",
    "Revoked certificates listed in the CRL last published for an issuing CA, read at scrape.",
    ["issuer"],
    multiprocess_mode="mostrecent",
)
ocsp_answers = Counter("kagi_ocsp_answers", "OCSP answers the CA made, by certificate status.", ["status"])
otp_verifications = Counter(
    "kagi_otp_verifications",
    "One-time-password checks, by outcome (ACCEPTED, WRONG_CODE, REPLAYED, RATE_LIMITED, TOKEN_LOCKED, ...).",
    ["outcome"],
)
lockouts = Counter(
    "kagi_lockouts",
    "Calls refused because something is locked after too many wrong entries (the one that locked it and every "
    "later one), by kind: otp_token, user, application, reset_notice.",
    ["kind"],
)
enrollment_steps = Counter(
    "kagi_enrollment_steps",
    "Enrollment steps answered, by step (the RPC) and status code.",
    ["step", "grpc_code"],
)
enrollment_step_duration = Histogram(
    "kagi_enrollment_step_duration_seconds",
    "Time the enrollment service took to answer a step, by step (the RPC).",
    ["step"],
    buckets=STEP_BUCKETS,
)
enrollments_entered = Counter(
    "kagi_enrollments",
    "Enrollments a step left in a state (NOTICE_VERIFIED, ..., COMPLETED, CANCELLED), by that state.",
    ["state"],
)
outbox_depth = Gauge(
    "kagi_outbox_depth",
    "Mails queued in the enrollment outbox and not yet sent (given-up ones included), read at scrape.",
    multiprocess_mode="mostrecent",
)
outbox_oldest_age = Gauge(
    "kagi_outbox_oldest_age_seconds",
    "Seconds since the oldest mail still in the outbox was queued (0 when empty), read at scrape.",
    multiprocess_mode="mostrecent",
)
outbox_dead = Gauge(
    "kagi_outbox_dead",
    "Mails in the outbox given up after too many attempts, read at scrape.",
    multiprocess_mode="mostrecent",
)
store_duration = Histogram(
    "kagi_store_operation_duration_seconds",
    "Time a store operation took, by component (store namespace) and operation.",
    ["namespace", "operation"],
    buckets=RPC_BUCKETS,
)
store_errors = Counter(
    "kagi_store_errors",
    "Store operations that failed, by component, operation and error (a lost compare-and-swap is no error).",
    ["namespace", "operation", "error"],
)
revocation_stream_lag = Gauge(
    "kagi_revocation_stream_lag_seconds",
    "Seconds from a revocation (its revocation time, the CA's clock) to its arrival over the CA's revocation "
    "stream here (this host's clock), for the last one received, by issuing CA followed.",
    ["issuer"],
    multiprocess_mode="liveall",
)

# --- each worker's process figures (multiprocess mode only: one series per live worker's pid) -----------------

worker_cpu = Gauge(
    "kagi_worker_cpu_seconds",
    "CPU seconds a worker process used (one series per live pid).",
    multiprocess_mode="liveall",
)
worker_memory = Gauge(
    "kagi_worker_resident_memory_bytes",
    "Resident memory of a worker process (one series per live pid).",
    multiprocess_mode="liveall",
)
worker_fds = Gauge(
    "kagi_worker_open_fds",
    "Open file descriptors of a worker process (one series per live pid).",
    multiprocess_mode="liveall",
)
worker_start = Gauge(
    "kagi_worker_start_time_seconds",
    "Start time of a worker process since the epoch (one series per live pid).",
    multiprocess_mode="liveall",
)

_WORKER_SAMPLES = {
    "process_cpu_seconds_total": worker_cpu,
    "process_resident_memory_bytes": worker_memory,
    "process_open_fds": worker_fds,
    "process_start_time_seconds": worker_start,
}


def record_worker_process() -> None:
    """Copy this process's CPU, memory, descriptors and start time into its per-worker gauges."""
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            gauge = _WORKER_SAMPLES.get(sample.name)
            if gauge is not None:
                gauge.set(sample.value)


def multiprocess_mode() -> bool:
    """Say whether this process shares its metrics with other workers through a directory."""
    return bool(os.environ.get(MULTIPROCESS_ENV))


# --- the gRPC server's per-call record and access line ----------------------------------------------------------

_LOCKOUT_KINDS = {
    "TOKEN_LOCKED": "otp_token",
    "USER_LOCKED": "user",
    "APPLICATION_LOCKED": "application",
    "RESET_NOTICE_LOCKED": "reset_notice",
}

span_hooks: list[Callable[[], None]] = []
"""Called at the end of each call a gRPC server answers, inside its span (tracing puts the request id on it);
empty while tracing is off."""

_server_children: dict[tuple[str, str], Any] = {}
_caller_children: dict[tuple[str, str, str], Any] = {}


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def observe_served_call(full_method: str, code: str, role: str, seconds: float, error: BaseException | None) -> None:
    """Record one call a gRPC server answered: its latency and status, its caller's role, and a lockout."""
    for hook in span_hooks:
        hook()
    duration = _server_children.get((full_method, code))
    if duration is None:
        duration = grpc_server_duration.labels(*_split(full_method), code)
        _server_children[(full_method, code)] = duration
    duration.observe(seconds)
    counted = _caller_children.get((full_method, code, role))
    if counted is None:
        counted = grpc_server_callers.labels(*_split(full_method), code, role)
        _caller_children[(full_method, code, role)] = counted
    counted.inc()
    if isinstance(error, KagiError):
        kind = _LOCKOUT_KINDS.get(error.reason)
        if kind is not None:
            lockouts.labels(kind).inc()


# --- the clients' per-call record -------------------------------------------------------------------------------


class _MeteredUnary:
    """A unary multi-callable whose every call is timed and counted by status."""

    __slots__ = ("_inner", "_method", "_service")

    def __init__(self, inner: Any, full_method: str) -> None:
        self._inner = inner
        self._service, self._method = _split(full_method)

    def __call__(self, request: Any, **kwargs: Any) -> Awaitable[Any]:
        return self._call(request, kwargs)

    async def _call(self, request: Any, kwargs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        code = "OK"
        try:
            return await self._inner(request, **kwargs)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            grpc_client_duration.labels(self._service, self._method, code).observe(time.perf_counter() - start)


class MeteredChannel:
    """Wraps a channel so that each unary call through stubs made on it is timed and counted by status
    (kagi_grpc_client_call_duration_seconds); streams and everything else pass through untouched."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Return the channel's multi-callable for `method`, timed."""
        return _MeteredUnary(self._channel.unary_unary(method, *args, **kwargs), method)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def metered(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """Return `channel` with its unary calls timed and counted (see MeteredChannel)."""
    wrapped: Any = MeteredChannel(channel)
    return wrapped


# --- gauges read from state at each scrape ----------------------------------------------------------------------


class ScrapeRefresher(Protocol):
    """Something that sets gauges from the state it reads (the store), asked before each scrape is answered."""

    async def refresh_metrics(self) -> None:
        """Read the state and set the gauges."""


_refreshers: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

REFRESH_TIMEOUT_SECONDS = 2.0
"""How long a scrape waits for the gauges read from state; past that it answers with their previous values."""


def refresh_on_scrape(refresher: ScrapeRefresher) -> None:
    """Have `refresher` set its gauges before each scrape this process answers (held weakly: it goes with its
    component)."""
    _refreshers[id(refresher)] = refresher


async def refresh_gauges() -> None:
    """Ask every live refresher to set its gauges, each within REFRESH_TIMEOUT_SECONDS; failures keep the old
    values (a store that is down shows on /readyz and in kagi_store_errors_total)."""
    refreshers = list(_refreshers.values())
    if not refreshers:
        return

    async def one(refresher: Any) -> None:
        try:
            await asyncio.wait_for(refresher.refresh_metrics(), REFRESH_TIMEOUT_SECONDS)
        except Exception as exc:  # a gauge that cannot be read now keeps its last value
            log.debug("metrics not refreshed", refresher=type(refresher).__name__, error=str(exc))

    await asyncio.gather(*(one(refresher) for refresher in refreshers))


# --- the store's latency and errors -----------------------------------------------------------------------------

T = TypeVar("T")

_EXPECTED = ("VersionMismatch", "KeyExists")


class MeteredStore(KeyValueStore):
    """Wraps a store so that every operation's latency and failures are recorded by component and operation
    (kagi_store_operation_duration_seconds, kagi_store_errors_total). A lost compare-and-swap or an existing key
    is an answer of the contract, not an error: it is timed but not counted as one."""

    def __init__(self, inner: KeyValueStore, namespace: str) -> None:
        self._inner = inner
        self._namespace = namespace

    @property
    def inner(self) -> KeyValueStore:
        """Return the wrapped store."""
        return self._inner

    @property
    def placement(self) -> Placement:
        """Return the wrapped store's placement."""
        return self._inner.placement

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        start = time.perf_counter()
        try:
            return await call()
        except Exception as exc:
            name = type(exc).__name__
            if not any(expected in name for expected in _EXPECTED):
                store_errors.labels(self._namespace, operation, name).inc()
            raise
        finally:
            store_duration.labels(self._namespace, operation).observe(time.perf_counter() - start)

    async def get(self, collection: str, key: str) -> Entry | None:
        """Return the live entry at collection/key, timed."""
        return await self._timed("get", lambda: self._inner.get(collection, key))

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Create an entry if absent, timed."""
        return await self._timed("create", lambda: self._inner.create(collection, key, value, ttl=ttl))

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Replace an entry at `version`, timed."""
        return await self._timed(
            "compare_and_swap", lambda: self._inner.compare_and_swap(collection, key, value, version=version, ttl=ttl)
        )

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Delete an entry, timed."""
        return await self._timed("delete", lambda: self._inner.delete(collection, key, version=version))

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add to a counter, timed."""
        return await self._timed("increment", lambda: self._inner.increment(collection, key, amount, ttl=ttl))

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """Return a page of a collection, timed."""
        return await self._timed(
            "list", lambda: self._inner.list(collection, page_size=page_size, page_token=page_token)
        )

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Apply several writes all-or-nothing, timed."""
        return await self._timed("commit", lambda: self._inner.commit(operations))

    async def ping(self) -> None:
        """Check the store answers, timed."""
        await self._timed("ping", self._inner.ping)

    async def close(self) -> None:
        """Close the wrapped store."""
        await self._inner.close()
