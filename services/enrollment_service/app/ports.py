"""What the enrollment use cases need from the CA and the OTP service, as small protocols (adapters: gRPC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


@dataclass(frozen=True)
class IssuedCertificate:
    """A customer certificate the CA signed for an enrollment."""

    serial_number: str
    fingerprint_sha256: str
    certificate_pem: str
    chain_pem: str


class CertificateStatus(Enum):
    """The CA's answer for a serial."""

    GOOD = "GOOD"
    REVOKED = "REVOKED"
    UNKNOWN = "UNKNOWN"


class RevocationReason(Enum):
    """The RFC 5280 reason the enrollment gives when it revokes a customer certificate."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"


class CertificateAuthority(Protocol):
    """Issues customer certificates and reports their status."""

    async def issue_customer_certificate(
        self, *, request_id: str, csr_pem: str, user_id: str, company_name: str, user_name: str, login_id: str
    ) -> IssuedCertificate: ...

    async def status(self, serial_number: str) -> CertificateStatus: ...

    async def customer_ca_pem(self) -> bytes:
        """Return the customer CA's certificate (PEM), which every customer certificate chains to."""
        ...

    async def revoke(self, *, serial_number: str, reason: RevocationReason, request_id: str) -> None:
        """Revoke a customer certificate; revoking a revoked one again changes nothing."""
        ...

    async def active_certificates(self, subject_id: str) -> list[str]:
        """Return the serial numbers of a user's certificates that are still active."""
        ...

    async def certificate(self, serial_number: str) -> CertificateView:
        """Return a customer certificate as the CA holds it (PEM and state)."""
        ...

    async def renew(self, *, request_id: str, serial_number: str, csr_pem: str) -> IssuedCertificate:
        """Issue a new certificate for the identity of an existing one, from a CSR for a new key."""
        ...

    async def revoke_superseded(self, *, request_id: str, serial_number: str) -> None:
        """Revoke a renewed certificate as superseded (done when it is already revoked)."""
        ...

    async def revoke_subject(self, *, request_id: str, user_id: str, reason: str) -> int:
        """Revoke every active certificate of a user (a lost PC) with an RFC 5280 reason name; return how many."""
        ...


@dataclass(frozen=True)
class CertificateView:
    """A certificate as the CA holds it: its PEM and whether it is active."""

    serial_number: str
    certificate_pem: str
    active: bool


@dataclass(frozen=True)
class PendingToken:
    """A token created in step 7, with the IDs the app will enter."""

    token_id: str
    service_id: str
    app_user_id: str


@dataclass(frozen=True)
class AppActivation:
    """The once-only answer of step 8; `secret` is the seed."""

    token_id: str
    secret: str = field(repr=False)
    otpauth_uri: str = field(repr=False)
    algorithm: str
    digits: int
    period: int
    activation_id: str


class TokenService(Protocol):
    """The OTP service as the enrollment uses it."""

    async def create_token(
        self, *, request_id: str, user_id: str, delivery_email: str, usage_start_password: str
    ) -> PendingToken: ...

    async def activate(
        self, *, request_id: str, service_id: str, app_user_id: str, usage_start_password: str, consent: bool
    ) -> AppActivation: ...

    async def confirm_registration(
        self, *, request_id: str, service_id: str, app_user_id: str, activation_id: str
    ) -> str: ...

    async def verify(self, *, request_id: str, token_id: str, code: str) -> None: ...

    async def token_state(self, token_id: str) -> TokenState:
        """Return the state of a token as the OTP service reports it."""
        ...

    async def revoke_token(self, *, request_id: str, token_id: str) -> None:
        """Revoke a token for good (its seed erased); revoking a revoked one again changes nothing."""
        ...

    async def live_token_ids(self, user_id: str) -> list[str]:
        """Return the ids of a user's tokens that are not revoked yet."""
        ...

    async def reissue(
        self, *, request_id: str, token_id: str, delivery_email: str, usage_start_password: str
    ) -> PendingToken:
        """Revoke a token and create a new pending one for the same user (a new phone)."""
        ...

    async def disable(self, *, request_id: str, token_id: str) -> None:
        """Stop a token from verifying (a lost phone)."""
        ...


class TokenState(Enum):
    """A user's token as the front-end boundary shows it."""

    NONE = "NONE"
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    LOCKED = "LOCKED"
    DISABLED = "DISABLED"


class TokenSigner(Protocol):
    """Signs and verifies kagi's JWTs (access and confirmation tokens) and publishes the JWKS."""

    issuer: str

    def sign(self, claims: dict[str, Any]) -> str: ...

    def verify(self, token: str) -> dict[str, Any]: ...

    def jwks_json(self) -> str: ...
