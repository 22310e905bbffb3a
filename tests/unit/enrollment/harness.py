"""A bank in memory for the enrollment use cases: the service wired to the fakes and a real SQLite store in a
temporary directory, and a customer who walks the bank's procedure one step at a time."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kagi.clock import FakeClock
from kagi.idempotency import acting_request
from kagi.passwords import Argon2Parameters, PasswordHasher, Pepper
from kagi.store import KeyValueStore, open_store
from services.enrollment_service.adapters.outbox import OutboxSender
from services.enrollment_service.app.ports import AppActivation, IssuedCertificate
from services.enrollment_service.app.repository import EnrollmentRepository
from services.enrollment_service.app.use_cases import EnrollmentPolicy, EnrollmentService, Notice
from services.enrollment_service.domain.client_certificates import ClientCertificate
from services.enrollment_service.domain.records import AccountType, Enrollment
from services.enrollment_service.domain.states import State
from tests.unit.enrollment.fakes import (
    FakeCertificateAuthority,
    FakeMailer,
    FakeTokenService,
    csr_for,
    new_key,
)

T = TypeVar("T")

# Hashing at test speed: these tests prove the use cases, not argon2's cost.
FAST_HASHER = PasswordHasher([Pepper("p1", b"P" * 32)], Argon2Parameters(time_cost=1, memory_cost_kib=256))
START = 1_800_000_000.0
LOGIN_PASSWORD = "Passw0rd"
CONFIRMATION_PASSWORD = "Kakunin9"
USAGE_START_PASSWORD = "4831"
SENDER = "kagi@bank.example"


@dataclass
class Bank:
    """The enrollment service over a real SQLite store, with the CA, the OTP service and the mail server faked."""

    clock: FakeClock
    store: KeyValueStore
    repository: EnrollmentRepository
    ca: FakeCertificateAuthority
    otp: FakeTokenService
    mailer: FakeMailer
    service: EnrollmentService
    outbox: OutboxSender

    async def deliver_mail(self) -> int:
        """Send every queued mail that is due; return how many went out."""
        return await self.outbox.deliver_due()

    async def mails_to(self, address: str) -> list[str]:
        """Send the due mails, then return the bodies of every mail `address` received, oldest first."""
        await self.deliver_mail()
        return self.mailer.to(address)

    def customer(self, account: str = "") -> Customer:
        """Return a new customer of this bank, with a new representative account unless `account` is given."""
        return Customer(self, account=account) if account else Customer(self)


async def open_bank(state_dir: Path, *, policy: EnrollmentPolicy | None = None) -> Bank:
    """Wire the enrollment service to the fakes and a fresh SQLite store under `state_dir`."""
    clock = FakeClock(START)
    store = open_store("sqlite:", namespace="enrollment", state_dir=state_dir, clock=clock)
    repository = EnrollmentRepository(store)
    ca, otp, mailer = FakeCertificateAuthority(clock), FakeTokenService(clock), FakeMailer()
    service = EnrollmentService(repository, ca, otp, FAST_HASHER, clock, policy)
    outbox = OutboxSender(store, mailer, clock, SENDER)
    return Bank(clock, store, repository, ca, otp, mailer, service, outbox)


async def as_request(key: str, step: Callable[[], Awaitable[T]]) -> T:
    """Run a step as the request the idempotency ledger names `key`, as the gRPC API runs every step."""
    token = acting_request.set(key)
    try:
        return await step()
    finally:
        acting_request.reset(token)


def mailed_ids(body: str) -> tuple[str, str]:
    """Return the service ID and the user ID a step-7 mail gives for the app."""
    service = re.search(r"Service ID: (\S+)", body)
    user = re.search(r"User ID: (\S+)", body)
    assert service is not None, body
    assert user is not None, body
    return service.group(1), user.group(1)


@dataclass
class Customer:
    """A company's user who walks the ten steps; each method is one step, in the bank's words."""

    bank: Bank
    branch: str = "001"
    account: str = field(default_factory=lambda: f"{secrets.randbelow(10**7):07d}")
    company: str = "株式会社テスト"
    login_id: str = "yamada01"
    email: str = "taro@example.co.jp"
    mobile_email: str = "phone@example.jp"
    notice: Notice | None = None
    enrollment_id: str = ""
    session: str = ""
    csr: str = field(default_factory=lambda: csr_for(new_key()))
    issued: IssuedCertificate | None = None
    service_id: str = ""
    app_user_id: str = ""
    activation: AppActivation | None = None

    @property
    def service(self) -> EnrollmentService:
        """Return the bank's enrollment service."""
        return self.bank.service

    @property
    def certificate(self) -> ClientCertificate:
        """Return the certificate step 4 issued, as the gateway relays it after the TLS handshake."""
        assert self.issued is not None, "step 4 has not issued a certificate yet"
        return ClientCertificate(self.issued.serial_number, self.issued.fingerprint_sha256)

    async def register_application(self) -> Notice:
        """The bank registers the company's application and hands over the notice."""
        self.notice = await self.service.register_application(
            company_name=self.company,
            branch_code=self.branch,
            account_type=AccountType.ORDINARY,
            account_number=self.account,
        )
        return self.notice

    async def step1(self, *, login_password: str | None = None, client_address: str = "") -> Enrollment:
        """Enter the account and the notice's temporary passwords (procedure 7)."""
        if self.notice is None:
            await self.register_application()
        assert self.notice is not None
        enrollment, self.session = await self.service.verify_notice(
            branch_code=self.branch,
            account_type=AccountType.ORDINARY,
            account_number=self.account,
            temporary_login_password=(
                self.notice.temporary_login_password if login_password is None else login_password
            ),
            temporary_confirmation_password=self.notice.temporary_confirmation_password,
            client_address=client_address,
        )
        self.enrollment_id = enrollment.enrollment_id
        return enrollment

    def profile(self, **changes: str) -> dict[str, str]:
        """Return the step-2 form as the customer fills it in."""
        form = {
            "user_name": "山田 太郎",
            "email": self.email,
            "email_confirmation": self.email,
            "login_id": self.login_id,
            "login_id_confirmation": self.login_id,
            "login_password": LOGIN_PASSWORD,
            "login_password_confirmation": LOGIN_PASSWORD,
            "confirmation_password": CONFIRMATION_PASSWORD,
            "confirmation_password_confirmation": CONFIRMATION_PASSWORD,
        }
        return {**form, **changes}

    async def step2(self, **changes: str) -> Enrollment:
        """Enter the profile (procedure 8)."""
        enrollment, _company = await self.service.submit_profile(
            self.enrollment_id, self.session, **self.profile(**changes)
        )
        return enrollment

    async def step3(self) -> Enrollment:
        """Check the summary and press Register (procedure 9)."""
        return await self.service.confirm_registration(self.enrollment_id, self.session)

    async def step4(self, *, csr: str | None = None, request_id: str = "cert-1") -> Enrollment:
        """Issue the certificate for a key made in the browser (procedures 10-13)."""
        enrollment, self.issued = await self.service.issue_certificate(
            self.enrollment_id, self.session, self.csr if csr is None else csr, request_id
        )
        return enrollment

    async def step5(self) -> Enrollment:
        """Log in with the new certificate (procedures 14-16)."""
        return await self.service.certificate_login(self.enrollment_id, self.certificate)

    async def step6(self, password: str = LOGIN_PASSWORD) -> Enrollment:
        """Enter the login password in the certificate's session (procedure 17)."""
        return await self.service.password_login(self.enrollment_id, self.certificate, password)

    async def step7(self, *, request_id: str = "token-1") -> Enrollment:
        """Ask for the token with the phone's mail address and the usage-start password (procedures 18-19)."""
        enrollment = await self.service.request_token(
            self.enrollment_id,
            self.certificate,
            request_id,
            mobile_email=self.mobile_email,
            mobile_email_confirmation=self.mobile_email,
            usage_start_password=USAGE_START_PASSWORD,
            usage_start_password_confirmation=USAGE_START_PASSWORD,
        )
        self.service_id, self.app_user_id = enrollment.service_id, enrollment.app_user_id
        return enrollment

    async def step8(self, *, request_id: str = "activate-1") -> AppActivation:
        """In the app: the IDs from the mail, the usage-start password, "I agree", Send (procedure 20)."""
        self.activation = await self.service.activate_app(
            service_id=self.service_id,
            app_user_id=self.app_user_id,
            usage_start_password=USAGE_START_PASSWORD,
            agreed=True,
            request_id=request_id,
        )
        return self.activation

    async def step9(self, *, request_id: str = "register-1") -> Enrollment | None:
        """In the app: Register (procedures 21-22)."""
        assert self.activation is not None
        return await self.service.register_app(
            service_id=self.service_id,
            app_user_id=self.app_user_id,
            activation_id=self.activation.activation_id,
            request_id=request_id,
        )

    async def step10(self, code: str | None = None, *, request_id: str = "code-1") -> Enrollment:
        """Type the app's code and confirm (procedures 23-24)."""
        assert self.activation is not None
        shown = self.bank.otp.code(self.activation.token_id) if code is None else code
        return await self.service.verify_first_code(self.enrollment_id, self.certificate, shown, request_id)

    async def walk_to(self, state: State) -> Enrollment:
        """Take the steps from the start until the enrollment is in `state`."""
        steps: list[Callable[[], Awaitable[Enrollment]]] = [
            self.step1,
            self.step2,
            self.step3,
            self.step4,
            self.step5,
            self.step6,
            self.step7,
        ]
        for step in steps:
            enrollment = await step()
            if enrollment.state is state:
                return enrollment
        await self.step8()
        if state is State.APP_ACTIVATED:
            return await self.service.get(self.enrollment_id, certificate=self.certificate)
        registered = await self.step9()
        assert registered is not None
        if registered.state is state:
            return registered
        completed = await self.step10()
        assert completed.state is state, f"the walk ended at {completed.state}, not {state}"
        return completed
