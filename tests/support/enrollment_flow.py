"""A running CA + OTP + enrollment stack on free ports with real mTLS and a real SMTP server, and a customer who
walks the bank's procedure through the enrollment's gRPC API as the gateway would (tests and benchmarks); the
customer's entries, CSR and mailed IDs, which the gateway's tests share."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kagi.ca.v1 import ca_pb2_grpc
from kagi.cli.stack import FREE_PORTS, RunningStack, start_stack
from kagi.clock import Clock
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.enrollment.v1 import enrollment_pb2_grpc, user_pb2_grpc
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.otp.v1 import otp_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.grpc_server import CLIENT_CERT_SERIAL_HEADER, CLIENT_CERT_SHA256_HEADER
from kagi.runtime.settings import TlsFiles
from services.otp_service.domain.totp import TotpParameters, totp
from tests.support.smtp import SmtpServer
from tests.support.tools import tool

PROFILE = {
    "user_name": "山田 太郎",
    "email": "taro@example.co.jp",
    "email_confirmation": "taro@example.co.jp",
    "login_password": "Passw0rd",
    "login_password_confirmation": "Passw0rd",
    "confirmation_password": "Kakunin9",
    "confirmation_password_confirmation": "Kakunin9",
}
"""Step 2's entries but the login ID, which each customer has its own of (see `profile_entries`)."""

USAGE_START_PASSWORD = "4831"
COMPANY = "株式会社サンプル"


def new_login_id() -> str:
    """Return a login ID no other customer of the run has."""
    return f"user{uuid.uuid4().hex[:6]}1"


def new_account_number() -> str:
    """Return a random seven-digit account number for a new application."""
    return f"{uuid.uuid4().int % 10**7:07d}"


def profile_entries(login_id: str, **changes: str) -> dict[str, str]:
    """Return step 2's entries for `login_id`, `changes` replacing any of them."""
    return {**PROFILE, "login_id": login_id, "login_id_confirmation": login_id, **changes}


async def register_application(
    operator: enrollment_pb2_grpc.EnrollmentServiceStub, branch: str, account: str
) -> pb.RegisterApplicationResponse:
    """Register the company's application as the bank's operator; the answer is the notice."""
    notice: pb.RegisterApplicationResponse = await operator.RegisterApplication(
        pb.RegisterApplicationRequest(
            request_id=uuid.uuid4().hex,
            company_name=COMPANY,
            branch_code=branch,
            account_type=pb.ACCOUNT_TYPE_ORDINARY,
            account_number=account,
        )
    )
    return notice


def make_csr(directory: Path) -> tuple[str, Path]:
    """Have openssl make a P-256 key and a CSR, as a browser makes them on the client; return the CSR and key file.

    The key is customer-NAME-key.pem; `write_certificate` puts the certificate beside it as customer-NAME.pem.
    """
    name = uuid.uuid4().hex[:8]
    key, csr = directory / f"customer-{name}-key.pem", directory / f"customer-{name}.csr"
    subprocess.run(
        [tool("openssl"), "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=ignored by the CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    return csr.read_text(), key


def write_certificate(key: Path, certificate_pem: str, chain_pem: str, root: Path) -> TlsFiles:
    """Write the issued certificate and its chain beside the key `make_csr` made; return the client's TLS files."""
    cert_file = key.with_name(key.name.replace("-key.pem", ".pem"))
    cert_file.write_text(certificate_pem + chain_pem)
    return TlsFiles(cert_file, key, root)


def mailed_ids(messages: Sequence[EmailMessage], to: str) -> tuple[str, str] | None:
    """Return the service ID and user ID of the latest step-7 mail to `to` among `messages`, if one came."""
    for message in reversed(messages):
        body = message.get_content()
        service = re.search(r"^Service ID: (\S+)\r?$", body, re.M)
        user = re.search(r"^User ID: (\S+)\r?$", body, re.M)
        if service and user and message["To"] == to:
            return service.group(1), user.group(1)
    return None


def identity(tls_dir: Path, role: str) -> TlsFiles:
    """Return the stack's internal certificate for a role (developer = the operator)."""
    return TlsFiles(tls_dir / f"{role}.pem", tls_dir / f"{role}-key.pem", tls_dir / "ca.pem")


@dataclass
class Services:
    """Reaches running services as each caller the tests play, one cached channel per caller."""

    targets: dict[str, str]
    tls_dir: Path
    smtp: SmtpServer
    channels: dict[tuple[str, str], grpc.aio.Channel] = field(default_factory=dict)

    def _channel(self, service: str, role: str) -> grpc.aio.Channel:
        key = (service, role)
        if key not in self.channels:
            self.channels[key] = open_channel(
                self.targets[service], identity(self.tls_dir, role), server_name="localhost"
            )
        return self.channels[key]

    def enrollment(self, role: str = "gateway") -> enrollment_pb2_grpc.EnrollmentServiceStub:
        """Return a stub of the enrollment service as `role` (gateway by default)."""
        return enrollment_pb2_grpc.EnrollmentServiceStub(self._channel("enrollment", role))

    def ca(self, role: str = "developer") -> ca_pb2_grpc.CertificateAuthorityServiceStub:
        """Return a stub of the CA service (as the operator by default)."""
        return ca_pb2_grpc.CertificateAuthorityServiceStub(self._channel("ca", role))

    def otp(self, role: str = "developer") -> otp_pb2_grpc.OtpServiceStub:
        """Return a stub of the OTP service (as the operator by default)."""
        return otp_pb2_grpc.OtpServiceStub(self._channel("otp", role))

    async def deliver_mail(self) -> None:
        """Wait for the services' own outbox sender (a stack in this process is flushed now)."""

    async def close(self) -> None:
        """Close the stubs' channels."""
        for channel in self.channels.values():
            await channel.close()
        self.channels.clear()


@dataclass
class Stack(Services):
    """A stack running in this process, reached as each caller the tests play."""

    dev: RunningStack | None = None

    async def deliver_mail(self) -> None:
        """Flush the enrollment's outbox to the SMTP server now."""
        assert self.dev is not None
        await self.dev.components["enrollment"].deliver_mail_now()

    async def close(self) -> None:
        """Close the stubs' channels and stop the services."""
        await super().close()
        if self.dev is not None:
            await self.dev.stop(0)


async def open_stack(state_dir: Path, *, store_url: str = "sqlite:", clock: Clock | None = None) -> Stack:
    """Start the services on free ports with mail going to a real SMTP server on loopback."""
    smtp = SmtpServer().start()
    dev = await start_stack(
        state_dir, ports=FREE_PORTS, store_url=store_url, clock=clock, with_gateway=False, extra_env=smtp.environment()
    )
    targets = {name: dev.target(name) for name in ("ca", "otp", "enrollment")}
    return Stack(targets, dev.tls_dir, smtp, dev=dev)


def relayed(certificate_pem: str) -> list[tuple[str, str]]:
    """Return the metadata the gateway sends for a verified client certificate."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    der = certificate.public_bytes(serialization.Encoding.DER)
    return [
        (CLIENT_CERT_SERIAL_HEADER, format(certificate.serial_number, "x")),
        (CLIENT_CERT_SHA256_HEADER, hashlib.sha256(der).hexdigest()),
    ]


def code_for(secret: str, now: float) -> str:
    """Return the app's current code for a base32 seed (SHA-1, 6 digits, 60 s)."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return totp(key, now, TotpParameters())


@dataclass
class Customer:
    """Walks the ten steps; each method is one step, in the bank's words."""

    stack: Services
    workdir: Path
    branch: str = "001"
    account: str = field(default_factory=new_account_number)
    login_id: str = field(default_factory=new_login_id)
    notice: pb.RegisterApplicationResponse | None = None
    enrollment_id: str = ""
    session: str = ""
    certificate_pem: str = ""
    service_id: str = ""
    app_user_id: str = ""
    secret: str = ""
    activation_id: str = ""
    csr: str = ""
    key_file: Path | None = None  # the key `csr` is for, made on the client
    chain_pem: str = ""
    step7_rpc_seconds: float = 0.0
    mail_seen: int = 0
    mobile_email: str = field(default_factory=lambda: f"phone-{uuid.uuid4().hex[:10]}@example.jp")

    @property
    def cert_metadata(self) -> list[tuple[str, str]]:
        """Return the relayed client certificate of step 5 onwards (before step 4: someone else's)."""
        if not self.certificate_pem:
            return [(CLIENT_CERT_SERIAL_HEADER, "1"), (CLIENT_CERT_SHA256_HEADER, "00" * 32)]
        return relayed(self.certificate_pem)

    async def register_application(self) -> pb.RegisterApplicationResponse:
        """The bank registers the application and hands over the notice."""
        self.notice = await register_application(self.stack.enrollment("developer"), self.branch, self.account)
        return self.notice

    async def step1(self, *, login_password: str | None = None, request_id: str = "") -> pb.VerifyNoticeResponse:
        """Step 1: the account and the notice's temporary passwords."""
        assert self.notice is not None
        reply: pb.VerifyNoticeResponse = await self.stack.enrollment().VerifyNotice(
            pb.VerifyNoticeRequest(
                request_id=request_id or uuid.uuid4().hex,
                branch_code=self.branch,
                account_type=pb.ACCOUNT_TYPE_ORDINARY,
                account_number=self.account,
                temporary_login_password=login_password or self.notice.temporary_login_password,
                temporary_confirmation_password=self.notice.temporary_confirmation_password,
            )
        )
        self.enrollment_id = reply.enrollment.enrollment_id
        if reply.session_token:  # an idempotent replay never returns the token again
            self.session = reply.session_token
        return reply

    async def step2(self, request_id: str = "", **changes: str) -> pb.SubmitProfileResponse:
        """Step 2: the profile."""
        entries = profile_entries(self.login_id, **changes)
        reply: pb.SubmitProfileResponse = await self.stack.enrollment().SubmitProfile(
            pb.SubmitProfileRequest(
                request_id=request_id or uuid.uuid4().hex,
                enrollment_id=self.enrollment_id,
                session_token=self.session,
                **entries,
            )
        )
        return reply

    async def step3(self, request_id: str = "") -> pb.ConfirmRegistrationResponse:
        """Step 3: register."""
        reply: pb.ConfirmRegistrationResponse = await self.stack.enrollment().ConfirmRegistration(
            pb.ConfirmRegistrationRequest(
                request_id=request_id or uuid.uuid4().hex, enrollment_id=self.enrollment_id, session_token=self.session
            )
        )
        return reply

    async def step4(self, request_id: str = "") -> pb.IssueCertificateResponse:
        """Step 4: a CSR made on the client is signed by the customer CA."""
        if not self.csr:  # a retry sends the same CSR, as a browser resending its request would
            self.csr, self.key_file = make_csr(self.workdir)
        reply: pb.IssueCertificateResponse = await self.stack.enrollment().IssueCertificate(
            pb.IssueCertificateRequest(
                request_id=request_id or uuid.uuid4().hex,
                enrollment_id=self.enrollment_id,
                session_token=self.session,
                csr_pem=self.csr,
            )
        )
        if reply.certificate_pem:
            self.certificate_pem, self.chain_pem = reply.certificate_pem, reply.chain_pem
        return reply

    def tls_files(self) -> TlsFiles:
        """Write the certificate of step 4 with its chain beside its key; return them as a client presents them."""
        assert self.key_file is not None, "step 4 first"
        return write_certificate(self.key_file, self.certificate_pem, self.chain_pem, self.stack.tls_dir / "ca.pem")

    async def step5(self, request_id: str = "") -> pb.CertificateLoginResponse:
        """Step 5: certificate login."""
        reply: pb.CertificateLoginResponse = await self.stack.enrollment().CertificateLogin(
            pb.CertificateLoginRequest(request_id=request_id or uuid.uuid4().hex, enrollment_id=self.enrollment_id),
            metadata=self.cert_metadata,
        )
        return reply

    async def step6(self, password: str = "Passw0rd", request_id: str = "") -> pb.PasswordLoginResponse:
        """Step 6: the login password."""
        reply: pb.PasswordLoginResponse = await self.stack.enrollment().PasswordLogin(
            pb.PasswordLoginRequest(
                request_id=request_id or uuid.uuid4().hex, enrollment_id=self.enrollment_id, login_password=password
            ),
            metadata=self.cert_metadata,
        )
        return reply

    async def step7(self, request_id: str = "") -> pb.RequestTokenResponse:
        """Step 7: the phone's e-mail and the usage-start password; the IDs arrive by mail."""
        self.mail_seen = len(self.stack.smtp.inbox.messages)  # the mail can only come after the request
        start = time.perf_counter()
        reply: pb.RequestTokenResponse = await self.stack.enrollment().RequestToken(
            pb.RequestTokenRequest(
                request_id=request_id or uuid.uuid4().hex,
                enrollment_id=self.enrollment_id,
                mobile_email=self.mobile_email,
                mobile_email_confirmation=self.mobile_email,
                usage_start_password=USAGE_START_PASSWORD,
                usage_start_password_confirmation=USAGE_START_PASSWORD,
            ),
            metadata=self.cert_metadata,
        )
        self.step7_rpc_seconds = time.perf_counter() - start
        await self.read_mail()
        return reply

    async def read_mail(self) -> None:
        """Take the service ID and user ID from the step-7 mail the SMTP server received."""
        for _ in range(50):
            await self.stack.deliver_mail()
            found = mailed_ids(self.stack.smtp.inbox.messages[self.mail_seen :], self.mobile_email)
            if found is not None:
                self.service_id, self.app_user_id = found
            if self.service_id:  # a replayed step 7 sends no mail: the IDs already read stand
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the step-7 mail did not arrive")

    async def step8(self, request_id: str = "") -> pb.ActivateAppResponse:
        """Step 8: the app sends the IDs, the usage-start password and consent; the seed comes back once."""
        reply: pb.ActivateAppResponse = await self.stack.enrollment().ActivateApp(
            pb.ActivateAppRequest(
                request_id=request_id or uuid.uuid4().hex,
                service_id=self.service_id,
                user_id=self.app_user_id,
                usage_start_password=USAGE_START_PASSWORD,
                agreed=True,
            )
        )
        if reply.activation.secret:
            self.secret = reply.activation.secret
            self.activation_id = reply.activation.activation_id
        return reply

    async def step9(self, request_id: str = "") -> pb.RegisterAppResponse:
        """Step 9: the app registers."""
        reply: pb.RegisterAppResponse = await self.stack.enrollment().RegisterApp(
            pb.RegisterAppRequest(
                request_id=request_id or uuid.uuid4().hex,
                service_id=self.service_id,
                user_id=self.app_user_id,
                activation_id=self.activation_id,
            )
        )
        return reply

    async def step10(self, now: float, request_id: str = "") -> pb.VerifyFirstCodeResponse:
        """Step 10: the code the app shows."""
        reply: pb.VerifyFirstCodeResponse = await self.stack.enrollment().VerifyFirstCode(
            pb.VerifyFirstCodeRequest(
                request_id=request_id or uuid.uuid4().hex,
                enrollment_id=self.enrollment_id,
                otp=code_for(self.secret, now),
            ),
            metadata=self.cert_metadata,
        )
        return reply

    async def complete(self, now: float) -> Customer:
        """Take all ten steps, the first code being the app's code at `now`."""
        await self.register_application()
        for step in (self.step1, self.step2, self.step3, self.step4, self.step5, self.step6, self.step7):
            await step()
        await self.step8()
        await self.step9()
        await self.step10(now)
        return self

    def users(self, role: str = "gateway") -> user_pb2_grpc.UserServiceStub:
        """Return a UserService stub as `role` (the gateway by default)."""
        return user_pb2_grpc.UserServiceStub(self.stack._channel("enrollment", role))

    async def login(self, password: str = "Passw0rd", *, login_id: str = "") -> upb.AuthenticateResponse:
        """Return the gateway's Authenticate with this customer's certificate relayed."""
        reply: upb.AuthenticateResponse = await self.users().Authenticate(
            upb.AuthenticateRequest(login_id=login_id or self.login_id, login_password=password),
            metadata=self.cert_metadata,
        )
        return reply

    async def state(self) -> pb.Enrollment:
        """Read the enrollment back: with the session token before step 4, the certificate after it
        (step 4 retires the token)."""
        if self.certificate_pem:
            reply = await self.stack.enrollment().GetEnrollment(
                pb.GetEnrollmentRequest(enrollment_id=self.enrollment_id), metadata=self.cert_metadata
            )
        else:
            reply = await self.stack.enrollment().GetEnrollment(
                pb.GetEnrollmentRequest(enrollment_id=self.enrollment_id, session_token=self.session)
            )
        enrollment: pb.Enrollment = reply.enrollment
        return enrollment
