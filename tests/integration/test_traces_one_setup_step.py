"""Traces: with tracing on, one setup step through the gateway's HTTPS API is one trace from the gateway's request
through the enrollment service to the CA (step 4) or the OTP service (step 10), every span carrying the request
id; with tracing off nothing is patched."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from kagi.runtime.tracing import REQUEST_ID_ATTRIBUTE, configure_tracing, enable_tracing
from tests.integration.gateway.gateway_support import GatewayStack, open_gateway_stack, walk_ten_steps


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Turn tracing on for the test (spans kept in memory), and off again after it."""
    exporter = InMemorySpanExporter()
    tracing = enable_tracing(SimpleSpanProcessor(exporter), service_name="kagi-test")
    yield exporter
    tracing.shutdown()


@pytest.fixture
async def stack(spans: InMemorySpanExporter, tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return the services and the gateway, started once tracing is on (so their servers and channels are traced)."""
    running = await open_gateway_stack(tmp_path)
    yield running
    await running.close()


def _trace_of(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    """Return every span of the trace that holds the span named `name` (exactly one such span)."""
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        assert span.context is not None
        by_trace[span.context.trace_id].append(span)
    holding = [trace for trace in by_trace.values() if any(span.name == name for span in trace)]
    assert len(holding) == 1, [span.name for span in spans]
    return holding[0]


@pytest.mark.parametrize(
    ("step_call", "backend_call"),
    [
        (
            "/kagi.enrollment.v1.EnrollmentService/IssueCertificate",
            "/kagi.ca.v1.CertificateAuthorityService/IssueCertificate",
        ),
        ("/kagi.enrollment.v1.EnrollmentService/VerifyFirstCode", "/kagi.otp.v1.OtpService/VerifyCode"),
    ],
)
async def test_one_step_is_one_trace_across_the_services(
    stack: GatewayStack, spans: InMemorySpanExporter, step_call: str, backend_call: str
) -> None:
    """After the ten steps, the trace holding the enrollment's step (4: the certificate, 10: the first code) has
    the gateway's HTTP request span at its root, the gateway's client span and the enrollment's server span for
    the step, and the enrollment's client span and the CA's or OTP service's server span for the call it made;
    each is the child of the one before, and all carry one request id."""
    await walk_ten_steps(stack)
    trace = _trace_of(list(spans.get_finished_spans()), step_call)
    roots = [span for span in trace if span.parent is None]
    assert len(roots) == 1
    root = roots[0]
    assert root.kind == SpanKind.SERVER
    assert root.attributes is not None
    assert root.attributes.get("http.request.method", root.attributes.get("http.method")) == "POST"

    def the(name: str, kind: SpanKind) -> ReadableSpan:
        found = [span for span in trace if span.name == name and span.kind == kind]
        assert len(found) == 1, [(span.name, span.kind) for span in trace]
        return found[0]

    chain = [
        root,
        the(step_call, SpanKind.CLIENT),
        the(step_call, SpanKind.SERVER),
        the(backend_call, SpanKind.CLIENT),
        the(backend_call, SpanKind.SERVER),
    ]
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None
        assert parent.context is not None
        assert child.parent.span_id == parent.context.span_id, (parent.name, child.name)
    request_ids = {(span.attributes or {}).get(REQUEST_ID_ATTRIBUTE) for span in chain}
    assert len(request_ids) == 1, request_ids
    assert next(iter(request_ids))


def test_without_an_endpoint_nothing_is_patched() -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT, tracing stays off: grpc.aio's server and channel constructors and
    aiohttp's Application are the libraries' own, so a call costs no interceptor."""
    server, secure, insecure, application = (
        grpc.aio.server,
        grpc.aio.secure_channel,
        grpc.aio.insecure_channel,
        web.Application,
    )
    assert configure_tracing({}, service_name="kagi-test") is None
    assert (grpc.aio.server, grpc.aio.secure_channel, grpc.aio.insecure_channel, web.Application) == (
        server,
        secure,
        insecure,
        application,
    )
    assert grpc.aio.server.__module__ == "grpc.aio._server"
