"""The store URL may come from a file (KAGI_STORE_URL_FILE), as every setting that can carry a secret does: a Redis
URL carries its user's password, which then stays out of the environment and the deployment's description."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from kagi.errors import InvalidArgument
from kagi.runtime.settings import Environment, store_url_from_env
from services.ca_service.main import CaSettings
from services.enrollment_service.main import EnrollmentSettings
from services.otp_service.main import OtpSettings

URL = "redis://kagi-otp:s3cret-from-file@redis:6379/0"


def _url_file(tmp_path: Path) -> Path:
    path = tmp_path / "store-url"
    path.write_text(URL + "\n")
    return path


def test_the_file_wins_over_the_variable_and_the_default(tmp_path: Path) -> None:
    """KAGI_STORE_URL_FILE's content (its newline dropped) is the URL; KAGI_STORE_URL and the default only
    count without it."""
    path = _url_file(tmp_path)
    env = {"KAGI_STORE_URL": "redis://elsewhere:6379/0", "KAGI_STORE_URL_FILE": str(path)}
    assert store_url_from_env(Environment(env)) == URL
    assert store_url_from_env(Environment({"KAGI_STORE_URL": "redis://elsewhere:6379/0"})) == "redis://elsewhere:6379/0"
    assert store_url_from_env(Environment({})) == "sqlite:"


def test_an_unreadable_file_names_the_variable(tmp_path: Path) -> None:
    """A KAGI_STORE_URL_FILE that cannot be read is an error naming KAGI_STORE_URL_FILE, never a fallback."""
    with pytest.raises(InvalidArgument) as refused:
        store_url_from_env(Environment({"KAGI_STORE_URL_FILE": str(tmp_path / "missing")}))
    assert "KAGI_STORE_URL_FILE" in refused.value.fields


_KEK = base64.b64encode(bytes(32)).decode()
_Settings = CaSettings | OtpSettings | EnrollmentSettings | GatewaySettings
_COMPONENTS: dict[str, tuple[Callable[[Mapping[str, str]], _Settings], dict[str, str]]] = {
    "ca": (CaSettings.from_env, {"KAGI_CA_KEY_PASSPHRASE": "p"}),
    "otp": (OtpSettings.from_env, {"KAGI_OTP_PEPPER": "p" * 32, "KAGI_OTP_KEK": _KEK}),
    "enrollment": (
        EnrollmentSettings.from_env,
        {
            "KAGI_PASSWORD_PEPPER": "p" * 32,
            "KAGI_ENROLLMENT_SIGNING_KEY_FILE": "keys.pem",
            "KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE": "p",
        },
    ),
    "gateway": (GatewaySettings.from_env, {f"KAGI_GATEWAY_TLS_{f}": f"{f}.pem" for f in ("CERT", "KEY", "CA")}),
}


@pytest.mark.parametrize("component", list(_COMPONENTS))
def test_every_component_reads_its_store_url_from_the_file(tmp_path: Path, component: str) -> None:
    """The CA, the OTP service, the enrollment service and the gateway all take the URL from the file."""
    from_env, required = _COMPONENTS[component]
    environ = {"KAGI_INSECURE_PLAINTEXT": "1", "KAGI_STORE_URL_FILE": str(_url_file(tmp_path)), **required}
    assert from_env(environ).store_url == URL
