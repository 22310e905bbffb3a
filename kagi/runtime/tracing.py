"""OpenTelemetry traces across the gateway and the services, exported by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is
set and off otherwise.

When on, OpenTelemetry's own instrumentations do the work: the gRPC ones patch `grpc.aio.server` and the channel
constructors (every server gets a span per call, every channel a span per call and the trace context in its
metadata), and the aiohttp one patches `web.Application` (the gateway's HTTPS requests). So tracing must be
turned on before any server, channel or application is made, and kagi's own modules need no change. Each span
carries the request id (`kagi.request_id`) that the logs carry. When off, nothing is patched: no interceptor, no
middleware, no cost. The standard OTEL_* variables (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_TRACES_SAMPLER, ...) apply as documented by OpenTelemetry.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from kagi.runtime import metrics
from kagi.runtime.logging import request_id_var

log = structlog.get_logger("kagi.tracing")

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Turns tracing on: where the OTLP/gRPC exporter sends spans (e.g. http://otel-collector:4317)."""

REQUEST_ID_ATTRIBUTE = "kagi.request_id"
"""The span attribute holding the request id (the `request_id` of the logs, the X-Request-Id the gateway answers)."""


def annotate_current_span() -> None:
    """Put the current request id on the span being recorded, if any (a gRPC server's span: the id is known only
    once the call's metadata was read)."""
    request_id = request_id_var.get()
    if not request_id:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


class RequestIdSpans(SpanProcessor):
    """Puts the current request id on each span as it starts, and on its recording parent too (the gateway's
    request span starts before the gateway has chosen the request's id)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Copy the request id onto `span` and its parent."""
        request_id = request_id_var.get()
        if not request_id:
            return
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        parent = trace.get_current_span(parent_context)
        if parent.is_recording():
            parent.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)

    def on_end(self, span: ReadableSpan) -> None:
        """Do nothing: the attributes are set at start."""

    def shutdown(self) -> None:
        """Do nothing: there is nothing to flush."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Say every span was handled."""
        return True


@dataclass
class Tracing:
    """The tracing turned on in this process: its provider and the instrumentations it patched in."""

    provider: TracerProvider
    instrumentors: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        """Undo the patches and flush the spans still queued (the exporter's thread ends, so the process can)."""
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        if annotate_current_span in metrics.span_hooks:
            metrics.span_hooks.remove(annotate_current_span)
        self.provider.shutdown()


def enable_tracing(processor: SpanProcessor, *, service_name: str) -> Tracing:
    """Trace every gRPC server, channel and aiohttp application made from now on, handing the spans to
    `processor` (a batch OTLP exporter; an in-memory one in tests). Health checks are not traced."""
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(RequestIdSpans())
    provider.add_span_processor(processor)
    not_health = filters.negate(filters.health_check())
    instrumentors: list[Any] = [
        GrpcAioInstrumentorServer(filter_=not_health),  # type: ignore[no-untyped-call]
        GrpcAioInstrumentorClient(filter_=not_health),  # type: ignore[no-untyped-call]
        AioHttpServerInstrumentor(),
    ]
    with warnings.catch_warnings():
        # The aiohttp instrumentation subclasses web.Application, which aiohttp discourages with a warning.
        warnings.simplefilter("ignore", DeprecationWarning)
        for instrumentor in instrumentors:
            instrumentor.instrument(tracer_provider=provider)
    metrics.span_hooks.append(annotate_current_span)
    return Tracing(provider, instrumentors)


def configure_tracing(environ: Mapping[str, str], *, service_name: str) -> Tracing | None:
    """Turn tracing on with the OTLP/gRPC exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set; else return None.

    OTEL_SERVICE_NAME, when set, names the service instead of `service_name` (kagi-<component>).
    """
    endpoint = environ.get(ENDPOINT_ENV, "").strip()
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    name = environ.get("OTEL_SERVICE_NAME", "").strip() or service_name
    tracing = enable_tracing(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)), service_name=name)
    log.info("tracing on", endpoint=endpoint, service=name)
    return tracing
