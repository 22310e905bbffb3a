"""The gateway's settings from the environment: the documented defaults, a missing certificate named, the
plain-HTTP port switchable off, plaintext backends only on loopback; and `kagi serve gateway` exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from kagi.cli.serve import COMPONENTS
from kagi.errors import InvalidArgument

TLS = {"KAGI_GATEWAY_TLS_CERT": "g.pem", "KAGI_GATEWAY_TLS_KEY": "g-key.pem", "KAGI_GATEWAY_TLS_CA": "ca.pem"}


def test_defaults_are_the_documented_ones() -> None:
    """Host 127.0.0.1, HTTPS 8443, HTTP 8080, CA/OTP/enrollment on localhost:50051-50053, one worker, the
    customer CA fetched from the CA, and the internal identity used for the backends too."""
    settings = GatewaySettings.from_env(TLS)
    assert (settings.host, settings.https_port, settings.http_port) == ("127.0.0.1", 8443, 8080)
    assert (settings.ca_target, settings.otp_target, settings.enrollment_target) == (
        "localhost:50051",
        "localhost:50052",
        "localhost:50053",
    )
    assert settings.workers == 1
    assert settings.customer_ca_file is None
    assert settings.backend_tls == settings.tls
    assert settings.tls.cert_file == Path("g.pem")


def test_overrides_and_switches() -> None:
    """Every variable is read; KAGI_GATEWAY_HTTP_PORT=-1 turns the PKI port off; a customer CA bundle is a path."""
    settings = GatewaySettings.from_env(
        {
            **TLS,
            "KAGI_GATEWAY_HOST": "::1",
            "KAGI_GATEWAY_PORT": "9443",
            "KAGI_GATEWAY_HTTP_PORT": "-1",
            "KAGI_GATEWAY_CUSTOMER_CA": "/etc/kagi/customer-bundle.pem",
            "KAGI_CA_TARGET": "ca.internal:50051",
            "KAGI_GATEWAY_WORKERS": "4",
        }
    )
    assert (settings.host, settings.https_port, settings.http_port, settings.workers) == ("::1", 9443, None, 4)
    assert settings.customer_ca_file == Path("/etc/kagi/customer-bundle.pem")
    assert settings.ca_target == "ca.internal:50051"


def test_missing_certificate_is_named() -> None:
    """Without KAGI_GATEWAY_TLS_CERT the settings refuse to build and say which variable is missing."""
    with pytest.raises(InvalidArgument) as failure:
        GatewaySettings.from_env({k: v for k, v in TLS.items() if k != "KAGI_GATEWAY_TLS_CERT"})
    assert "KAGI_GATEWAY_TLS_CERT" in failure.value.fields


def test_plaintext_backends_only_on_loopback() -> None:
    """KAGI_INSECURE_PLAINTEXT=1 is refused when a backend target is not a loopback address."""
    GatewaySettings.from_env({**TLS, "KAGI_INSECURE_PLAINTEXT": "1"})
    with pytest.raises(InvalidArgument) as failure:
        GatewaySettings.from_env({**TLS, "KAGI_INSECURE_PLAINTEXT": "1", "KAGI_OTP_TARGET": "otp.internal:50052"})
    assert "otp_target" in failure.value.fields


def test_kagi_serve_knows_the_gateway() -> None:
    """`kagi serve gateway` is a component: it builds GatewaySettings from the environment."""
    assert "gateway" in COMPONENTS
