"""The whole stack in one process: the CA, OTP and enrollment services and the gateway, on one store, with a CA
hierarchy and credentials created under a state directory on first start and reused after.

`kagi dev` runs it on the design's ports; the tests and benchmarks run it on free ports with their own clock,
store and overrides. Every component's settings come from its `from_env` over the one environment that
`stack_environment` writes (the same variables `kagi serve` reads), so a new setting is one edit there.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kagi.clock import Clock
from kagi.runtime.management import ManagementListener, Probe, grpc_readiness
from kagi.runtime.serve import Stoppable

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings
    from services.ca_service.creation import DevPki

DEV_PORTS = {
    "ca": 50051,
    "otp": 50052,
    "enrollment": 50053,
    "gateway": 8443,
    "gateway_http": 8080,
    # One plain-HTTP management listener (/healthz, /readyz, /metrics) for every component of the stack.
    "management": 9090,
}

FREE_PORTS = dict.fromkeys(DEV_PORTS, 0)
"""Lets every component bind a free port; later components are pointed at the ports taken."""

COMPONENTS = ("ca", "otp", "enrollment", "gateway")

Management = Literal["shared", "each", "off"]
"""Where the stack serves /healthz, /readyz and /metrics: one listener for all (`kagi dev`), one
per component on a free port (as `kagi serve` runs them), or none."""


@dataclass(frozen=True)
class DevSecrets:
    """The development secrets, each a 0600 file under <state-dir>/secrets."""

    password_pepper: Path
    otp_pepper: Path
    otp_kek: Path


def ensure_secrets(state_dir: Path) -> DevSecrets:
    """Create the development peppers and key-encryption key once, then reuse them."""
    directory = state_dir / "secrets"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    made = DevSecrets(directory / "password-pepper", directory / "otp-pepper", directory / "otp-kek")
    for path, value in (
        (made.password_pepper, secrets.token_urlsafe(48)),
        (made.otp_pepper, secrets.token_urlsafe(48)),
        (made.otp_kek, base64.b64encode(secrets.token_bytes(32)).decode()),
    ):
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(value)
    return made


def _free_port() -> int:
    """Return a TCP port free on the loopback address now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pki_base_url(ports: Mapping[str, int]) -> str:
    """Return the base URL certificates name for CRLs and OCSP: the gateway's plain-HTTP port."""
    return f"http://127.0.0.1:{ports['gateway_http']}"


def stack_environment(
    pki: DevPki, ports: Mapping[str, int], store_url: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the KAGI_* configuration of every component of the stack, as `kagi serve` reads it.

    `ports` names every port of DEV_PORTS; `extra` is applied last, so it overrides any variable.
    """
    from services.enrollment_service.adapters.signing_keys import DEV_PASSPHRASE_FILE, ensure_dev_signing_key

    state_dir = pki.state_dir
    secret_files = ensure_secrets(state_dir)
    signing_keys, _ = ensure_dev_signing_key(state_dir)
    env = {
        "KAGI_STATE_DIR": str(state_dir),
        "KAGI_STORE_URL": store_url,
        "KAGI_CA_DIR": str(pki.ca_dir),
        "KAGI_CA_KEY_PASSPHRASE_FILE": str(pki.passphrase_file),
        "KAGI_PASSWORD_PEPPER_FILE": str(secret_files.password_pepper),
        "KAGI_OTP_PEPPER_FILE": str(secret_files.otp_pepper),
        "KAGI_OTP_KEK_FILE": str(secret_files.otp_kek),
        "KAGI_PKI_BASE_URL": pki_base_url(ports),
        "KAGI_APP_URL": f"https://localhost:{ports['gateway']}/app",
        "KAGI_GATEWAY_HTTP_PORT": str(ports["gateway_http"]),
        "KAGI_ENROLLMENT_SIGNING_KEY_FILE": str(signing_keys),
        "KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE_FILE": str(state_dir / "secrets" / DEV_PASSPHRASE_FILE),
        "KAGI_TOKEN_ISSUER": f"https://localhost:{ports['gateway']}",
    }
    for role in COMPONENTS:
        prefix = f"KAGI_{role.upper()}"
        env[f"{prefix}_HOST"] = "127.0.0.1"
        env[f"{prefix}_MANAGEMENT_ADDR"] = "off"  # the stack chooses its management listeners (see Management)
        env[f"{prefix}_TLS_CERT"] = str(pki.certificate(role))
        env[f"{prefix}_TLS_KEY"] = str(pki.key(role))
        env[f"{prefix}_TLS_CA"] = str(pki.root)
    for role in ("ca", "otp", "enrollment"):
        env[f"KAGI_{role.upper()}_PORT"] = str(ports[role])
        env[f"KAGI_{role.upper()}_TARGET"] = f"localhost:{ports[role]}"
    env["KAGI_GATEWAY_PORT"] = str(ports["gateway"])
    env.update(extra or {})
    return env


@dataclass
class RunningStack:
    """The running components, the settings each was started with, and what a client needs to reach them."""

    state_dir: Path
    pki: DevPki
    env: dict[str, str]
    ports: dict[str, int]
    components: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    management: ManagementListener | None = None

    @property
    def tls_dir(self) -> Path:
        """Return the folder of ca.pem (the root to trust) and the internal certificates, the developer's too."""
        return self.state_dir / "tls"

    def target(self, name: str) -> str:
        """Return host:port of a gRPC service."""
        return f"localhost:{self.ports[name]}"

    def gateway_settings(self, **overrides: Any) -> GatewaySettings:
        """Return the settings of a gateway in front of the running services, `overrides` replacing fields."""
        from gateway.settings import GatewaySettings

        return dataclasses.replace(GatewaySettings.from_env(self.env), **overrides)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop every component, the front first."""
        if self.management is not None:
            await self.management.stop()
            self.management = None
        for name in reversed(COMPONENTS):
            component: Stoppable | None = self.components.pop(name, None)
            if component is not None:
                await component.stop(grace)


async def _shared_management(stack: RunningStack, port: int) -> ManagementListener:
    """Start the stack's one management listener: every component's readiness, every metric."""
    probes: dict[str, Probe] = {}
    registries = []
    for name, component in stack.components.items():
        if name == "gateway":
            probes[name] = component.ready
            registries.append(component.metrics.registry)
        else:
            probes[name] = grpc_readiness(component.server)
    listener = ManagementListener("127.0.0.1", port, probes, registries=lambda: tuple(registries))
    await listener.start()
    return listener


async def start_stack(
    state_dir: Path,
    *,
    ports: Mapping[str, int] | None = None,
    store_url: str = "sqlite:",
    clock: Clock | None = None,
    ca_on_real_time: bool = False,
    extra_env: Mapping[str, str] | None = None,
    with_gateway: bool = True,
    management: Management = "shared",
    gateway_overrides: Mapping[str, Any] | None = None,
) -> RunningStack:
    """Start the CA, OTP and enrollment services (and the gateway) and return them running.

    `ports` defaults to DEV_PORTS; a port it leaves out, or gives as 0, is a free one, and later components are
    pointed at the ports taken; the gateway's free ports are chosen before anything starts, so the app URL in the
    step-7 mail and the PKI URLs in certificates name them.
    `clock` drives the services; `ca_on_real_time` keeps the CA on the real time (the gateway checks certificates'
    validity with it, so a certificate issued while the services' clock is months ahead would not be valid yet).
    `extra_env` adds or replaces KAGI_* variables; `gateway_overrides` replaces fields of the gateway's settings
    that have no variable (or need a value the variables cannot spell).
    """
    # The services load only here, so that `kagi token` and `kagi admin` start without them.
    from services.ca_service.creation import ensure_dev_pki_async
    from services.ca_service.domain.settings import PkiSettings
    from services.ca_service.main import CaSettings, start_ca
    from services.enrollment_service.main import EnrollmentSettings, start_enrollment
    from services.otp_service.main import OtpSettings, start_otp

    chosen = dict(DEV_PORTS if ports is None else {**FREE_PORTS, **ports})
    if with_gateway:
        # The gateway's addresses are written into what the services hand out before the gateway starts (the
        # app's URL in the step-7 mail, the CRL and OCSP URLs in certificates): pick its free ports now.
        for name in ("gateway", "gateway_http"):
            if not chosen.get(name):
                chosen[name] = _free_port()
    ca_clock = None if ca_on_real_time else clock
    extra = dict(extra_env or {})
    if management == "each":
        for role in COMPONENTS:
            extra.setdefault(f"KAGI_{role.upper()}_MANAGEMENT_ADDR", "127.0.0.1:0")
    pki = await ensure_dev_pki_async(
        state_dir, store_url=store_url, settings=PkiSettings(base_url=pki_base_url(chosen)), clock=ca_clock
    )
    env = stack_environment(pki, chosen, store_url, extra)
    stack = RunningStack(state_dir, pki, env, chosen)
    try:
        stack.settings["ca"] = CaSettings.from_env(env)
        stack.components["ca"] = ca = await start_ca(stack.settings["ca"], clock=ca_clock)
        chosen["ca"] = ca.port
        env.update(stack_environment(pki, chosen, store_url, extra))  # the OTP service follows the CA
        stack.settings["otp"] = OtpSettings.from_env(env)
        stack.components["otp"] = otp = await start_otp(stack.settings["otp"], clock=clock)
        chosen["otp"] = otp.port
        env.update(stack_environment(pki, chosen, store_url, extra))
        stack.settings["enrollment"] = EnrollmentSettings.from_env(env)
        stack.components["enrollment"] = enrollment = await start_enrollment(stack.settings["enrollment"], clock=clock)
        chosen["enrollment"] = enrollment.port
        env.update(stack_environment(pki, chosen, store_url, extra))
        if with_gateway:
            from gateway.main import start_gateway

            stack.settings["gateway"] = stack.gateway_settings(**(gateway_overrides or {}))
            stack.components["gateway"] = gateway = await start_gateway(stack.settings["gateway"])
            chosen["gateway"] = gateway.https_port
            if gateway.http_port is not None:
                chosen["gateway_http"] = gateway.http_port
        if management == "shared":
            stack.management = await _shared_management(stack, chosen["management"])
            chosen["management"] = stack.management.port
    except BaseException:
        await stack.stop(0)
        raise
    return stack
