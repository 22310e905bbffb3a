"""The gateway's test stack: the whole stack (`kagi.cli.stack`) in-process on free ports with real mTLS and a real
SMTP server; an HTTPS client with a real ssl context; a customer who walks the steps through the gateway."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from multidict import CIMultiDict

from gateway.main import GatewayComponent, GatewaySettings
from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.stack import RunningStack, start_stack
from kagi.clock import Clock
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.enrollment.v1 import enrollment_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import TlsFiles
from services.ca_service.creation import DevPki
from services.ca_service.main import CaSettings, start_ca
from services.enrollment_service.domain.messages import CARRIER_FILTER_NOTE
from tests.support.enrollment_flow import (
    COMPANY,
    PROFILE,
    USAGE_START_PASSWORD,
    mailed_ids,
    make_csr,
    new_account_number,
    new_login_id,
    profile_entries,
    register_application,
    write_certificate,
)
from tests.support.ports import stable_port
from tests.support.smtp import SmtpServer
from tests.support.tools import run, tool

MOBILE = "phone@example.jp"


@dataclass
class Answer:
    """One HTTP response: status, headers and the JSON body (None when it is not JSON)."""

    status: int
    headers: CIMultiDict[str]
    body: Any
    raw: bytes = b""

    @property
    def reason(self) -> str:
        """Return error.reason of a JSON error body."""
        return str(self.body["error"]["reason"])


@dataclass
class GatewayStack:
    """The running services, the gateway in front of them, and the files clients need."""

    dev: RunningStack
    smtp: SmtpServer
    workdir: Path
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def pki(self) -> DevPki:
        """Return the stack's CA hierarchy and internal certificates."""
        return self.dev.pki

    @property
    def components(self) -> dict[str, Any]:
        """Return the running components by name (a test stopping one takes it out)."""
        return self.dev.components

    @property
    def ca_settings(self) -> CaSettings:
        """Return the settings the CA was started with."""
        settings: CaSettings = self.dev.settings["ca"]
        return settings

    @property
    def gateway(self) -> GatewayComponent:
        """Return the running gateway component."""
        component: GatewayComponent = self.components["gateway"]
        return component

    def target(self, service: str) -> str:
        """Return host:port of a service's gRPC port."""
        return f"localhost:{self.components[service].port}"

    @property
    def https_url(self) -> str:
        """Return the gateway's HTTPS base URL (by name: the certificate is for localhost)."""
        return f"https://localhost:{self.gateway.https_port}"

    def management_url(self, component: str = "gateway") -> str:
        """Return a component's plain-HTTP management listener (/healthz, /readyz, /metrics)."""
        listener = self.components[component].management
        assert listener is not None, f"{component} has no management listener"
        return f"http://127.0.0.1:{listener.port}"

    async def management_get(self, path: str, component: str = "gateway") -> Answer:
        """GET a path on a component's management listener."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.management_url(component) + path) as response,
        ):
            raw = await response.read()
            parsed = json.loads(raw) if "json" in response.content_type else None
            return Answer(response.status, CIMultiDict(response.headers), parsed, raw)

    @property
    def http_url(self) -> str:
        """Return the gateway's plain-HTTP (PKI) base URL."""
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def root_file(self) -> Path:
        """Return the root CA certificate clients trust."""
        return self.pki.root_file

    def identity(self, role: str) -> TlsFiles:
        """Return an internal certificate of the stack (developer is the operator)."""
        return self.pki.tls("operator" if role == "developer" else role)

    def _channel(self, service: str, role: str) -> grpc.aio.Channel:
        channel = open_channel(self.target(service), self.identity(role), server_name="localhost")
        self.channels.append(channel)
        return channel

    def ca(self, role: str = "developer") -> ca_pb2_grpc.CertificateAuthorityServiceStub:
        """Return a CA stub as the operator."""
        return ca_pb2_grpc.CertificateAuthorityServiceStub(self._channel("ca", role))

    def enrollment(self, role: str = "developer") -> enrollment_pb2_grpc.EnrollmentServiceStub:
        """Return an enrollment stub as the operator."""
        return enrollment_pb2_grpc.EnrollmentServiceStub(self._channel("enrollment", role))

    async def revoke(self, serial_hex: str) -> None:
        """Revoke a certificate at the CA as the operator (key compromise: a lost PC)."""
        await self.ca().RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(
                request_id=uuid.uuid4().hex,
                serial_number=serial_hex,
                reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
            )
        )

    async def register_application(self) -> tuple[dict[str, str], pb.RegisterApplicationResponse]:
        """Register a company as the bank does; return the step-1 entries and the notice."""
        account = new_account_number()
        notice = await register_application(self.enrollment(), "001", account)
        entries = {
            "branch_code": "001",
            "account_type": "ordinary",
            "account_number": account,
            "temporary_login_password": notice.temporary_login_password,
            "temporary_confirmation_password": notice.temporary_confirmation_password,
        }
        return entries, notice

    async def mail_ids(self, to: str = MOBILE) -> tuple[str, str]:
        """Read the service ID and user ID from the step-7 mail the SMTP server received."""
        for _ in range(100):
            await self.components["enrollment"].deliver_mail_now()
            found = mailed_ids(self.smtp.inbox.messages, to)
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError("the step-7 mail did not arrive")

    def client(self, cert: TlsFiles | None = None, **kwargs: Any) -> HttpsClient:
        """Return an HTTPS client trusting the root, presenting `cert` when given."""
        return HttpsClient(self.https_url, client_context(self.root_file, cert), **kwargs)

    async def stop(self, name: str) -> None:
        """Stop one component (a test taking a backend down)."""
        component = self.components.pop(name, None)
        if component is not None:
            await component.stop(0)

    async def restart_ca(self) -> None:
        """Start the CA again with the settings it first ran with (same port, same store)."""
        assert self.ca_settings.listen.port != 0, "needs a fixed ca_port"
        self.components["ca"] = await start_ca(self.ca_settings)

    async def close(self) -> None:
        """Close the stubs, stop every component (the front first) and the SMTP server."""
        for channel in self.channels:
            await channel.close()
        await self.dev.stop(0)
        self.smtp.stop()


def gateway_settings(stack: GatewayStack, **changes: Any) -> GatewaySettings:
    """Return the settings of one more gateway in front of `stack`'s services, on free ports, `changes` applied."""
    return stack.dev.gateway_settings(**{"https_port": 0, "http_port": 0, **changes})


async def open_gateway_stack(
    directory: Path,
    *,
    ca_port: int = 0,
    clock: Clock | None = None,
    ca_on_real_time: bool = False,
    **gateway_changes: Any,
) -> GatewayStack:
    """Start CA, OTP, enrollment and the gateway on free ports, each with its own management listener.

    The CA is created with PKI URLs pointing at the gateway's plain-HTTP port, as a deployment would. A fixed
    `ca_port` lets a test stop the CA and start it again where the gateway expects it (`restart_ca`); a `clock`
    (a FakeClock near the real time) lets a test step one-time-password windows instead of sleeping them out;
    `ca_on_real_time` keeps the CA on the real time (see `start_stack`); `gateway_changes` replace fields of the
    gateway's settings.
    """
    smtp = SmtpServer().start()
    workdir = directory / "client"
    workdir.mkdir(parents=True, exist_ok=True)
    # Rate limits off unless a test asks for them: the tests come from one address, far beyond a customer.
    settings = {**smtp.environment(), "KAGI_GATEWAY_RATE_LIMITS": "off"}
    try:
        dev = await start_stack(
            directory / "state",
            ports={"ca": ca_port, "gateway_http": stable_port()},
            clock=clock,
            ca_on_real_time=ca_on_real_time,
            extra_env=settings,
            management="each",
            gateway_overrides=gateway_changes,
        )
    except BaseException:
        smtp.stop()
        raise
    return GatewayStack(dev, smtp, workdir)


def client_context(root: Path, cert: TlsFiles | None = None) -> ssl.SSLContext:
    """Return a client ssl context trusting `root`, with `cert` as the client certificate."""
    context = ssl.create_default_context(cafile=str(root))
    if cert is not None:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


class HttpsClient:
    """An aiohttp client with a real ssl context, keeping connections alive between requests."""

    def __init__(self, base: str, context: ssl.SSLContext, *, force_close: bool = False) -> None:
        self.base = base
        self.context = context
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, force_close=force_close, limit=4)
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """Return the underlying aiohttp session (for requests `request` cannot express)."""
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        bearer: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Answer:
        """Send one request (`body` as JSON) and reads the whole answer."""
        sent = dict(headers or {})
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self._session.request(method, self.base + path, data=data, headers=sent) as response:
            raw = await response.read()
            try:
                parsed = json.loads(raw) if raw and "json" in response.content_type else None
            except ValueError:
                parsed = None
            return Answer(response.status, CIMultiDict(response.headers), parsed, raw)

    async def close(self) -> None:
        """Close the connections."""
        await self._session.close()

    async def __aenter__(self) -> HttpsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class GatewayCustomer:
    """One enrollment driven through the gateway's HTTPS API (`Customer` in
    tests.support.enrollment_flow drives the enrollment service's gRPC API, as the gateway does)."""

    stack: GatewayStack
    enrollment_id: str = ""
    session: str = ""
    certificate: TlsFiles | None = None
    serial_hex: str = ""
    login_id: str = ""

    async def through_step4(self) -> GatewayCustomer:
        """Take steps 1-4 with the session token; the certificate files are then ready."""
        entries, _notice = await self.stack.register_application()
        login_id = self.login_id = new_login_id()
        async with self.stack.client() as client:
            answer = await client.request("POST", "/v1/enrollments", entries)
            assert answer.status == 201, answer.body
            self.enrollment_id, self.session = answer.body["enrollment_id"], answer.body["session_token"]
            path = f"/v1/enrollments/{self.enrollment_id}"
            answer = await client.request("PUT", path + "/profile", profile_entries(login_id), bearer=self.session)
            assert answer.status == 200, answer.body
            answer = await client.request("POST", path + "/registration", {}, bearer=self.session)
            assert answer.status == 200, answer.body
            csr, key = make_csr(self.stack.workdir)
            answer = await client.request("POST", path + "/certificate", {"csr_pem": csr}, bearer=self.session)
            assert answer.status == 200, answer.body
        self.certificate = write_certificate(
            key, answer.body["certificate_pem"], answer.body["chain_pem"], self.stack.root_file
        )
        self.serial_hex = answer.body["serial_number"]
        return self

    async def through_step7(self) -> tuple[str, str]:
        """Take steps 1-7 (5-7 with curl and the certificate); return the mailed IDs."""
        await self.through_step4()
        assert self.certificate is not None
        path = f"/v1/enrollments/{self.enrollment_id}"
        token_request = {
            "mobile_email": MOBILE,
            "mobile_email_confirmation": MOBILE,
            "usage_start_password": USAGE_START_PASSWORD,
            "usage_start_password_confirmation": USAGE_START_PASSWORD,
        }
        for route, body in (
            ("/certificate-login", {}),
            ("/password-login", {"login_password": PROFILE["login_password"]}),
            ("/token", token_request),
        ):
            answer = await curl(self.stack, "POST", path + route, body, cert=self.certificate)
            assert answer.status == 200, answer.body
        return await self.stack.mail_ids()


async def curl(
    stack: GatewayStack,
    method: str,
    path: str,
    body: Any = None,
    *,
    bearer: str | None = None,
    cert: TlsFiles | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request with the real curl (a new TLS connection each time) and reads the answer."""
    name = uuid.uuid4().hex[:8]
    body_file, header_file = stack.workdir / f"curl-{name}.body", stack.workdir / f"curl-{name}.headers"
    argv = [tool("curl"), "-sS", "--cacert", str(stack.root_file), "-X", method, "-o", str(body_file)]
    argv += ["-D", str(header_file), "-w", "%{http_code}", stack.https_url + path]
    if body is not None:
        argv += ["--json", json.dumps(body)]
    if bearer is not None:
        argv += ["-H", f"Authorization: Bearer {bearer}"]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    if cert is not None:
        argv += ["--cert", str(cert.cert_file), "--key", str(cert.key_file)]
    status = int((await run(argv)).strip())
    raw = body_file.read_bytes()
    received: CIMultiDict[str] = CIMultiDict()
    for line in header_file.read_text().splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep:
            received[key.strip()] = value.strip()
    parsed = json.loads(raw) if raw and "json" in received.get("content-type", "") else None
    return Answer(status, received, parsed, raw)


async def oathtool_code(secret: str, at: float) -> str:
    """Return the app's code for `secret` at `at`, as oathtool computes it (SHA-1, 6 digits, 60 s)."""
    return (await run([tool("oathtool"), "--totp", "-b", "-s", "60", "-N", f"@{int(at)}", secret])).strip()


async def complete_with_curl(stack: GatewayStack, clock: Clock) -> tuple[GatewayCustomer, str]:
    """Take the ten steps (1-4 with the session token, 5-10 with curl and the certificate, the
    first code from oathtool at the services' `clock`); returns the customer and the seed."""
    customer = GatewayCustomer(stack)
    service_id, app_user_id = await customer.through_step7()
    assert customer.certificate is not None
    path = f"/v1/enrollments/{customer.enrollment_id}"
    activation = {"service_id": service_id, "user_id": app_user_id, "usage_start_password": USAGE_START_PASSWORD}
    seed = await curl(stack, "POST", "/v1/app/activation", {**activation, "agreed": True})
    assert seed.status == 200, seed.body
    registration = {"service_id": service_id, "user_id": app_user_id, "activation_id": seed.body["activation_id"]}
    assert (await curl(stack, "POST", "/v1/app/registration", registration)).status == 200
    code = await oathtool_code(seed.body["secret"], clock.now())
    answer = await curl(stack, "POST", path + "/otp", {"otp": code}, cert=customer.certificate)
    assert answer.body["state"] == "COMPLETED", answer.body
    return customer, seed.body["secret"]


async def walk_ten_steps(stack: GatewayStack) -> dict[str, str]:
    """Take the ten steps through the gateway with curl, openssl and oathtool, asserting each
    answer; returns the secrets that went through the gateway, by name."""
    entries, _notice = await stack.register_application()
    work = stack.workdir

    # ⑦ step 1: no credential; the answer carries the session token for steps 2-4.
    answer = await curl(stack, "POST", "/v1/enrollments", entries, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert answer.status == 201, answer.body
    assert answer.body["state"] == "NOTICE_VERIFIED"
    assert answer.body["next_step"] == "SUBMIT_PROFILE"
    enrollment_id, session = answer.body["enrollment_id"], answer.body["session_token"]
    assert answer.headers["location"] == f"/v1/enrollments/{enrollment_id}"
    assert answer.headers["cache-control"] == "no-store"
    path = f"/v1/enrollments/{enrollment_id}"

    # ⑧ step 2: the profile; the summary shows no password.
    login_id = new_login_id()
    answer = await curl(stack, "PUT", path + "/profile", profile_entries(login_id), bearer=session)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("PROFILE_SUBMITTED", "CONFIRM_REGISTRATION")
    assert answer.body["summary"] == {
        "user_name": PROFILE["user_name"],
        "email": PROFILE["email"],
        "login_id": login_id,
        "company_name": COMPANY,
    }
    assert PROFILE["login_password"] not in answer.raw.decode()

    # ⑨ step 3: register.
    answer = await curl(stack, "POST", path + "/registration", {}, bearer=session)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("REGISTERED", "ISSUE_CERTIFICATE")
    assert answer.body["user_id"]

    # ⑩-⑬ step 4: the key is made on the client (openssl req), the CA signs the CSR.
    key = work / "customer-key.pem"
    csr = work / "customer.csr"
    await run(
        [tool("openssl"), "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=browser"]
    )  # fmt: skip
    answer = await curl(stack, "POST", path + "/certificate", {"csr_pem": csr.read_text()}, bearer=session)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("CERTIFICATE_ISSUED", "CERTIFICATE_LOGIN")
    cert_file = work / "customer.pem"
    cert_file.write_text(answer.body["certificate_pem"])
    certificate = TlsFiles(cert_file, key, stack.root_file)
    (work / "chain.pem").write_text(answer.body["chain_pem"])
    verified = await run(
        [tool("openssl"), "verify", "-CAfile", str(stack.root_file), "-untrusted", str(work / "chain.pem"),
         "-purpose", "sslclient", str(cert_file)]
    )  # fmt: skip
    assert verified.strip().endswith("OK")

    # ⑭-⑯ step 5: certificate login, the certificate presented by curl.
    answer = await curl(stack, "POST", path + "/certificate-login", {}, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("CERTIFICATE_LOGGED_IN", "PASSWORD_LOGIN")

    # ⑰ step 6: the login password.
    answer = await curl(stack, "POST", path + "/password-login", {"login_password": "Passw0rd"}, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("PASSWORD_VERIFIED", "REQUEST_TOKEN")

    # ⑱ step 7: the phone's address and the usage-start password; the IDs go by mail only.
    token_request = {
        "mobile_email": MOBILE,
        "mobile_email_confirmation": MOBILE,
        "usage_start_password": USAGE_START_PASSWORD,
        "usage_start_password_confirmation": USAGE_START_PASSWORD,
    }
    answer = await curl(stack, "POST", path + "/token", token_request, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("TOKEN_REQUESTED", "ACTIVATE_APP")
    assert set(answer.body) == {"enrollment_id", "kind", "state", "next_step", "expires_at", "mail_note"}
    assert answer.body["mail_note"] == CARRIER_FILTER_NOTE  # the procedure's warning about phones filtering mail
    service_id, app_user_id = await stack.mail_ids()
    assert service_id not in answer.raw.decode()
    mailed = [m.get_content() for m in stack.smtp.inbox.messages if m["To"] == MOBILE]
    assert any(f"https://localhost:{stack.gateway.https_port}/app" in body for body in mailed), "the mail names the app"

    # ⑳ step 8: the app, with no credential but what the user types; the seed comes back once.
    activation = {
        "service_id": service_id,
        "user_id": app_user_id,
        "usage_start_password": USAGE_START_PASSWORD,
        "agreed": True,
    }
    answer = await curl(stack, "POST", "/v1/app/activation", activation, headers={"Idempotency-Key": "act-1"})
    assert answer.status == 200, answer.body
    seed = answer.body
    assert seed["otpauth_uri"].startswith("otpauth://totp/")
    assert (seed["algorithm"], seed["period"]) == ("SHA1", 60)
    replay = await curl(stack, "POST", "/v1/app/activation", activation, headers={"Idempotency-Key": "act-1"})
    # A retried activation never delivers the seed again, nor a 200 without it: 409, ask for a new token.
    assert replay.status == 409, replay.body
    assert replay.body["error"]["reason"] == "ACTIVATION_ALREADY_DELIVERED", replay.body

    # ㉑ step 9: the app registers.
    registration = {"service_id": service_id, "user_id": app_user_id, "activation_id": seed["activation_id"]}
    answer = await curl(stack, "POST", "/v1/app/registration", registration)
    assert answer.status == 200, answer.body
    assert answer.body == {"state": "APP_REGISTERED"}

    # ㉓ step 10: the code the app shows, from oathtool, within its 60 seconds.
    code = (
        await run([tool("oathtool"), "--totp", "-b", "-s", "60", "-d", str(seed["digits"]), seed["secret"]])
    ).strip()
    answer = await curl(stack, "POST", path + "/otp", {"otp": code}, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("COMPLETED", None)

    answer = await curl(stack, "GET", path, cert=certificate)
    assert answer.status == 200
    assert (answer.body["state"], answer.body["next_step"]) == ("COMPLETED", None)
    return {
        "temporary login password": entries["temporary_login_password"],
        "temporary confirmation password": entries["temporary_confirmation_password"],
        "session token": session,
        "login password": PROFILE["login_password"],
        "confirmation password": PROFILE["confirmation_password"],
        "seed": seed["secret"],
        "one-time code": code,
    }
