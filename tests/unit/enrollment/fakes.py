"""In-memory stand-ins for what the enrollment service calls: the CA service, the OTP service and the mail server.

Each implements its port (`app.ports.CertificateAuthority`, `app.ports.TokenService`, `adapters.mail.MailTransport`)
the way the real service behaves as its gRPC client reports it: a repeated request id gets the first answer, a
reused request id with other content is refused with REQUEST_ID_REUSED, revoking twice changes nothing, and errors
are the kagi errors with the reasons the real services send. Tests steer them:

- `down = True`: every call raises the Unavailable the gRPC client raises when the service cannot be reached;
- `crash_after.add(name)`: the next call of that method does its work, then the answer is lost (`Crash`), as when
  the enrollment process dies between the service's answer and its own save;
- `rendezvous(name, parties)`: that many calls of the method wait for one another before doing their work, so
  concurrent use cases have all read their records before any of them writes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kagi.clock import Clock
from kagi.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated, Unavailable
from services.enrollment_service.app.ports import (
    AppActivation,
    CertificateStatus,
    CertificateView,
    IssuedCertificate,
    PendingToken,
    RevocationReason,
    TokenState,
)

T = TypeVar("T")

DAY = 86400.0
CERTIFICATE_DAYS = 365
OTP_PERIOD = 60


class Crash(Exception):
    """The caller's process died here: the service did its work, and its answer never arrived."""


def new_key() -> ec.EllipticCurvePrivateKey:
    """Return a new P-256 key, as the customer's browser makes one in step 4."""
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(key: ec.EllipticCurvePrivateKey, common_name: str = "kagi customer") -> str:
    """Return a PEM CSR for `key`."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


class _FakeService:
    """The steering every fake shares: outage, lost answers, rendezvous, and a log of the calls."""

    def __init__(self) -> None:
        self.down = False
        self.crash_after: set[str] = set()
        self.calls: list[str] = []
        self._rendezvous: dict[str, asyncio.Barrier] = {}

    def rendezvous(self, name: str, parties: int) -> None:
        """Make the next `parties` calls of method `name` wait for one another before doing their work."""
        self._rendezvous[name] = asyncio.Barrier(parties)

    def count(self, name: str) -> int:
        """Return how many calls of method `name` reached the service."""
        return self.calls.count(name)

    async def _enter(self, name: str) -> None:
        if self.down:
            # What GrpcCertificateAuthority / GrpcTokenService raise for UNAVAILABLE (kagi.runtime.grpc_client).
            raise Unavailable("service unavailable: failed to connect to all addresses", reason="SERVICE_UNAVAILABLE")
        self.calls.append(name)
        barrier = self._rendezvous.get(name)
        if barrier is not None:
            await barrier.wait()

    def _leave(self, name: str) -> None:
        if name in self.crash_after:
            self.crash_after.discard(name)
            raise Crash(f"the answer of {name} was lost")


@dataclass
class FakeCertificate:
    """A certificate the fake CA signed, and its state."""

    serial_number: str
    user_id: str
    certificate_pem: str
    fingerprint_sha256: str
    revoked: RevocationReason | str | None = None


class FakeCertificateAuthority(_FakeService):
    """The CA service in memory: a throwaway customer CA that signs CSRs and keeps every certificate's state."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self._clock = clock
        self._key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kagi fake customer CA")])
        now = _utc(clock.now() - DAY)
        self._name = name
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(_utc(clock.now() + 20 * 365 * DAY))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.certificates: dict[str, FakeCertificate] = {}
        self._answers: dict[str, tuple[str, IssuedCertificate]] = {}

    def active_serials(self, user_id: str) -> list[str]:
        """Return the serial numbers of the user's certificates that are not revoked."""
        return [c.serial_number for c in self.certificates.values() if c.user_id == user_id and c.revoked is None]

    async def issue_customer_certificate(
        self, *, request_id: str, csr_pem: str, user_id: str, company_name: str, user_name: str, login_id: str
    ) -> IssuedCertificate:
        """Sign the CSR for the user, or answer a repeated request id as the first time."""
        await self._enter("issue_customer_certificate")
        issued = self._once(request_id, csr_pem, lambda: self._sign(csr_pem, user_id, login_id))
        self._leave("issue_customer_certificate")
        return issued

    async def renew(self, *, request_id: str, serial_number: str, csr_pem: str) -> IssuedCertificate:
        """Sign the CSR for the identity of an existing certificate."""
        await self._enter("renew")
        old = self._find(serial_number)
        issued = self._once(request_id, csr_pem, lambda: self._sign(csr_pem, old.user_id, "renewed"))
        self._leave("renew")
        return issued

    async def status(self, serial_number: str) -> CertificateStatus:
        """Return GOOD, REVOKED or UNKNOWN for a serial."""
        await self._enter("status")
        found = self.certificates.get(serial_number.lower())
        self._leave("status")
        if found is None:
            return CertificateStatus.UNKNOWN
        return CertificateStatus.GOOD if found.revoked is None else CertificateStatus.REVOKED

    async def customer_ca_pem(self) -> bytes:
        """Return the fake customer CA's certificate."""
        await self._enter("customer_ca_pem")
        return self._ca.public_bytes(serialization.Encoding.PEM)

    async def revoke(self, *, serial_number: str, reason: RevocationReason, request_id: str) -> None:
        """Revoke a certificate; revoking a revoked one changes nothing."""
        await self._enter("revoke")
        found = self._find(serial_number)
        if found.revoked is None:
            found.revoked = reason
        self._leave("revoke")

    async def revoke_superseded(self, *, request_id: str, serial_number: str) -> None:
        """Revoke a renewed certificate as superseded."""
        await self.revoke(serial_number=serial_number, reason=RevocationReason.SUPERSEDED, request_id=request_id)

    async def revoke_subject(self, *, request_id: str, user_id: str, reason: str) -> int:
        """Revoke every active certificate of a user; return how many."""
        await self._enter("revoke_subject")
        active = [c for c in self.certificates.values() if c.user_id == user_id and c.revoked is None]
        for certificate in active:
            certificate.revoked = reason
        self._leave("revoke_subject")
        return len(active)

    async def active_certificates(self, subject_id: str) -> list[str]:
        """Return the serial numbers of a user's active certificates."""
        await self._enter("active_certificates")
        return self.active_serials(subject_id)

    async def certificate(self, serial_number: str) -> CertificateView:
        """Return a certificate's PEM and whether it is active."""
        await self._enter("certificate")
        found = self._find(serial_number)
        expired = x509.load_pem_x509_certificate(found.certificate_pem.encode()).not_valid_after_utc.timestamp()
        active = found.revoked is None and self._clock.now() < expired
        return CertificateView(found.serial_number, found.certificate_pem, active)

    def _find(self, serial_number: str) -> FakeCertificate:
        found = self.certificates.get(serial_number.lower())
        if found is None:
            raise NotFound("no such certificate", reason="CERTIFICATE_NOT_FOUND")
        return found

    def _once(self, request_id: str, content: str, act: Callable[[], IssuedCertificate]) -> IssuedCertificate:
        return _once(self._answers, request_id, content, act)

    def _sign(self, csr_pem: str, user_id: str, login_id: str) -> IssuedCertificate:
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise InvalidArgument("the CSR cannot be read", reason="CSR_MALFORMED", fields={"csr": "bad"}) from None
        now = self._clock.now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, login_id or user_id)]))
            .issuer_name(self._name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - 60))
            .not_valid_after(_utc(now + CERTIFICATE_DAYS * DAY))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        serial = f"{certificate.serial_number:x}"
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
        self.certificates[serial] = FakeCertificate(serial, user_id, pem, fingerprint)
        chain = self._ca.public_bytes(serialization.Encoding.PEM).decode()
        return IssuedCertificate(serial, fingerprint, pem, chain)


@dataclass
class FakeToken:
    """A token the fake OTP service holds: its app IDs, its usage-start password, its seed once activated."""

    token_id: str
    user_id: str
    service_id: str
    app_user_id: str
    delivery_email: str
    usage_start_password: str = field(repr=False)
    state: str = "PENDING_ACTIVATION"
    secret: bytes = field(default=b"", repr=False)
    activation_id: str = ""


_PENDING_STATES = {"PENDING_ACTIVATION", "ACTIVATED", "REGISTERED"}


class FakeTokenService(_FakeService):
    """The OTP service in memory: pending tokens, the app's activation and registration, and codes by the clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self._clock = clock
        self.tokens: dict[str, FakeToken] = {}
        self._answers: dict[str, tuple[str, PendingToken]] = {}
        self._activations: dict[str, AppActivation] = {}
        self._verified: set[str] = set()

    def code(self, token_id: str, *, at: float | None = None) -> str:
        """Return the code the token's app shows now (or at `at`)."""
        token = self.tokens[token_id]
        step = int((self._clock.now() if at is None else at) // OTP_PERIOD)
        digest = hmac.new(token.secret, step.to_bytes(8, "big"), hashlib.sha256).digest()
        return f"{int.from_bytes(digest[:4], 'big') % 1_000_000:06d}"

    async def create_token(
        self, *, request_id: str, user_id: str, delivery_email: str, usage_start_password: str
    ) -> PendingToken:
        """Create a pending token for the user (step 7)."""
        await self._enter("create_token")
        content = f"{user_id}\0{delivery_email}\0{usage_start_password}"
        pending = self._once(request_id, content, lambda: self._new(user_id, delivery_email, usage_start_password))
        self._leave("create_token")
        return pending

    async def reissue(
        self, *, request_id: str, token_id: str, delivery_email: str, usage_start_password: str
    ) -> PendingToken:
        """Revoke the token and create a new pending one for its user."""
        await self._enter("reissue")

        def swap() -> PendingToken:
            old = self._find(token_id)
            if old.state == "REVOKED":
                raise FailedPrecondition("the token is revoked", reason="ILLEGAL_TRANSITION")
            old.state = "REVOKED"
            return self._new(old.user_id, delivery_email or old.delivery_email, usage_start_password)

        pending = self._once(request_id, f"{token_id}\0{delivery_email}\0{usage_start_password}", swap)
        self._leave("reissue")
        return pending

    async def activate(
        self, *, request_id: str, service_id: str, app_user_id: str, usage_start_password: str, consent: bool
    ) -> AppActivation:
        """Deliver the seed to the app once (step 8); a replay of the request answers without the secret."""
        await self._enter("activate")
        first = self._activations.get(request_id)
        if first is not None:
            return AppActivation(first.token_id, "", "", first.algorithm, first.digits, first.period, "")
        if not consent:
            raise InvalidArgument("consent is required", reason="CONSENT_REQUIRED", fields={"consent": "required"})
        token = next((t for t in self.tokens.values() if t.service_id == service_id), None)
        if token is None or token.app_user_id != app_user_id or token.usage_start_password != usage_start_password:
            raise Unauthenticated("the IDs or the usage-start password are wrong", reason="ACTIVATION_FAILED")
        if token.state != "PENDING_ACTIVATION":
            raise FailedPrecondition(f"the token is {token.state}", reason="ILLEGAL_TRANSITION")
        token.state, token.secret, token.activation_id = "ACTIVATED", secrets.token_bytes(20), uuid.uuid4().hex
        secret = base64.b32encode(token.secret).decode().rstrip("=")
        activation = AppActivation(
            token.token_id,
            secret,
            f"otpauth://totp/kagi:{app_user_id}?secret={secret}&period={OTP_PERIOD}",
            "SHA1",
            6,
            OTP_PERIOD,
            token.activation_id,
        )
        self._activations[request_id] = activation
        self._leave("activate")
        return activation

    async def confirm_registration(
        self, *, request_id: str, service_id: str, app_user_id: str, activation_id: str
    ) -> str:
        """Record that the app stored the seed (step 9)."""
        await self._enter("confirm_registration")
        token = next((t for t in self.tokens.values() if t.service_id == service_id), None)
        if token is None or token.app_user_id != app_user_id or token.activation_id != activation_id:
            raise Unauthenticated("the IDs or the activation ID are wrong", reason="REGISTRATION_FAILED")
        if token.state == "ACTIVATED":
            token.state = "REGISTERED"
        self._leave("confirm_registration")
        return token.token_id

    async def verify(self, *, request_id: str, token_id: str, code: str) -> None:
        """Accept the app's current code; the first one makes a registered token active."""
        await self._enter("verify")
        if request_id in self._verified:
            return
        token = self._find(token_id)
        if token.state not in ("REGISTERED", "ACTIVE"):
            raise FailedPrecondition(f"the token is {token.state}", reason="TOKEN_NOT_ACTIVE")
        if not hmac.compare_digest(code, self.code(token_id)):
            raise Unauthenticated("the code is wrong", reason="WRONG_CODE", fields={"otp": "wrong"})
        token.state = "ACTIVE"
        self._verified.add(request_id)
        self._leave("verify")

    async def token_state(self, token_id: str) -> TokenState:
        """Return the token's state as the front-end boundary shows it."""
        await self._enter("token_state")
        if not token_id:
            return TokenState.NONE
        state = self._find(token_id).state
        if state in _PENDING_STATES:
            return TokenState.PENDING
        return TokenState.ACTIVE if state == "ACTIVE" else TokenState.DISABLED

    async def revoke_token(self, *, request_id: str, token_id: str) -> None:
        """Revoke a token for good; revoking a revoked one changes nothing."""
        await self._enter("revoke_token")
        self._find(token_id).state = "REVOKED"
        self._leave("revoke_token")

    async def live_token_ids(self, user_id: str) -> list[str]:
        """Return the ids of the user's tokens that are not revoked."""
        await self._enter("live_token_ids")
        return [t.token_id for t in self.tokens.values() if t.user_id == user_id and t.state != "REVOKED"]

    async def disable(self, *, request_id: str, token_id: str) -> None:
        """Stop an active token from verifying."""
        await self._enter("disable")
        token = self._find(token_id)
        if token.state != "ACTIVE":
            raise FailedPrecondition(f"the token is {token.state}", reason="ILLEGAL_TRANSITION")
        token.state = "DISABLED"

    def _find(self, token_id: str) -> FakeToken:
        found = self.tokens.get(token_id)
        if found is None:
            raise NotFound("no such token", reason="TOKEN_NOT_FOUND")
        return found

    def _new(self, user_id: str, delivery_email: str, usage_start_password: str) -> PendingToken:
        token = FakeToken(
            token_id=uuid.uuid4().hex,
            user_id=user_id,
            service_id=f"S{secrets.randbelow(10**9):09d}",
            app_user_id=f"U{secrets.randbelow(10**9):09d}",
            delivery_email=delivery_email,
            usage_start_password=usage_start_password,
        )
        self.tokens[token.token_id] = token
        return PendingToken(token.token_id, token.service_id, token.app_user_id)

    def _once(self, request_id: str, content: str, act: Callable[[], PendingToken]) -> PendingToken:
        return _once(self._answers, request_id, content, act)


class FakeMailer:
    """A mail server in memory: what the outbox sent, by recipient; `down` refuses every send."""

    def __init__(self) -> None:
        self.down = False
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        """Accept one message, or raise the Unavailable a mail server that is down causes."""
        if self.down:
            raise Unavailable("the mail server is down", reason="MAIL_UNAVAILABLE")
        self.sent.append(message)

    def to(self, address: str) -> list[str]:
        """Return the bodies of the mails sent to `address`, oldest first."""
        return [str(m.get_content()) for m in self.sent if m["To"] == address]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _once(answers: dict[str, tuple[str, T]], request_id: str, content: str, act: Callable[[], T]) -> T:
    """Act once per request id, as the real services' idempotency ledgers do: a repeat with the same content
    gets the first answer, a repeat with other content is refused."""
    digest = hashlib.sha256(content.encode()).hexdigest()
    if request_id in answers:
        first_digest, answer = answers[request_id]
        if first_digest != digest:
            raise InvalidArgument(
                "request_id was already used for a different request",
                reason="REQUEST_ID_REUSED",
                fields={"request_id": "must be new for each different request"},
            )
        return answer
    answer = act()
    answers[request_id] = (digest, answer)
    return answer
