"""The gateway's Prometheus metrics: requests, latency, TLS handshakes, certificate rejections, backend errors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of the text exposition format /metrics answers in."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """Holds one gateway's collectors in its own registry (so several gateways in one test
    process never share counters) and renders them for /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kagi_gateway_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        # A gauge only so that multiprocess mode keeps one series per worker (a `pid` label; counters are summed):
        # how evenly the kernel spreads connections over the workers sharing the port.
        self.worker_requests = Gauge(
            "kagi_gateway_worker_requests",
            "HTTP requests answered by this worker process since it started (one series per live worker's pid "
            "when there are several).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.latency = Histogram(
            "kagi_gateway_http_request_duration_seconds",
            "Time from the request's arrival to its answer, by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.connections = Counter(
            "kagi_gateway_tls_connections",
            "New TCP connections accepted on the HTTPS port.",
            registry=r,
        )
        self.connections_refused = Counter(
            "kagi_gateway_connections_refused",
            "Connections closed at accept because a cap was reached, by cap (total, per_address).",
            ["cap"],
            registry=r,
        )
        self.open_connections = Gauge(
            "kagi_gateway_open_connections",
            "Connections open now (both ports; summed over live workers); the caps apply to each worker.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.header_timeouts = Counter(
            "kagi_gateway_request_deadline_closes",
            "Connections closed because a request's header or body did not arrive within the deadline.",
            registry=r,
        )
        self.rate_limited = Counter(
            "kagi_gateway_rate_limited",
            "Requests answered 429 (Too Many Requests), by rate limit.",
            ["limit"],
            registry=r,
        )
        self.handshakes = Counter(
            "kagi_gateway_tls_handshakes",
            "Completed TLS handshakes, by protocol version, whether the session was resumed and whether the "
            "client presented a certificate.",
            ["version", "resumed", "client_certificate"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "kagi_gateway_tls_handshake_failures",
            "TLS handshakes that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.certificate_rejections = Counter(
            "kagi_gateway_client_certificate_rejections",
            "Client certificates refused, by reason: at the handshake (handshake_*) or by a route.",
            ["reason"],
            registry=r,
        )
        self.backend_errors = Counter(
            "kagi_gateway_backend_errors",
            "Failed calls to the services, by service and gRPC status code.",
            ["service", "code"],
            registry=r,
        )
        self.revoked_serials = Gauge(
            "kagi_gateway_revoked_serials",
            "Customer certificate serials this replica knows to be revoked (per worker: each keeps its own).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.revocation_stream_up = Gauge(
            "kagi_gateway_revocation_stream_connected",
            "1 while the CA's revocation stream is connected and the CRL is loaded, else 0 (status fallback); "
            "per worker: each holds its own stream.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.revocation_events = Counter(
            "kagi_gateway_revocation_events",
            "Revocations received from the CA's stream.",
            registry=r,
        )
        self.ocsp_answers = Counter(
            "kagi_gateway_ocsp_answers",
            "OCSP answers given, by source: this gateway's response cache, or the CA.",
            ["source"],
            registry=r,
        )

    def render(self) -> bytes:
        """Return the registry in the Prometheus text format."""
        return generate_latest(self.registry)
