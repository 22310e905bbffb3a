"""The all-in-one stack: the CA, OTP and enrollment services and the gateway in one process, on the embedded
store, with a CA hierarchy and credentials created under a state directory on first start and reused after.

`kagi dev` runs it on the design's ports; the end-to-end tests and benchmarks run it on free ports.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kagi.clock import Clock
from kagi.runtime.management import ManagementListener, Probe, grpc_readiness
from kagi.runtime.serve import Stoppable

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class DevSecrets:
    """DevSecrets are the development secrets, each a 0600 file under <state-dir>/secrets."""

    password_pepper: Path
    otp_pepper: Path
    otp_kek: Path


def ensure_secrets(state_dir: Path) -> DevSecrets:
    """ensure_secrets creates the development peppers and key-encryption key once, then reuses them."""
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


@dataclass
class DevStack:
    """DevStack is the running set of components and what a client needs to reach them."""

    state_dir: Path
    env: dict[str, str]
    ports: dict[str, int]
    components: dict[str, Any] = field(default_factory=dict)
    management: ManagementListener | None = None

    @property
    def tls_dir(self) -> Path:
        """Tls_dir holds ca.pem (the root to trust) and the developer's operator certificate."""
        return self.state_dir / "tls"

    def target(self, name: str) -> str:
        """Target is host:port of a gRPC service."""
        return f"localhost:{self.ports[name]}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop stops every component, the front first."""
        if self.management is not None:
            await self.management.stop()
            self.management = None
        for name in ("gateway", "enrollment", "otp", "ca"):
            component: Stoppable | None = self.components.pop(name, None)
            if component is not None:
                await component.stop(grace)


async def _management(stack: DevStack, port: int) -> ManagementListener:
    """_management is the stack's one management listener: every component's readiness, every metric."""
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


def stack_environment(
    pki: DevPki, ports: Mapping[str, int], store_url: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """stack_environment is the KAGI_* configuration of every component of the stack, as `kagi serve` reads it."""
    from services.enrollment_service.adapters.signing_keys import DEV_PASSPHRASE_FILE, ensure_dev_signing_key

    state_dir = pki.state_dir
    secret_files = ensure_secrets(state_dir)
    signing_keys, _ = ensure_dev_signing_key(state_dir)
    env = {
        "KAGI_STATE_DIR": str(state_dir),
        "KAGI_STORE_URL": store_url,
        "KAGI_CA_KEY_PASSPHRASE_FILE": str(pki.passphrase_file),
        "KAGI_PASSWORD_PEPPER_FILE": str(secret_files.password_pepper),
        "KAGI_OTP_PEPPER_FILE": str(secret_files.otp_pepper),
        "KAGI_OTP_KEK_FILE": str(secret_files.otp_kek),
        "KAGI_PKI_BASE_URL": f"http://127.0.0.1:{ports['gateway_http']}",
        "KAGI_APP_URL": f"https://localhost:{ports['gateway']}/app",
        "KAGI_GATEWAY_HTTP_PORT": str(ports["gateway_http"]),
        "KAGI_ENROLLMENT_SIGNING_KEY_FILE": str(signing_keys),
        "KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE_FILE": str(state_dir / "secrets" / DEV_PASSPHRASE_FILE),
        "KAGI_TOKEN_ISSUER": f"https://localhost:{ports['gateway']}",
    }
    for role in ("ca", "otp", "enrollment", "gateway"):
        prefix = f"KAGI_{role.upper()}"
        env[f"{prefix}_HOST"] = "127.0.0.1"
        env[f"{prefix}_MANAGEMENT_ADDR"] = "off"  # the stack serves one management listener for all
        env[f"{prefix}_TLS_CERT"] = str(pki.certificate(role))
        env[f"{prefix}_TLS_KEY"] = str(pki.key(role))
        env[f"{prefix}_TLS_CA"] = str(pki.root)
    for role in ("ca", "otp", "enrollment"):
        env[f"KAGI_{role.upper()}_PORT"] = str(ports[role])
        env[f"KAGI_{role.upper()}_TARGET"] = f"localhost:{ports[role]}"
    env["KAGI_GATEWAY_PORT"] = str(ports["gateway"])
    env.update(extra or {})
    return env


async def start_stack(
    state_dir: Path,
    *,
    ports: Mapping[str, int] | None = None,
    store_url: str = "sqlite:",
    clock: Clock | None = None,
    extra_env: Mapping[str, str] | None = None,
    with_gateway: bool = True,
) -> DevStack:
    """start_stack starts the CA, OTP and enrollment services (and the gateway) and returns them running.

    Ports of 0 are replaced by free ones as each component binds, and later components are pointed at them.
    """
    from services.ca_service.creation import ensure_dev_pki_async
    from services.ca_service.main import CaSettings, start_ca
    from services.enrollment_service.main import EnrollmentSettings, start_enrollment
    from services.otp_service.main import OtpSettings, start_otp

    chosen = dict(DEV_PORTS if ports is None else ports)
    chosen.setdefault("management", 0)
    pki = await ensure_dev_pki_async(state_dir, store_url=store_url, clock=clock)
    env = stack_environment(pki, chosen, store_url, extra_env)
    stack = DevStack(state_dir, env, chosen)
    try:
        stack.components["ca"] = ca = await start_ca(CaSettings.from_env(env), clock=clock)
        chosen["ca"] = ca.port
        stack.components["otp"] = otp = await start_otp(OtpSettings.from_env(env), clock=clock)
        chosen["otp"] = otp.port
        env.update(stack_environment(pki, chosen, store_url, extra_env))
        enrollment = await start_enrollment(EnrollmentSettings.from_env(env), clock=clock)
        stack.components["enrollment"] = enrollment
        chosen["enrollment"] = enrollment.port
        env.update(stack_environment(pki, chosen, store_url, extra_env))
        if with_gateway:
            from gateway.main import GatewaySettings, start_gateway

            gateway = await start_gateway(GatewaySettings.from_env(env))
            stack.components["gateway"] = gateway
            chosen["gateway"] = gateway.https_port
            if gateway.http_port is not None:
                chosen["gateway_http"] = gateway.http_port
        stack.management = await _management(stack, chosen["management"])
        chosen["management"] = stack.management.port
    except BaseException:
        await stack.stop(0)
        raise
    return stack
