"""The management listeners: plain HTTP /healthz, /readyz and /metrics on the gateway and on every gRPC service
(whose gRPC health needs a client certificate, which an orchestrator's probe does not have), one listener for the
whole `kagi dev` stack, and the public HTTPS port no longer serving /metrics or /readyz."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from gateway.settings import GatewaySettings
from kagi.cli.stack import FREE_PORTS, start_stack
from kagi.errors import InvalidArgument
from kagi.runtime.management import management_address
from tests.integration.gateway.gateway_support import GatewayStack


async def test_the_gateway_management_listener_answers_and_the_public_port_does_not(stack: GatewayStack) -> None:
    """The gateway's management listener answers /healthz, /readyz (the gateway ready, its backends SERVING) and
    /metrics (the gateway's collectors and the process's); the public HTTPS port answers /healthz but 404 for
    /metrics and /readyz, and its OpenAPI document lists /healthz and not them."""
    assert (await stack.management_get("/healthz")).body == {"status": "ok"}
    ready = await stack.management_get("/readyz")
    assert ready.status == 200
    assert ready.body["ready"] is True
    assert ready.body["components"]["gateway"]["backends"]["enrollment"] == "SERVING"
    metrics = await stack.management_get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert b"kagi_gateway_tls_connections_total" in metrics.raw
    assert b"kagi_gateway_open_connections" in metrics.raw
    async with stack.client() as client:
        assert (await client.request("GET", "/healthz")).status == 200
        for path in ("/metrics", "/readyz"):
            answer = await client.request("GET", path)
            assert answer.status == 404, path
            assert answer.reason == "NOT_FOUND"
        paths = (await client.request("GET", "/openapi.json")).body["paths"]
    assert "/healthz" in paths
    assert "/metrics" not in paths
    assert "/readyz" not in paths


@pytest.mark.parametrize("service", ["ca", "otp", "enrollment"])
async def test_each_grpc_service_has_a_management_listener(stack: GatewayStack, service: str) -> None:
    """Each gRPC service answers /healthz, /readyz (its readiness probe: the store answers; its gRPC health
    SERVING) and /metrics (the process's registry) in plain HTTP, without any certificate."""
    assert (await stack.management_get("/healthz", service)).body == {"status": "ok"}
    ready = await stack.management_get("/readyz", service)
    assert ready.status == 200
    assert ready.body == {"ready": True, "components": {service: {"ready": True, "grpc_health": "SERVING"}}}
    metrics = await stack.management_get("/metrics", service)
    assert metrics.status == 200
    assert b"python_info" in metrics.raw


async def test_readyz_of_a_service_follows_its_readiness_probe(stack: GatewayStack) -> None:
    """When the OTP service's readiness probe fails (its store does not answer), its /readyz is 503 with ready
    false and NOT_SERVING, while /healthz stays 200; when the probe passes again, /readyz is 200 again."""
    server = stack.components["otp"].server
    probe = server._readiness

    async def failing() -> None:
        raise ConnectionError("the store does not answer")

    server._readiness = failing
    try:
        answer = await stack.management_get("/readyz", "otp")
        assert answer.status == 503
        assert answer.body["components"]["otp"] == {"ready": False, "grpc_health": "NOT_SERVING"}
        assert (await stack.management_get("/healthz", "otp")).status == 200
    finally:
        server._readiness = probe
    assert (await stack.management_get("/readyz", "otp")).status == 200


def test_management_addresses_default_per_component_and_can_be_set_or_turned_off() -> None:
    """KAGI_<C>_MANAGEMENT_ADDR defaults to 127.0.0.1:9090 (gateway), 9091 (CA), 9092 (OTP), 9093 (enrollment);
    a container sets 0.0.0.0:PORT; `off` turns it off; anything else that is not HOST:PORT is refused."""
    defaults = {name: management_address({}, name) for name in ("gateway", "ca", "otp", "enrollment")}
    assert defaults == {
        "gateway": ("127.0.0.1", 9090),
        "ca": ("127.0.0.1", 9091),
        "otp": ("127.0.0.1", 9092),
        "enrollment": ("127.0.0.1", 9093),
    }
    everywhere = "0.0.0.0"  # noqa: S104 - what a container sets
    assert management_address({"KAGI_CA_MANAGEMENT_ADDR": f"{everywhere}:9191"}, "ca") == (everywhere, 9191)
    assert management_address({"KAGI_OTP_MANAGEMENT_ADDR": "[::]:9092"}, "otp") == ("::", 9092)
    assert management_address({"KAGI_ENROLLMENT_MANAGEMENT_ADDR": "off"}, "enrollment") is None
    with pytest.raises(InvalidArgument):
        management_address({"KAGI_GATEWAY_MANAGEMENT_ADDR": "9090"}, "gateway")


def test_gateway_settings_read_the_edge_and_rate_limit_variables(tmp_path: Path) -> None:
    """The gateway's settings read the connection limits, the rate limits (`off` turns them all off), the
    trusted proxies, a Redis store for shared counters (SQLite keeps them in the process) and the management
    address; a malformed rate limit or proxy is refused, naming the variable."""
    env = {
        "KAGI_GATEWAY_TLS_CERT": str(tmp_path / "c.pem"),
        "KAGI_GATEWAY_TLS_KEY": str(tmp_path / "k.pem"),
        "KAGI_GATEWAY_TLS_CA": str(tmp_path / "ca.pem"),
    }
    defaults = GatewaySettings.from_env(env)
    assert (defaults.edge.header_timeout, defaults.edge.keepalive_timeout) == (5.0, 30.0)
    assert defaults.rate_limits["enrollment_address"].burst == 20
    assert defaults.rate_limits["enrollment_address"].window == 120.0
    assert defaults.store_url is None
    assert defaults.management == ("127.0.0.1", 9090)
    changed = GatewaySettings.from_env(
        env
        | {
            "KAGI_GATEWAY_RATE_LIMITS": "off",
            "KAGI_GATEWAY_HEADER_TIMEOUT_SECONDS": "3",
            "KAGI_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "64",
            "KAGI_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1",
            "KAGI_STORE_URL": "redis://127.0.0.1:6379/0",
            "KAGI_GATEWAY_MANAGEMENT_ADDR": "0.0.0.0:9090",
        }
    )
    assert changed.rate_limits == {}
    assert (changed.edge.header_timeout, changed.edge.max_connections_per_address) == (3.0, 64)
    assert [str(network) for network in changed.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert changed.store_url == "redis://127.0.0.1:6379/0"
    assert GatewaySettings.from_env(env | {"KAGI_STORE_URL": "sqlite:"}).store_url is None
    one = GatewaySettings.from_env(
        env | {"KAGI_GATEWAY_RATE_LIMITS": "activation_token=2/10m:4,ocsp_nonce_address=off"}
    )
    assert one.rate_limits["activation_token"].window == 1200.0
    assert "ocsp_nonce_address" not in one.rate_limits
    for name, value in (("KAGI_GATEWAY_RATE_LIMITS", "enrollment_address=lots"), ("KAGI_GATEWAY_RATE_LIMITS", "x=1/m")):
        with pytest.raises(InvalidArgument) as raised:
            GatewaySettings.from_env(env | {name: value})
        assert raised.value.fields
    with pytest.raises(InvalidArgument) as raised:
        GatewaySettings.from_env(env | {"KAGI_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/33"})
    assert "KAGI_GATEWAY_TRUSTED_PROXIES" in raised.value.fields


async def test_kagi_dev_stack_serves_one_management_listener_for_every_component(tmp_path: Path) -> None:
    """The all-in-one stack (`kagi dev`) serves one management listener: /readyz names the CA, OTP, enrollment
    service and gateway, all ready, and /metrics carries the gateway's collectors with the process's."""
    stack = await start_stack(tmp_path / "state", ports=FREE_PORTS)
    try:
        url = f"http://127.0.0.1:{stack.ports['management']}"
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/readyz") as response:
                assert response.status == 200
                body = await response.json()
            assert sorted(body["components"]) == ["ca", "enrollment", "gateway", "otp"]
            assert all(component["ready"] for component in body["components"].values())
            async with session.get(url + "/metrics") as response:
                text = await response.text()
        assert "kagi_gateway_http_requests_total" in text or "kagi_gateway_tls_connections_total" in text
        assert "python_info" in text
        for name in ("ca", "otp", "enrollment", "gateway"):
            assert stack.components[name].management is None  # each component's own listener is off in dev
    finally:
        await stack.stop(0)
