"""The faults-under-load harness: the four components as real `kagi serve` processes on a Redis with AOF, a
mixed load whose every call has a deadline and is retried with the same request id, a ledger of what clients
saw acknowledged, and the figures docs/reliability.md reports.

- `Cluster` starts the processes (fixed ports below the ephemeral range, so a restart gets its port back), kills
  one with SIGKILL and restarts it, and waits for its management listener's /readyz.
- `Recorder` keeps every attempt (kind, start, end, outcome) and every fault (kill, restart, ready).
- `Load` runs the workers: setups (the ten steps over gRPC as the gateway), logins and OTP step-ups
  (UserService as the gateway), operator revocations, and OCSP requests through the gateway's /pki/ocsp.
- `verify` checks the ledger against the system; `summarize` turns the recorder into the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import signal
import statistics
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from kagi.ca.v1 import ca_pb2
from kagi.cli.stack import stack_environment
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.otp.v1 import otp_pb2
from kagi.runtime.grpc_client import RequestIdInterceptor
from kagi.runtime.grpc_server import MAX_RESPONSE_BYTES
from services.ca_service.creation import DevPki, ensure_dev_pki_async
from services.ca_service.domain.settings import PkiSettings
from tests.support.enrollment_flow import Customer, Services, code_for, identity
from tests.support.ports import stable_port
from tests.support.smtp import SmtpServer
from tests.support.tools import tool

T = TypeVar("T")

COMPONENTS = ("ca", "otp", "enrollment", "gateway")
# What a client may see while a component or the store is down: the service's own "unavailable" (or the
# gateway's 503), "a request with this id is still in progress" (ABORTED, retry), a call cut at its deadline,
# while the gateway itself is gone, a refused or dropped connection (a load balancer would answer 503); and an
# OCSP tryLater (RFC 6960: the responder cannot answer now) while the CA cannot read its store.
OUTAGE_OUTCOMES = frozenset({"UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "HTTP_503", "CONNECTION", "OCSP_TRY_LATER"})
RETRYABLE = OUTAGE_OUTCOMES
TYPES = ("setup_step", "login", "stepup", "revoke", "ocsp")


# -- the record ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call a client made: its type, when it started and ended, and what it saw."""

    kind: str
    detail: str
    op: int  # the operation (one request id) the attempt belongs to
    start: float
    end: float
    outcome: str  # "OK", a gRPC status name, "HTTP_<status>", or "CONNECTION"
    message: str
    deadline: float

    @property
    def ok(self) -> bool:
        return self.outcome == "OK"


@dataclass(slots=True)
class Fault:
    """One SIGKILL: which component, when it died, when it was started again, when it was ready."""

    target: str
    killed: float
    restarted: float = 0.0
    ready: float = 0.0
    window_end: float = 0.0


@dataclass
class Recorder:
    """Keeps every attempt and every fault, on the monotonic clock."""

    attempts: list[Attempt] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stopped: float = 0.0

    def add(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def successes_since(self, moment: float) -> set[str]:
        """Return the types with a success that started at or after `moment`."""
        return {a.kind for a in self.attempts if a.ok and a.start >= moment}


class GaveUp(Exception):
    """An operation still failed when its retry budget ran out (nothing was acknowledged)."""


class Refused(Exception):
    """The system answered an operation with an error that is no outage (kept in the record)."""

    def __init__(self, text: str, outcome: str, after_outage: bool) -> None:
        super().__init__(text)
        self.outcome = outcome
        self.after_outage = after_outage  # an earlier try with the same request id met an outage


_operations = itertools.count(1)


async def with_retries(
    recorder: Recorder,
    kind: str,
    detail: str,
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    budget: float,
) -> T:
    """Make `call` (which must reuse one request id or Idempotency-Key on every try) until it
    succeeds, retrying outage answers after a short backoff until `budget` seconds have passed."""
    first = time.monotonic()
    backoff = 0.1
    op = next(_operations)
    interrupted = False
    while True:
        start = time.monotonic()
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            outcome, message = exc.code().name, exc.details() or ""
        except HttpFailure as exc:
            outcome, message = exc.outcome, exc.message
        except (aiohttp.ClientConnectionError, ConnectionError, TimeoutError) as exc:
            outcome, message = ("DEADLINE_EXCEEDED" if isinstance(exc, TimeoutError) else "CONNECTION"), repr(exc)
        else:
            recorder.add(Attempt(kind, detail, op, start, time.monotonic(), "OK", "", deadline))
            return result
        end = time.monotonic()
        recorder.add(Attempt(kind, detail, op, start, end, outcome, message, deadline))
        if outcome not in RETRYABLE:
            raise Refused(f"{kind} {detail}: {outcome} {message}", outcome, interrupted)
        interrupted = True
        if end - first > budget:
            raise GaveUp(f"{kind} {detail}: still {outcome} after {budget:.0f} s")
        await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
        backoff = min(backoff * 2, 1.0)


class HttpFailure(Exception):
    """An HTTP answer that is not the expected success."""

    def __init__(self, status: int, message: str, *, outcome: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.outcome = outcome or f"HTTP_{status}"
        self.message = message


# -- the processes ------------------------------------------------------------------------------------------


class DefaultDeadline(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Gives every call without a timeout of its own this many seconds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout or self.seconds,
            details.metadata,
            details.credentials,
            details.wait_for_ready,
        )
        return await continuation(details, request)


@dataclass
class TimedServices(Services):
    """Reaches the services as Services does, every call with a deadline; the channels retry a
    lost connection quickly (the load's clients, not the services, choose that)."""

    deadline: float = 5.0

    def _channel(self, service: str, role: str) -> grpc.aio.Channel:
        key = (service, role)
        if key not in self.channels:
            chain, private, root = identity(self.tls_dir, role).read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=private, certificate_chain=chain
            )
            options = [
                ("grpc.ssl_target_name_override", "localhost"),
                ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
            ]
            self.channels[key] = grpc.aio.secure_channel(
                self.targets[service],
                credentials,
                options=options,
                interceptors=[RequestIdInterceptor(), DefaultDeadline(self.deadline)],
            )
        return self.channels[key]


class Process:
    """One `kagi serve <component>` child, with its output in a log file."""

    def __init__(self, name: str, env: Mapping[str, str], log: Path, ready_url: str) -> None:
        self.name, self.env, self.log, self.ready_url = name, dict(env), log, ready_url
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [tool("kagi"), "serve", self.name], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """Send SIGKILL and reap the process."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        """Ask the process to end (SIGTERM), then kill it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    async def wait_ready(self, within: float = 30.0) -> None:
        """Poll /readyz on the management listener until it answers 200."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() < deadline:
                assert self.popen is not None
                if self.popen.poll() is not None:
                    raise AssertionError(f"kagi serve {self.name} exited: {self.log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.ready_url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"kagi serve {self.name} not ready in {within} s: {self.log.read_text()[-3000:]}")


@dataclass
class Cluster:
    """The four `kagi serve` processes on one Redis, and the SMTP server their mail goes to."""

    directory: Path
    redis: Any  # tests/conftest.py RedisServer
    recorder: Recorder
    smtp: SmtpServer = field(default_factory=lambda: SmtpServer().start())
    processes: dict[str, Process] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    pki: DevPki | None = None
    env: dict[str, str] = field(default_factory=dict)

    async def start(self, extra: Mapping[str, str] | None = None) -> None:
        """Create the dev PKI in Redis and start the CA, OTP, enrollment and the gateway, each ready."""
        names = (*COMPONENTS, "gateway_http", *(f"{c}_management" for c in COMPONENTS))
        self.ports = {name: stable_port() for name in names}
        state = self.directory / "state"
        pki_settings = PkiSettings(base_url=f"http://127.0.0.1:{self.ports['gateway_http']}")
        self.pki = await ensure_dev_pki_async(state, store_url=self.redis.url, settings=pki_settings)
        settings = {
            "KAGI_SMTP_URL": f"smtp://127.0.0.1:{self.smtp.port}?starttls=false",
            "KAGI_MAIL_FROM": "no-reply@bank.example",
            "KAGI_MAIL_POLL_MS": "100",
            "KAGI_LOG_LEVEL": "WARNING",
            "KAGI_GATEWAY_RATE_LIMITS": "off",  # one address plays every customer
            # A killed request's claim on its request id, at the CA, OTP and enrollment services alike, blocks
            # its retries this long (the default is 30 s, longer than a retry budget's share of a fault).
            "KAGI_IDEMPOTENCY_PENDING_SECONDS": "5",
            **{f"KAGI_{c.upper()}_MANAGEMENT_ADDR": f"127.0.0.1:{self.ports[c + '_management']}" for c in COMPONENTS},
            **(extra or {}),
        }
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("KAGI_")}
        self.env = {**inherited, **stack_environment(self.pki, self.ports, self.redis.url, settings)}
        for name in COMPONENTS:
            ready = f"http://127.0.0.1:{self.ports[name + '_management']}/readyz"
            self.processes[name] = Process(name, self.env, self.directory / f"{name}.log", ready)
            self.processes[name].start()
        await asyncio.gather(*(process.wait_ready() for process in self.processes.values()))

    def targets(self) -> dict[str, str]:
        return {name: f"localhost:{self.ports[name]}" for name in ("ca", "otp", "enrollment")}

    @property
    def ocsp_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway_http']}/pki/ocsp"

    async def kill_and_restart(self, target: str, down: float) -> Fault:
        """SIGKILL a component (or Redis), leaves it down `down` seconds, starts it again on
        the same port, and returns once it is ready (for Redis: answers PING, and every component is ready)."""
        fault = Fault(target, time.monotonic())
        if target == "redis":
            self.redis.kill()
        else:
            self.processes[target].kill()
        self.recorder.faults.append(fault)
        await asyncio.sleep(down)
        fault.restarted = time.monotonic()
        if target == "redis":
            await asyncio.to_thread(self.redis.start)
            await asyncio.gather(*(process.wait_ready() for process in self.processes.values()))
        else:
            self.processes[target].start()
            await self.processes[target].wait_ready()
        fault.ready = time.monotonic()
        return fault

    def stop(self) -> None:
        for name in reversed(COMPONENTS):
            if name in self.processes:
                self.processes[name].stop()
        self.smtp.stop()


# -- the ledger ---------------------------------------------------------------------------------------------


@dataclass
class LoadCustomer(Customer):
    """A Customer whose acknowledged steps are written in the ledger."""

    acked_step: int = 0
    serial: str = ""
    user_id: str = ""
    token_id: str = ""
    revoked: bool = False
    revoked_at: float = 0.0
    revoke_tried: bool = False
    stranded: str = ""  # why the setup could not go on (an answer lost and not replayable), if it could not
    last_code_step: int = -1
    logins: int = 0
    step_ups: int = 0

    async def read_mail(self) -> None:
        """The mail is read by the load (`wait_mail`), after step 7 is acknowledged, not inside the call."""

    async def wait_mail(self, within: float) -> bool:
        """Wait for a step-7 mail to this customer's phone address (sent by the services' own sender)
        with IDs other than those already used."""
        end = time.monotonic() + within
        while time.monotonic() < end:
            for message in reversed(list(self.stack.smtp.inbox.messages)):
                if message["To"] != self.mobile_email:
                    continue
                body = message.get_content()
                service = re.search(r"^Service ID: (\S+)\r?$", body, re.M)
                user = re.search(r"^User ID: (\S+)\r?$", body, re.M)
                if service and user and (service.group(1), user.group(1)) != (self.service_id, self.app_user_id):
                    self.service_id, self.app_user_id = service.group(1), user.group(1)
                    return True
            await asyncio.sleep(0.1)
        return False

    async def register_with(self, request_id: str) -> pb.RegisterApplicationResponse:
        """The bank registers the application (as the operator) with a request id the retries reuse."""
        self.notice = await self.stack.enrollment("developer").RegisterApplication(
            pb.RegisterApplicationRequest(
                request_id=request_id,
                company_name="株式会社サンプル",
                branch_code=self.branch,
                account_type=pb.ACCOUNT_TYPE_ORDINARY,
                account_number=self.account,
            )
        )
        return self.notice


@dataclass
class Ledger:
    """What the clients saw acknowledged."""

    customers: list[LoadCustomer] = field(default_factory=list)
    logins: int = 0
    step_ups: int = 0
    revocations: int = 0
    ocsp_answers: int = 0
    ocsp_violations: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    retries_not_replayed: list[str] = field(default_factory=list)
    tokens_requested_again: list[str] = field(default_factory=list)


# -- the load -----------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Runs the mixed load against a cluster until `stop` is set."""

    cluster: Cluster
    services: TimedServices
    ledger: Ledger
    workdir: Path
    deadline: float = 5.0
    budget: float = 40.0
    setup_workers: int = 3
    login_workers: int = 1
    ocsp_workers: int = 1
    revoke_every: float = 2.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pool: list[LoadCustomer] = field(default_factory=list)  # completed, not revoked, not in use
    customer_ca: x509.Certificate | None = None

    @property
    def recorder(self) -> Recorder:
        return self.cluster.recorder

    async def _op(self, kind: str, detail: str, call: Callable[[], Awaitable[T]]) -> T:
        return await with_retries(self.recorder, kind, detail, call, deadline=self.deadline, budget=self.budget)

    async def run(self) -> None:
        """Start every worker and return when `stop` is set and they have finished what they were doing."""
        reply = await self._op(
            "ocsp", "ca-certificates", lambda: self.services.ca().GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
        )
        self.customer_ca = x509.load_pem_x509_certificate(reply.customer_ca_pem.encode())
        workers = [self._setups() for _ in range(self.setup_workers)]
        workers += [self._logins() for _ in range(self.login_workers)]
        workers += [self._ocsp() for _ in range(self.ocsp_workers)]
        workers.append(self._revocations())
        await asyncio.gather(*workers)

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except GaveUp as exc:
            self.ledger.gave_up.append(str(exc))
        except Refused as exc:
            self.ledger.refused.append(str(exc))

    # setups

    async def _setups(self) -> None:
        while not self.stop.is_set():
            customer = LoadCustomer(self.services, self.workdir)
            self.ledger.customers.append(customer)
            await self._guard(self._setup(customer))

    async def _step(self, c: LoadCustomer, number: int, call: Callable[[str], Awaitable[T]]) -> T | None:
        """_step takes one step with one request id, retried through outages. When a retry after an outage is
        refused as out of order (its first try took effect, but its answer was not kept for the replay), the
        enrollment is read back: if the step did take effect once, that is recorded and None returned."""
        request_id = uuid.uuid4().hex
        try:
            result = await self._op("setup_step", f"step{number}", lambda: call(request_id))
        except Refused as exc:
            # (Step 8 is the exception by design: its seed is never shown twice, the token is requested again.)
            if not (exc.after_outage and exc.outcome == "FAILED_PRECONDITION" and number >= 2 and number != 8):
                raise
            state = await self._op("setup_step", "read", lambda: c.state())
            if state.state < number:
                raise
            c.user_id = c.user_id or state.user_id
            c.acked_step = max(c.acked_step, number)
            self.ledger.retries_not_replayed.append(f"step {number} of {c.enrollment_id}: {exc}")
            return None
        c.acked_step = max(c.acked_step, number)
        return result

    async def _setup(self, c: LoadCustomer) -> None:
        notice = await self._step(c, 0, c.register_with)
        if notice is None or not notice.temporary_login_password:
            c.stranded = "the notice's answer was lost (its passwords are never replayed)"
            return
        await self._step(c, 1, lambda rid: c.step1(request_id=rid))
        if not c.session:
            c.stranded = "step 1's answer was lost (the session token is never replayed)"
            return
        await self._step(c, 2, lambda rid: c.step2(request_id=rid))
        reply3 = await self._step(c, 3, lambda rid: c.step3(request_id=rid))
        if reply3 is not None:
            c.user_id = reply3.enrollment.user_id
        if self.stop.is_set():
            return
        reply4 = await self._step(c, 4, lambda rid: c.step4(request_id=rid))
        if reply4 is None or not reply4.certificate_pem:
            c.stranded = "step 4's answer was lost (the certificate was not replayed)"
            return
        certificate = x509.load_pem_x509_certificate(reply4.certificate_pem.encode())
        c.serial = format(certificate.serial_number, "x")
        await self._step(c, 5, lambda rid: c.step5(request_id=rid))
        await self._step(c, 6, lambda rid: c.step6(request_id=rid))
        for again in (False, True):
            await self._step(c, 7, lambda rid: c.step7(request_id=rid))
            if not await c.wait_mail(self.budget):
                c.stranded = "the step-7 mail did not arrive"
                return
            try:
                await self._step(c, 8, lambda rid: c.step8(request_id=rid))
            except Refused as exc:
                # Step 8's answer (the seed, shown once) was lost: the design says request the token again.
                if again or not (exc.after_outage and exc.outcome == "FAILED_PRECONDITION"):
                    raise
                self.ledger.tokens_requested_again.append(f"{c.enrollment_id}: {exc}"[:200])
                continue
            break
        if not c.secret:
            c.stranded = "step 8's answer was lost (the seed is never replayed)"
            return
        await self._step(c, 9, lambda rid: c.step9(request_id=rid))
        now = time.time()
        await self._step(c, 10, lambda rid: c.step10(now, request_id=rid))
        c.last_code_step = int(now // 60)
        self.pool.append(c)

    # logins and step-ups

    async def _logins(self) -> None:
        while not self.stop.is_set():
            if not self.pool:
                await asyncio.sleep(0.2)
                continue
            customer = self.pool.pop(random.randrange(len(self.pool)))
            try:
                await self._guard(self._login(customer))
            finally:
                self.pool.append(customer)
            await asyncio.sleep(0.05)

    async def _login(self, c: LoadCustomer) -> None:
        users = c.users()

        async def authenticate() -> upb.AuthenticateResponse:
            reply: upb.AuthenticateResponse = await users.Authenticate(
                upb.AuthenticateRequest(login_id=c.login_id, login_password="Passw0rd"), metadata=c.cert_metadata
            )
            return reply

        session = await self._op("login", "", authenticate)
        c.logins += 1
        self.ledger.logins += 1
        now = time.time()
        if int(now // 60) <= c.last_code_step:
            return  # this minute's code is spent (one code, one use)
        request_id, code = uuid.uuid4().hex, code_for(c.secret, now)

        async def step_up() -> upb.VerifyOtpResponse:
            reply: upb.VerifyOtpResponse = await users.VerifyOtp(
                upb.VerifyOtpRequest(
                    request_id=request_id,
                    user_id=session.user.user_id,
                    otp=code,
                    purpose=upb.OTP_PURPOSE_STEP_UP,
                    access_token=session.access_token,
                ),
                metadata=c.cert_metadata,
            )
            return reply

        c.last_code_step = int(now // 60)
        await self._op("stepup", "", step_up)
        c.step_ups += 1
        self.ledger.step_ups += 1

    # revocations (the operator, a lost PC)

    async def _revocations(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(self.revoke_every)
            if len(self.pool) < 2 or self.stop.is_set():
                continue
            customer = self.pool.pop(random.randrange(len(self.pool)))
            await self._guard(self._revoke(customer))

    async def _revoke(self, c: LoadCustomer) -> None:
        request_id = uuid.uuid4().hex
        c.revoke_tried = True

        async def revoke() -> ca_pb2.RevokeCertificateResponse:
            reply: ca_pb2.RevokeCertificateResponse = await self.services.ca().RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    request_id=request_id,
                    serial_number=c.serial,
                    reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
                )
            )
            return reply

        await self._op("revoke", "", revoke)
        c.revoked, c.revoked_at = True, time.monotonic()
        self.ledger.revocations += 1

    # OCSP through the gateway

    async def _ocsp(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.deadline)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=4)) as session:
            while not self.stop.is_set():
                issued = [c for c in self.ledger.customers if c.serial and c.certificate_pem]
                if not issued:
                    await asyncio.sleep(0.2)
                    continue
                await self._guard(self._ocsp_once(session, random.choice(issued)))
                await asyncio.sleep(0.02)

    async def _ocsp_once(self, session: aiohttp.ClientSession, c: LoadCustomer) -> None:
        assert self.customer_ca is not None
        certificate = x509.load_pem_x509_certificate(c.certificate_pem.encode())
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(
                certificate,
                self.customer_ca,
                hashes.SHA1(),  # noqa: S303 - the CertID hash RFC 5019 requires of every OCSP client
            )
            .build()
        )
        der = request.public_bytes(serialization.Encoding.DER)
        revoked_before = c.revoked_at if c.revoked else None
        tried_before = c.revoke_tried
        sent = time.monotonic()

        async def ask() -> ocsp.OCSPResponse:
            async with session.post(
                self.cluster.ocsp_url, data=der, headers={"Content-Type": "application/ocsp-request"}
            ) as response:
                body = await response.read()
                if response.status != 200:
                    retry = response.headers.get("Retry-After", "")
                    raise HttpFailure(response.status, f"Retry-After: {retry}" if retry else body[:200].hex())
                parsed = ocsp.load_der_ocsp_response(body)
                if parsed.response_status is ocsp.OCSPResponseStatus.TRY_LATER:
                    raise HttpFailure(200, "OCSP tryLater", outcome="OCSP_TRY_LATER")
                return parsed

        answer = await self._op("ocsp", "", ask)
        self.ledger.ocsp_answers += 1
        if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            self.ledger.ocsp_violations.append(f"{c.serial}: {answer.response_status.name} with HTTP 200")
            return
        status = answer.certificate_status
        if revoked_before is not None and sent - revoked_before > 2.0 and status is not ocsp.OCSPCertStatus.REVOKED:
            self.ledger.ocsp_violations.append(f"{c.serial}: {status.name} 2 s after its revocation was acknowledged")
        if not tried_before and not c.revoke_tried and status is not ocsp.OCSPCertStatus.GOOD:
            self.ledger.ocsp_violations.append(f"{c.serial}: {status.name}, never revoked")


# -- the check ----------------------------------------------------------------------------------------------


async def verify(services: TimedServices, ledger: Ledger) -> list[str]:
    """Read every acknowledged operation back from the services; it returns what is missing or twice.

    - every acknowledged step: the enrollment is at that step or later (read with the session token before
      step 4, the relayed certificate after it, as the design allows);
    - every acknowledged certificate: at the CA with its serial, the user's only certificate (none twice);
    - every acknowledged revocation: REVOKED at the CA; every certificate not revoked: ACTIVE;
    - every acknowledged activation (step 10): the token ACTIVE at the OTP service.
    """
    problems: list[str] = []
    for c in ledger.customers:
        where = f"enrollment {c.enrollment_id or '(none)'} (acknowledged step {c.acked_step})"
        if c.acked_step >= 1 and c.session and not c.certificate_pem:
            try:
                reply = await services.enrollment().GetEnrollment(
                    pb.GetEnrollmentRequest(enrollment_id=c.enrollment_id, session_token=c.session)
                )
            except grpc.aio.AioRpcError as exc:
                # Step 4 retires the session token: an unacknowledged step 4 may have happened.
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED or c.acked_step < 3:
                    problems.append(f"{where}: GetEnrollment {exc.code().name} {exc.details()}")
            else:
                if reply.enrollment.state < c.acked_step:
                    problems.append(f"{where}: at {pb.Enrollment.State.Name(reply.enrollment.state)}")
        if c.certificate_pem and not c.revoked:
            reply = await services.enrollment().GetEnrollment(
                pb.GetEnrollmentRequest(enrollment_id=c.enrollment_id), metadata=c.cert_metadata
            )
            if reply.enrollment.state < c.acked_step:
                problems.append(f"{where}: at {pb.Enrollment.State.Name(reply.enrollment.state)}")
            if c.acked_step >= 10:
                token = await services.otp().GetToken(otp_pb2.GetTokenRequest(token_id=reply.enrollment.token_id))
                if token.token.state != otp_pb2.Token.STATE_ACTIVE:
                    problems.append(f"{where}: token {otp_pb2.Token.State.Name(token.token.state)}")
        if c.serial:
            found = await services.ca().GetCertificate(ca_pb2.GetCertificateRequest(serial_number=c.serial))
            wanted = ca_pb2.Certificate.STATE_REVOKED if c.revoked else ca_pb2.Certificate.STATE_ACTIVE
            if found.certificate.state != wanted and not (c.revoke_tried and not c.revoked):
                problems.append(
                    f"{where}: certificate {c.serial} {ca_pb2.Certificate.State.Name(found.certificate.state)}"
                )
        if c.user_id:
            listed = await services.ca().ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=c.user_id))
            serials = [certificate.serial_number.lower() for certificate in listed.certificates]
            if len(serials) > 1 or (c.serial and serials != [c.serial]):
                problems.append(f"{where}: the user's certificates are {serials}, acknowledged {c.serial or 'none'}")
    return problems


# -- the report ---------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_window(attempt: Attempt, faults: list[Fault]) -> bool:
    """The attempt overlaps a fault window (from the kill to the window's end)."""
    return any(attempt.start <= f.window_end and attempt.end >= f.killed for f in faults)


def hit_by_faults(attempts: list[Attempt], faults: list[Fault]) -> set[int]:
    """Return the operations a fault reached: one of their tries overlapped a fault window. Their later
    tries belong to the fault too (a request id a killed process had claimed stays claimed until its claim
    expires: the retries meanwhile are told ABORTED, "still in progress")."""
    return {a.op for a in attempts if in_window(a, faults)}


def faulted(attempt: Attempt, hit: set[int]) -> bool:
    """The attempt belongs to an operation a fault reached."""
    return attempt.op in hit


def summarize(recorder: Recorder, ledger: Ledger) -> dict[str, Any]:
    """Return the run's figures: per type the acknowledged rate, p50/p99 of the successful calls outside
    the fault windows and the error rate inside and outside them; per fault the outcomes clients saw and the
    time from the kill to the first success of each type (of a call started after the kill)."""
    duration = recorder.stopped - recorder.started
    fault_time = sum(f.window_end - f.killed for f in recorder.faults)
    per_type: dict[str, Any] = {}
    hit = hit_by_faults(recorder.attempts, recorder.faults)
    for kind in TYPES:
        mine = [a for a in recorder.attempts if a.kind == kind]
        outside = [a for a in mine if not faulted(a, hit)]
        inside = [a for a in mine if faulted(a, hit)]
        latencies = [a.end - a.start for a in outside if a.ok]
        per_type[kind] = {
            "ok": sum(a.ok for a in mine),
            "per_second": round(sum(a.ok for a in mine) / duration, 2) if duration else 0.0,
            "per_second_outside_faults": round(len(latencies) / max(duration - fault_time, 1e-9), 2),
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else 0.0,
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
            "max_ms": round(max(latencies, default=0.0) * 1000, 1),
            "errors_outside_faults": sum(not a.ok for a in outside),
            "error_rate_outside_faults": round(sum(not a.ok for a in outside) / max(len(outside), 1), 4),
            "errors_in_faults": sum(not a.ok for a in inside),
        }
    faults = []
    for f in recorder.faults:
        seen: dict[str, int] = defaultdict(int)
        messages: dict[str, str] = {}
        recovery: dict[str, float | None] = {}
        for a in recorder.attempts:
            if not a.ok and a.start <= f.window_end and a.end >= f.killed:
                seen[f"{a.kind}:{a.outcome}"] += 1
                messages.setdefault(a.outcome, a.message[:160])
        for kind in TYPES:
            affected = any(key.startswith(kind + ":") for key in seen)
            first = min(
                (a.end for a in recorder.attempts if a.kind == kind and a.ok and a.start >= f.killed), default=None
            )
            recovery[kind] = None if first is None else round(first - f.killed, 2)
            recovery[kind + "_affected"] = affected  # type: ignore[assignment]
        faults.append(
            {
                "target": f.target,
                "killed_at_s": round(f.killed - recorder.started, 2),
                "down_s": round(f.restarted - f.killed, 2),
                "restart_to_ready_s": round(f.ready - f.restarted, 2),
                "window_s": round(f.window_end - f.killed, 2),
                "outcomes": dict(seen),
                "messages": messages,
                "recovery_s": recovery,
            }
        )
    slowest = max((a.end - a.start for a in recorder.attempts), default=0.0)
    return {
        "duration_s": round(duration, 1),
        "attempts": len(recorder.attempts),
        "types": per_type,
        "faults": faults,
        "longest_call_s": round(slowest, 3),
        "setups_started": len(ledger.customers),
        "setups_completed": sum(c.acked_step >= 10 for c in ledger.customers),
        "certificates": sum(bool(c.serial) for c in ledger.customers),
        "stranded": [c.stranded for c in ledger.customers if c.stranded],
        "logins": ledger.logins,
        "step_ups": ledger.step_ups,
        "revocations": ledger.revocations,
        "ocsp_answers": ledger.ocsp_answers,
        "gave_up": ledger.gave_up,
        "refused": ledger.refused,
        "retries_not_replayed": ledger.retries_not_replayed,
        "tokens_requested_again": ledger.tokens_requested_again,
    }


def format_report(summary: Mapping[str, Any]) -> str:
    """Return the summary as the tables docs/reliability.md shows."""
    lines = [
        f"duration {summary['duration_s']} s, {summary['attempts']} calls; setups {summary['setups_started']} "
        f"started, {summary['setups_completed']} completed; {summary['certificates']} certificates, "
        f"{summary['logins']} logins, {summary['step_ups']} step-ups, {summary['revocations']} revocations, "
        f"{summary['ocsp_answers']} OCSP answers; longest call {summary['longest_call_s']} s",
        "",
        "| type | acknowledged | per s (whole run) | per s (outside faults) | p50 ms | p99 ms "
        "| errors outside faults | errors in faults |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in summary["types"].items():
        lines.append(
            f"| {kind} | {row['ok']} | {row['per_second']} | {row['per_second_outside_faults']} | {row['p50_ms']} "
            f"| {row['p99_ms']} | {row['errors_outside_faults']} | {row['errors_in_faults']} |"
        )
    lines += ["", "| fault | down s | restart→ready s | " + " | ".join(TYPES) + " | what clients saw |"]
    lines.append("|---" * (4 + len(TYPES)) + "|")
    for f in summary["faults"]:
        cells = []
        for kind in TYPES:
            value = f["recovery_s"][kind]
            text = "—" if value is None else f"{value}"
            cells.append(text + ("" if f["recovery_s"][kind + "_affected"] else " (unaffected)"))
        seen = ", ".join(f"{k} ×{v}" for k, v in sorted(f["outcomes"].items())) or "nothing failed"
        lines.append(
            f"| {f['target']} | {f['down_s']} | {f['restart_to_ready_s']} | " + " | ".join(cells) + f" | {seen} |"
        )
    return "\n".join(lines)
