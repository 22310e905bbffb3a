"""The gateway's operations routes: /healthz and /openapi.json (an OpenAPI 3.1 document of exactly the routes
served) on the public port; /readyz (every backend's gRPC health, naming the one that is not SERVING, 503 then)
and /metrics (requests by route and status, latency, TLS handshakes and connections, certificate rejections,
backend errors) on the management listener."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.schemas import OPERATIONS
from tests.integration.gateway.gateway_support import GatewayStack


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_readyz_names_the_backend_that_is_down(stack: GatewayStack) -> None:
    """The management listener's /readyz is 200 with every backend SERVING; with the OTP service stopped it is
    503 and says otp is UNREACHABLE while the others are SERVING; /healthz stays 200 throughout."""
    async with stack.client() as client:
        answer = await stack.management_get("/readyz")
        assert answer.status == 200
        gateway = answer.body["components"]["gateway"]
        assert gateway["backends"] == {"ca": "SERVING", "otp": "SERVING", "enrollment": "SERVING"}
        assert gateway["revocation"]["live"] is True
        await stack.stop("otp")
        answer = await stack.management_get("/readyz")
        assert answer.status == 503
        assert answer.body["ready"] is False
        gateway = answer.body["components"]["gateway"]
        assert gateway["backends"] == {"ca": "SERVING", "otp": "UNREACHABLE", "enrollment": "SERVING"}
        assert (await client.request("GET", "/healthz")).status == 200
        assert (await stack.management_get("/healthz")).status == 200


async def test_metrics_count_requests_handshakes_rejections_and_backend_errors(stack: GatewayStack) -> None:
    """After a created enrollment, a wrong session token and a request without the needed certificate, /metrics
    shows each by route template and status, a latency histogram, the TLS connections and handshakes, the
    rejection by reason, and the enrollment service's UNAUTHENTICATED answer as a backend error (read from the
    management listener's /metrics)."""
    entries, _ = await stack.register_application()
    async with stack.client() as client:
        created = (await client.request("POST", "/v1/enrollments", entries)).body
        await client.request("GET", f"/v1/enrollments/{created['enrollment_id']}", bearer="wrong")
        await client.request("GET", "/v1/client-certificate")
    text = (await stack.management_get("/metrics")).raw.decode()
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    requests = "kagi_gateway_http_requests_total"
    assert value(requests, route="/v1/enrollments", method="POST", status="201") == 1
    assert value(requests, route="/v1/enrollments/{id}", method="GET", status="401") == 1
    assert value(requests, route="/v1/client-certificate", method="GET", status="401") == 1
    latency = "kagi_gateway_http_request_duration_seconds_count"
    assert value(latency, route="/v1/enrollments", method="POST") == 1
    assert value("kagi_gateway_tls_connections_total") >= 1
    handshakes = value(
        "kagi_gateway_tls_handshakes_total", version="TLSv1.3", resumed="false", client_certificate="false"
    )
    assert handshakes >= 1
    assert value("kagi_gateway_client_certificate_rejections_total", reason="missing") == 1
    assert value("kagi_gateway_backend_errors_total", service="enrollment", code="UNAUTHENTICATED") == 1
    assert value("kagi_gateway_revocation_stream_connected") == 1


async def test_openapi_document_describes_every_route_served(stack: GatewayStack) -> None:
    """/openapi.json is OpenAPI 3.1 with one operation per customer route, request bodies with their required
    fields and no others allowed, the error schema on every error status, and both security schemes."""
    async with stack.client() as client:
        document = (await client.request("GET", "/openapi.json")).body
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["clientCertificate"]["type"] == "mutualTLS"
    for operation in OPERATIONS:
        described = document["paths"][operation.path][operation.method.lower()]
        assert described["operationId"] == operation.operation_id
        assert str(operation.status) in described["responses"]
        for status in ("400", "401", "409", "503"):
            assert described["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
        if operation.body is not None and operation.body.fields:
            body = schemas[operation.body.name]
            assert body["required"] == [field.name for field in operation.body.fields if field.required]
            assert body["additionalProperties"] is False
    verify_notice = schemas["VerifyNoticeRequest"]["properties"]
    assert verify_notice["account_type"]["enum"] == ["ordinary", "current"]
    assert schemas["Enrollment"]["properties"]["next_step"]["enum"][1] == "SUBMIT_PROFILE"
