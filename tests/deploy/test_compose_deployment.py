"""The compose deployment (deploy/compose.yaml) run for real with podman: the image built from deploy/Containerfile,
the stack brought up on free loopback ports, the ten setup steps taken through the published gateway with curl,
openssl and oathtool, Redis and a service restarted on the way, and everything found intact.

Slow (a Debian base image made with mmdebstrap, a wheelhouse, an image build): it runs only when
KAGI_CONTAINER_TESTS=1 (scripts/test.sh sets it in CI) and podman, podman-compose and mmdebstrap are installed.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from kagi.runtime.settings import TlsFiles
from tests.integration.gateway.gateway_support import MOBILE, Answer, curl
from tests.support.enrollment_flow import PROFILE, USAGE_START_PASSWORD, mailed_ids, new_login_id, profile_entries
from tests.support.ports import stable_port
from tests.support.tools import run, tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
BASE_IMAGE = "localhost/kagi-base:bookworm"
IMAGE = "localhost/kagi:test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""

_COMPOSE = shutil.which("podman-compose") or str(Path(sys.executable).with_name("podman-compose"))
_MISSING = [name for name in ("podman", "mmdebstrap", "curl", "openssl", "oathtool") if shutil.which(name) is None]
if not Path(_COMPOSE).exists():
    _MISSING.append("podman-compose")

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("KAGI_CONTAINER_TESTS") != "1",
        reason="container test: set KAGI_CONTAINER_TESTS=1 to build the image and run the compose stack (minutes)",
    ),
    pytest.mark.skipif(bool(_MISSING), reason=f"container test needs {', '.join(_MISSING)}"),
    pytest.mark.timeout(1200),
]


@dataclass
class Deployment:
    """A compose project running the stack; what the gateway helpers need to reach it (`curl` takes it)."""

    project: str
    env: dict[str, str]
    workdir: Path
    https_port: int
    http_port: int
    root_file: Path

    @property
    def https_url(self) -> str:
        """Return the published gateway's base URL."""
        return f"https://localhost:{self.https_port}"

    def container(self, service: str) -> str:
        """Return the container name podman-compose gives the service."""
        return f"{self.project}_{service}_1"

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run podman with the deployment's configuration."""
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, check=check, timeout=300)

    def compose(self, *args: str) -> str:
        """Run podman-compose on the deployment's project and return its standard output."""
        done = subprocess.run(
            [_COMPOSE, "-p", self.project, "-f", str(COMPOSE_FILE), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"podman-compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def wait_healthy(self, *services: str, seconds: float = 120) -> None:
        """Wait until each service's compose health check passes (podman runs it on request here)."""
        deadline = time.monotonic() + seconds
        for service in services:
            while self.podman("healthcheck", "run", self.container(service), check=False).returncode != 0:
                assert time.monotonic() < deadline, f"{service} is not healthy:\n{self.logs(service)}"
                time.sleep(1)

    def logs(self, service: str) -> str:
        """Return the last lines a service's container wrote."""
        done = self.podman("logs", "--tail", "40", self.container(service), check=False)
        return done.stdout + done.stderr

    def restart(self, service: str) -> None:
        """Restart one container (stop with SIGTERM, start again) and wait until it is healthy."""
        started = time.monotonic()
        self.podman("stop", "-t", "20", self.container(service))
        print(f"{service} stopped in {time.monotonic() - started:.1f} s")
        self.podman("start", self.container(service))
        self.wait_healthy(service)

    def redis_cli(self, user: str, *args: str) -> str:
        """Run redis-cli in the Redis container as `user` (its password read there, never on a command line)."""
        login = 'REDISCLI_AUTH="$(cat /var/lib/kagi-redis/$0)" exec redis-cli --user "$0" "$@"'
        done = self.podman("exec", self.container("redis"), "sh", "-c", login, user, *args, check=False)
        return done.stdout + done.stderr

    def register_application(self) -> dict[str, str]:
        """Register a company as the bank's operator (`kagi admin` in the compose `admin` service); return the
        step-1 entries."""
        account = f"{uuid.uuid4().int % 10**7:07d}"
        notice = json.loads(
            self.compose(
                "--profile",
                "admin",
                "run",
                "--rm",
                "admin",
                "admin",
                "register-application",
                "--branch",
                "001",
                "--account-type",
                "ordinary",
                "--account-number",
                account,
                "--company",
                "株式会社サンプル",
                "--json",
            )
        )
        keys = ("branch_code", "account_type", "account_number", "temporary_login_password")
        return {key: notice[key] for key in (*keys, "temporary_confirmation_password")}

    async def mail_ids(self) -> tuple[str, str]:
        """Read the service ID and user ID of the step-7 mail from the mail sink's Maildir (its volume)."""
        mountpoint = self.podman("volume", "inspect", "--format", "{{.Mountpoint}}", f"{self.project}_mail")
        new = Path(mountpoint.stdout.strip()) / "mail" / "new"
        for _ in range(120):
            messages = [
                email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                for path in sorted(new.glob("*"), key=lambda p: p.stat().st_mtime)
            ] if new.is_dir() else []  # fmt: skip
            found = mailed_ids([m for m in messages if isinstance(m, EmailMessage)], MOBILE)
            if found is not None:
                return found
            await asyncio.sleep(0.5)
        raise AssertionError(f"the step-7 mail did not arrive:\n{self.logs('enrollment')}\n{self.logs('mail')}")


def _build(env: dict[str, str], workdir: Path) -> None:
    """Build the image on the local Debian base (made with mmdebstrap when missing), as a user would."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "build_image.sh"), "--local-base", "--tag", IMAGE, "--work", str(workdir / "build")],
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"scripts/build_image.sh failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Build the image, bring the compose stack up under its own project name on free loopback ports, and take
    it down with its volumes after."""
    workdir = tmp_path_factory.mktemp("deploy")
    (workdir / "containers.conf").write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(workdir / "containers.conf")}
    started = time.monotonic()
    _build(env, workdir)
    https_port, http_port = stable_port(), stable_port()
    env.update(
        KAGI_IMAGE=IMAGE,
        REDIS_IMAGE=BASE_IMAGE,  # the local base carries redis-server: no registry is needed
        KAGI_BIND="127.0.0.1",
        KAGI_HTTPS_PORT=str(https_port),
        KAGI_HTTP_PORT=str(http_port),
        KAGI_PKI_BASE_URL=f"http://127.0.0.1:{http_port}",
    )
    project = f"kagitest{uuid.uuid4().hex[:8]}"
    running = Deployment(project, env, workdir, https_port, http_port, workdir / "root.pem")
    try:
        running.compose("up", "-d")
        running.wait_healthy("ca", "otp", "enrollment", "gateway")
        root = running.podman("exec", running.container("gateway"), "cat", "/var/lib/kagi/tls/ca.pem").stdout
        running.root_file.write_text(root)
        print(f"image built and stack up in {time.monotonic() - started:.0f} s")
        yield running
    finally:
        for service in ("init", "ca", "otp", "enrollment", "gateway"):
            print(f"--- {service}\n{running.logs(service)}")
        subprocess.run(
            [_COMPOSE, "-p", project, "-f", str(COMPOSE_FILE), "down", "-v", "-t", "5"],
            env=env,
            capture_output=True,
            timeout=300,
        )


async def _retrying(
    deployment: Deployment, method: str, path: str, body: Any = None, *, cert: TlsFiles | None = None
) -> Answer:
    """Send a request with curl, again while the answer is 503 (a store or a service reconnecting after its restart
    says so, and a client tries again), for up to 30 seconds."""
    deadline = time.monotonic() + 30
    while True:
        answer = await curl(deployment, method, path, body, cert=cert)  # type: ignore[arg-type]
        if answer.status != 503 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(1)


def _first_certificate(bundle: Path, out: Path) -> Path:
    """Write the first certificate of a PEM bundle (the chain's issuing CA) to `out`."""
    out.write_text(bundle.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    return out


async def _ocsp_status(deployment: Deployment, certificate: Path, chain: Path) -> str:
    """Ask the OCSP responder named in the certificate (the published plain-HTTP port) with openssl."""
    url = (await run([tool("openssl"), "x509", "-in", str(certificate), "-noout", "-ocsp_uri"])).strip()
    assert url.startswith(f"http://127.0.0.1:{deployment.http_port}/"), url
    issuer = _first_certificate(chain, deployment.workdir / "issuer.pem")
    answer = await run(
        [tool("openssl"), "ocsp", "-issuer", str(issuer), "-cert", str(certificate), "-url", url,
         "-CAfile", str(deployment.root_file)]
    )  # fmt: skip
    return answer


async def test_ten_steps_through_the_compose_stack_survive_restarts(deployment: Deployment) -> None:
    """The containers serve the ten setup steps end to end over the published gateway (mTLS from step 5 on,
    the step-7 mail through the mail container), and a restart of Redis after step 4 and of the enrollment
    service after step 7 loses nothing: the enrollment goes on to COMPLETED and the certificate stays good
    over OCSP."""
    entries = deployment.register_application()
    work = deployment.workdir

    answer = await curl(deployment, "POST", "/v1/enrollments", entries)
    assert answer.status == 201, answer.body
    enrollment_id, session = answer.body["enrollment_id"], answer.body["session_token"]
    path = f"/v1/enrollments/{enrollment_id}"
    answer = await curl(deployment, "PUT", path + "/profile", profile_entries(new_login_id()), bearer=session)
    assert answer.body["state"] == "PROFILE_SUBMITTED", answer.body
    answer = await curl(deployment, "POST", path + "/registration", {}, bearer=session)
    assert answer.body["state"] == "REGISTERED", answer.body
    key, csr = work / "customer-key.pem", work / "customer.csr"
    await run(
        [tool("openssl"), "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=browser"]
    )  # fmt: skip
    answer = await curl(deployment, "POST", path + "/certificate", {"csr_pem": csr.read_text()}, bearer=session)
    assert answer.body["state"] == "CERTIFICATE_ISSUED", answer.body
    certificate, chain = work / "customer.pem", work / "chain.pem"
    certificate.write_text(answer.body["certificate_pem"])
    chain.write_text(answer.body["chain_pem"])
    assert ": good" in await _ocsp_status(deployment, certificate, chain)

    # Redis restarts (AOF, every write synced): the enrollment and the certificate are still there.
    deployment.restart("redis")

    customer = TlsFiles(certificate, key, deployment.root_file)
    for route, body, state in (
        ("/certificate-login", {}, "CERTIFICATE_LOGGED_IN"),
        ("/password-login", {"login_password": PROFILE["login_password"]}, "PASSWORD_VERIFIED"),
        (
            "/token",
            {
                "mobile_email": MOBILE,
                "mobile_email_confirmation": MOBILE,
                "usage_start_password": USAGE_START_PASSWORD,
                "usage_start_password_confirmation": USAGE_START_PASSWORD,
            },
            "TOKEN_REQUESTED",
        ),
    ):
        answer = await _retrying(deployment, "POST", path + route, body, cert=customer)
        assert answer.status == 200, (route, answer.body, deployment.logs("gateway"))
        assert answer.body["state"] == state, answer.body

    # The enrollment service restarts: the step-7 mail still goes out (the outbox is in Redis).
    deployment.restart("enrollment")
    service_id, app_user_id = await deployment.mail_ids()
    # The gateway's channel reconnects to the restarted service: a read answers once it has (the activation,
    # rate-limited per address, is then sent once).
    answer = await _retrying(deployment, "GET", path, cert=customer)
    assert answer.body["state"] == "TOKEN_REQUESTED", answer.body

    activation = {"service_id": service_id, "user_id": app_user_id, "usage_start_password": USAGE_START_PASSWORD}
    seed = await curl(deployment, "POST", "/v1/app/activation", {**activation, "agreed": True})
    assert seed.status == 200, seed.body
    registration = {"service_id": service_id, "user_id": app_user_id, "activation_id": seed.body["activation_id"]}
    answer = await _retrying(deployment, "POST", "/v1/app/registration", registration)
    assert answer.body == {"state": "APP_REGISTERED"}, answer.body
    code = (await run([tool("oathtool"), "--totp", "-b", "-s", "60", seed.body["secret"]])).strip()
    answer = await _retrying(deployment, "POST", path + "/otp", {"otp": code}, cert=customer)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("COMPLETED", None)

    answer = await curl(deployment, "GET", path, cert=customer)
    assert answer.body["state"] == "COMPLETED", answer.body
    assert ": good" in await _ocsp_status(deployment, certificate, chain)


def test_no_running_component_mounts_the_root_key(deployment: Deployment) -> None:
    """The offline root key's volume is mounted by the init job only, and every component runs unprivileged on
    a read-only root filesystem."""
    for service in ("ca", "otp", "enrollment", "gateway", "mail"):
        inspected = json.loads(deployment.podman("inspect", deployment.container(service)).stdout)[0]
        volumes = {mount.get("Name") for mount in inspected["Mounts"]}
        assert f"{deployment.project}_root-key" not in volumes, service
        assert inspected["HostConfig"]["ReadonlyRootfs"], service
        assert inspected["Config"]["User"] == "10001:10001", service
    init = json.loads(deployment.podman("inspect", deployment.container("init")).stdout)[0]
    assert f"{deployment.project}_root-key" in {mount.get("Name") for mount in init["Mounts"]}
    assert init["State"]["ExitCode"] == 0


def test_each_component_reaches_redis_as_its_own_user(deployment: Deployment) -> None:
    """Redis's `default` user is off; each component's store URL names its own Redis user and comes from a file
    in its own volume, not from its environment; the gateway's user is refused the CA's keys; and after the ten
    steps, a Redis restart included, Redis refused nothing but CONFIG GET (the store's durability check, which
    then reads INFO): the commands in deploy/redis/users.acl are all the real services need."""
    anonymous = deployment.podman("exec", deployment.container("redis"), "redis-cli", "ping", check=False)
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    for component in ("ca", "otp", "enrollment", "gateway"):
        inspected = json.loads(deployment.podman("inspect", deployment.container(component)).stdout)[0]
        environment = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
        assert "KAGI_STORE_URL" not in environment, component
        assert environment["KAGI_STORE_URL_FILE"] == "/var/lib/kagi/secrets/store-url"
        url = deployment.podman("exec", deployment.container(component), "cat", "/var/lib/kagi/secrets/store-url")
        assert url.stdout.startswith(f"redis://kagi-{component}:"), component
    lines = deployment.redis_cli("kagi-admin", "ACL", "LOG", "1000").splitlines()
    refused = {
        (lines[i + 1], lines[i + 3])  # (object, username): they follow each other in every entry
        for i, line in enumerate(lines[:-3])
        if line == "object" and lines[i + 2] == "username"
    }
    # Nothing else, for anyone: not even the `default` user, as which Redis 7.0 replays the AOF's transactions.
    assert {(what, user) for what, user in refused if what != "config|get"} == set(), refused
    assert "NOPERM" in deployment.redis_cli("kagi-gateway", "HMGET", "kagi:{ca}:version", "v")
    assert "NOPERM" in deployment.redis_cli("kagi-otp", "HMGET", "kagi:{enrollment}:version", "v")
