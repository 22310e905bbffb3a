"""gRPC clients of the CA and the OTP service, as the enrollment's ports see them. Errors the services raise
come back as the same domain errors (reason and fields kept). Each call carries the request id itself
(`request_metadata`): the channels have no interceptor (see `kagi.runtime.grpc_client.open_channel`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.common.v1 import common_pb2
from kagi.errors import FailedPrecondition
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime.grpc_client import error_from_rpc, request_metadata
from kagi.runtime.metrics import metered
from services.enrollment_service.app.ports import (
    AppActivation,
    CertificateStatus,
    CertificateView,
    IssuedCertificate,
    PendingToken,
    RevocationReason,
    TokenState,
)

CALL_TIMEOUT = 15.0
_STATUS = {
    ca_pb2.GetCertificateStatusResponse.STATUS_GOOD: CertificateStatus.GOOD,
    ca_pb2.GetCertificateStatusResponse.STATUS_REVOKED: CertificateStatus.REVOKED,
}
_REVOCATION_REASONS = {
    "unspecified": ca_pb2.REVOCATION_REASON_UNSPECIFIED,
    "keyCompromise": ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
    "affiliationChanged": ca_pb2.REVOCATION_REASON_AFFILIATION_CHANGED,
    "superseded": ca_pb2.REVOCATION_REASON_SUPERSEDED,
    "cessationOfOperation": ca_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION,
}
_TOKEN_STATE = {
    otp_pb2.Token.STATE_PENDING_ACTIVATION: TokenState.PENDING,
    otp_pb2.Token.STATE_ACTIVATED: TokenState.PENDING,
    otp_pb2.Token.STATE_REGISTERED: TokenState.PENDING,
    otp_pb2.Token.STATE_ACTIVE: TokenState.ACTIVE,
    otp_pb2.Token.STATE_LOCKED: TokenState.LOCKED,
    otp_pb2.Token.STATE_ACTIVATION_LOCKED: TokenState.LOCKED,
}
_REVOCATION_REASON = {
    RevocationReason.UNSPECIFIED: ca_pb2.REVOCATION_REASON_UNSPECIFIED,
    RevocationReason.KEY_COMPROMISE: ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
    RevocationReason.SUPERSEDED: ca_pb2.REVOCATION_REASON_SUPERSEDED,
    RevocationReason.CESSATION_OF_OPERATION: ca_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION,
}
_LIST_PAGE = 100
_ALGORITHM = {
    common_pb2.OTP_ALGORITHM_SHA1: "SHA1",
    common_pb2.OTP_ALGORITHM_SHA256: "SHA256",
    common_pb2.OTP_ALGORITHM_SHA512: "SHA512",
}


@asynccontextmanager
async def _translated(rename: dict[str, str] | None = None) -> AsyncIterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        error = error_from_rpc(exc)
        if rename:
            error.fields = {rename.get(k, k): v for k, v in error.fields.items()}
        raise error from None


class GrpcCertificateAuthority:
    """Calls the CA service with the enrollment's identity."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = ca_pb2_grpc.CertificateAuthorityServiceStub(metered(channel))
        self._customer_ca: bytes | None = None

    async def issue_customer_certificate(
        self, *, request_id: str, csr_pem: str, user_id: str, company_name: str, user_name: str, login_id: str
    ) -> IssuedCertificate:
        """Ask for a customer certificate bound to the user."""
        request = ca_pb2.IssueCertificateRequest(
            request_id=request_id,
            csr=csr_pem.encode(),
            profile="customer",
            customer=ca_pb2.CustomerIdentity(
                user_id=user_id, company_name=company_name, user_name=user_name, login_id=login_id
            ),
        )
        async with _translated({"csr": "csr_pem"}):
            response = await self._stub.IssueCertificate(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        certificate = response.certificate
        return IssuedCertificate(
            serial_number=certificate.serial_number,
            fingerprint_sha256=certificate.fingerprint_sha256,
            certificate_pem=certificate.certificate_pem,
            chain_pem=response.chain_pem,
        )

    async def status(self, serial_number: str) -> CertificateStatus:
        """Ask the CA whether a customer certificate is good, revoked or unknown."""
        request = ca_pb2.GetCertificateStatusRequest(serial_number=serial_number, issuer=ca_pb2.ISSUER_CUSTOMER)
        async with _translated():
            response = await self._stub.GetCertificateStatus(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        return _STATUS.get(response.status, CertificateStatus.UNKNOWN)

    async def certificate(self, serial_number: str) -> CertificateView:
        """Read a certificate's PEM and state at the CA."""
        async with _translated():
            response = await self._stub.GetCertificate(
                ca_pb2.GetCertificateRequest(serial_number=serial_number),
                timeout=CALL_TIMEOUT,
                metadata=request_metadata(),
            )
        certificate = response.certificate
        return CertificateView(
            serial_number=certificate.serial_number,
            certificate_pem=certificate.certificate_pem,
            active=certificate.state == ca_pb2.Certificate.STATE_ACTIVE,
        )

    async def renew(self, *, request_id: str, serial_number: str, csr_pem: str) -> IssuedCertificate:
        """Ask for a certificate with the identity of `serial_number`, for the CSR's new key."""
        request = ca_pb2.RenewCertificateRequest(
            request_id=request_id, serial_number=serial_number, csr=csr_pem.encode(), revoke_previous=False
        )
        async with _translated({"csr": "csr_pem"}):
            response = await self._stub.RenewCertificate(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        certificate = response.certificate
        return IssuedCertificate(
            serial_number=certificate.serial_number,
            fingerprint_sha256=certificate.fingerprint_sha256,
            certificate_pem=certificate.certificate_pem,
            chain_pem=response.chain_pem,
        )

    async def revoke_superseded(self, *, request_id: str, serial_number: str) -> None:
        """Revoke a renewed certificate (reason superseded); an already revoked one is done."""
        request = ca_pb2.RevokeCertificateRequest(
            request_id=request_id, serial_number=serial_number, reason=ca_pb2.REVOCATION_REASON_SUPERSEDED
        )
        try:
            async with _translated():
                await self._stub.RevokeCertificate(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        except FailedPrecondition as exc:
            if exc.reason != "ALREADY_REVOKED":
                raise

    async def revoke_subject(self, *, request_id: str, user_id: str, reason: str) -> int:
        """Revoke every active certificate of the user at the CA (reason by RFC 5280 name)."""
        request = ca_pb2.RevokeSubjectCertificatesRequest(
            request_id=request_id, subject_id=user_id, reason=_REVOCATION_REASONS[reason]
        )
        async with _translated():
            response = await self._stub.RevokeSubjectCertificates(
                request, timeout=CALL_TIMEOUT, metadata=request_metadata()
            )
        return len(response.certificates)

    async def revoke(self, *, serial_number: str, reason: RevocationReason, request_id: str) -> None:
        """Revoke a customer certificate with `reason`; an already revoked one is done (idempotent)."""
        request = ca_pb2.RevokeCertificateRequest(
            request_id=request_id, serial_number=serial_number, reason=_REVOCATION_REASON[reason]
        )
        try:
            async with _translated():
                await self._stub.RevokeCertificate(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        except FailedPrecondition as exc:
            if exc.reason != "ALREADY_REVOKED":
                raise

    async def active_certificates(self, subject_id: str) -> list[str]:
        """List the serial numbers of a user's certificates still active at the CA."""
        serials: list[str] = []
        token = ""
        while True:
            request = ca_pb2.ListCertificatesRequest(
                subject_id=subject_id, state=ca_pb2.Certificate.STATE_ACTIVE, page_size=_LIST_PAGE, page_token=token
            )
            async with _translated():
                page = await self._stub.ListCertificates(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
            serials += [c.serial_number for c in page.certificates if c.state == ca_pb2.Certificate.STATE_ACTIVE]
            token = page.next_page_token
            if not token:
                return serials

    async def customer_ca_pem(self) -> bytes:
        """Ask the CA for the customer CA's certificate once, then answers from memory."""
        if self._customer_ca is None:
            async with _translated():
                response = await self._stub.GetCaCertificates(
                    ca_pb2.GetCaCertificatesRequest(), timeout=CALL_TIMEOUT, metadata=request_metadata()
                )
            self._customer_ca = response.customer_ca_pem.encode()
        return self._customer_ca


class GrpcTokenService:
    """Calls the OTP service with the enrollment's identity."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = otp_pb2_grpc.OtpServiceStub(metered(channel))

    async def create_token(
        self, *, request_id: str, user_id: str, delivery_email: str, usage_start_password: str
    ) -> PendingToken:
        """Create the pending token of step 7."""
        request = otp_pb2.CreateTokenRequest(
            request_id=request_id,
            user_id=user_id,
            delivery_email=delivery_email,
            usage_start_password=usage_start_password,
        )
        async with _translated({"delivery_email": "mobile_email"}):
            response = await self._stub.CreateToken(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        token = response.token
        return PendingToken(token.token_id, token.service_id, token.app_user_id)

    async def activate(
        self, *, request_id: str, service_id: str, app_user_id: str, usage_start_password: str, consent: bool
    ) -> AppActivation:
        """Deliver the seed to the app (step 8)."""
        request = otp_pb2.ActivateTokenRequest(
            request_id=request_id,
            service_id=service_id,
            app_user_id=app_user_id,
            usage_start_password=usage_start_password,
            consent=consent,
        )
        async with _translated({"app_user_id": "user_id", "consent": "agreed"}):
            response = await self._stub.ActivateToken(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        activation = response.activation
        return AppActivation(
            token_id=response.token.token_id,
            secret=activation.secret,
            otpauth_uri=activation.otpauth_uri,
            algorithm=_ALGORITHM.get(activation.algorithm, "SHA1"),
            digits=activation.digits,
            period=activation.period,
            activation_id=activation.activation_id,
        )

    async def confirm_registration(
        self, *, request_id: str, service_id: str, app_user_id: str, activation_id: str
    ) -> str:
        """Record that the app stored the seed (step 9); return the token id."""
        request = otp_pb2.ConfirmRegistrationRequest(
            request_id=request_id, service_id=service_id, app_user_id=app_user_id, activation_id=activation_id
        )
        async with _translated({"app_user_id": "user_id"}):
            response = await self._stub.ConfirmRegistration(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        token_id: str = response.token.token_id
        return token_id

    async def verify(self, *, request_id: str, token_id: str, code: str) -> None:
        """Check a code; a wrong, replayed or expired code raises the OTP service's error."""
        request = otp_pb2.VerifyCodeRequest(request_id=request_id, token_id=token_id, code=code)
        async with _translated({"code": "otp"}):
            await self._stub.VerifyCode(request, timeout=CALL_TIMEOUT, metadata=request_metadata())

    async def token_state(self, token_id: str) -> TokenState:
        """Read a token's state (disabled, revoked and expired all show as DISABLED)."""
        if not token_id:
            return TokenState.NONE
        async with _translated():
            response = await self._stub.GetToken(
                otp_pb2.GetTokenRequest(token_id=token_id), timeout=CALL_TIMEOUT, metadata=request_metadata()
            )
        return _TOKEN_STATE.get(response.token.state, TokenState.DISABLED)

    async def reissue(
        self, *, request_id: str, token_id: str, delivery_email: str, usage_start_password: str
    ) -> PendingToken:
        """Revoke the token and create a new pending one (a new phone)."""
        request = otp_pb2.ReissueTokenRequest(
            request_id=request_id,
            token_id=token_id,
            delivery_email=delivery_email,
            usage_start_password=usage_start_password,
        )
        async with _translated({"delivery_email": "mobile_email"}):
            response = await self._stub.ReissueToken(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
        token = response.token
        return PendingToken(token.token_id, token.service_id, token.app_user_id)

    async def disable(self, *, request_id: str, token_id: str) -> None:
        """Stop the token from verifying (a lost phone)."""
        request = otp_pb2.DisableTokenRequest(request_id=request_id, token_id=token_id)
        async with _translated():
            await self._stub.DisableToken(request, timeout=CALL_TIMEOUT, metadata=request_metadata())

    async def revoke_token(self, *, request_id: str, token_id: str) -> None:
        """End a token for good (RevokeToken); revoking a revoked token again changes nothing."""
        request = otp_pb2.RevokeTokenRequest(request_id=request_id, token_id=token_id)
        async with _translated():
            await self._stub.RevokeToken(request, timeout=CALL_TIMEOUT, metadata=request_metadata())

    async def live_token_ids(self, user_id: str) -> list[str]:
        """List the ids of a user's tokens that are not revoked yet."""
        found: list[str] = []
        token = ""
        while True:
            request = otp_pb2.ListTokensRequest(user_id=user_id, page_size=_LIST_PAGE, page_token=token)
            async with _translated():
                page = await self._stub.ListTokens(request, timeout=CALL_TIMEOUT, metadata=request_metadata())
            found += [t.token_id for t in page.tokens if t.state != otp_pb2.Token.STATE_REVOKED]
            token = page.next_page_token
            if not token:
                return found
