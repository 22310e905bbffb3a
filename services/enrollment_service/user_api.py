"""The front-end boundary's gRPC API (kagi.enrollment.v1.UserService): translates messages to use-case calls."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kagi.enrollment.v1 import user_pb2 as upb
from kagi.enrollment.v1 import user_pb2_grpc
from kagi.errors import InvalidArgument
from kagi.idempotency import IdempotencyLedger, check_request_id
from kagi.runtime.grpc_idempotency import IdempotentApi
from kagi.runtime.grpc_server import ServiceBinding, current_caller
from kagi.runtime.identity import Role, allow
from services.enrollment_service.api import relayed_certificate
from services.enrollment_service.app.credentials import CredentialLifecycle
from services.enrollment_service.app.ports import TokenState
from services.enrollment_service.app.users import UserSessions, UserView
from services.enrollment_service.domain.client_certificates import ClientCertificate
from services.enrollment_service.domain.users import LockReason, PasswordKind, User, UserState

USER_SERVICE_NAME = "kagi.enrollment.v1.UserService"

# A bank front-end gets exactly this service: each call bound to the customer's proof. What mints or replaces a
# credential is never here (DESIGN.md sections 3 and 6). Operators read, list, lock and unlock; they never
# check a customer's password or code.
_CUSTOMER = allow(Role.GATEWAY, Role.FRONTEND)
USER_ALLOWED_ROLES = {
    "Authenticate": _CUSTOMER,
    "VerifyOtp": _CUSTOMER,
    "ConfirmTransaction": _CUSTOMER,
    "EndSession": _CUSTOMER,
    "GetJwks": allow(Role.GATEWAY, Role.FRONTEND, Role.OPERATOR),
    "GetUser": allow(Role.GATEWAY, Role.FRONTEND, Role.OPERATOR),
    "ListUsers": allow(Role.OPERATOR),
    "LockUser": allow(Role.OPERATOR),
    "UnlockUser": allow(Role.OPERATOR),
    "ChangePassword": _CUSTOMER,
    # What mints or replaces a credential is the gateway's alone: it proves possession of the certificate.
    "ResetPassword": allow(Role.GATEWAY),
    "RenewCertificate": allow(Role.GATEWAY),
    "ReissueToken": allow(Role.GATEWAY),
    "IssuePasswordReset": allow(Role.OPERATOR),
    "AllowTokenReissue": allow(Role.OPERATOR),
    "DisableUserToken": allow(Role.OPERATOR),
}


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


_USER_STATE_PB = {
    UserState.SETTING_UP: upb.User.STATE_SETTING_UP,
    UserState.ACTIVE: upb.User.STATE_ACTIVE,
    UserState.LOCKED: upb.User.STATE_LOCKED,
}
_LOCK_REASON_PB = {
    LockReason.NONE: upb.User.LOCK_REASON_UNSPECIFIED,
    LockReason.LOGIN_PASSWORD: upb.User.LOCK_REASON_LOGIN_PASSWORD,
    LockReason.CONFIRMATION_PASSWORD: upb.User.LOCK_REASON_CONFIRMATION_PASSWORD,
    LockReason.OPERATOR: upb.User.LOCK_REASON_OPERATOR,
}
_TOKEN_STATE_PB = {
    TokenState.NONE: upb.User.TOKEN_STATE_NONE,
    TokenState.PENDING: upb.User.TOKEN_STATE_PENDING,
    TokenState.ACTIVE: upb.User.TOKEN_STATE_ACTIVE,
    TokenState.LOCKED: upb.User.TOKEN_STATE_LOCKED,
    TokenState.DISABLED: upb.User.TOKEN_STATE_DISABLED,
}


def user_message(view: UserView) -> upb.User:
    """Render a user for the API (never a password hash)."""
    user = view.user
    return upb.User(
        user_id=user.user_id,
        login_id=user.login_id,
        user_name=user.user_name,
        company_name=user.company_name,
        state=_USER_STATE_PB[user.state],
        token_state=_TOKEN_STATE_PB[view.token_state],
        lock_reason=_LOCK_REASON_PB[user.lock_reason],
        application_id=user.application_id,
        enrollment_id=user.enrollment_id,
        token_id=user.token_id,
        create_time=_timestamp(user.created_at),
    )


def _actor() -> str:
    caller = current_caller()
    return "plaintext-dev" if caller.plaintext else caller.spiffe_id or "anonymous"


def _relaying_caller() -> bool:
    caller = current_caller()
    return caller.plaintext or caller.role is Role.GATEWAY


def _credential_subject(certificate: ClientCertificate, access_token: str) -> str:
    # The ledger hashes the subject: a high-entropy access token is safe in it, and a replay then needs the
    # same certificate and the same token as the call that acted.
    return f"{certificate.fingerprint_sha256.lower()}/{access_token}"


def _session_certificate() -> ClientCertificate | None:
    # The gateway relays the certificate of every customer request: a token must be used with its own.
    return relayed_certificate() if _relaying_caller() else None


class UserApi(IdempotentApi, user_pb2_grpc.UserServiceServicer):
    """The gRPC face of UserSessions."""

    def __init__(self, sessions: UserSessions, lifecycle: CredentialLifecycle, ledger: IdempotencyLedger) -> None:
        self._sessions = sessions
        self._lifecycle = lifecycle
        self._ledger = ledger

    async def _customer_certificate(self, pem: str) -> ClientCertificate:
        if pem:
            return await self._sessions.certificate_from_pem(pem)
        if _relaying_caller():
            return relayed_certificate()
        raise InvalidArgument(
            "a client certificate is required",
            fields={"client_certificate_pem": "required: the certificate the customer presented, PEM"},
        )

    async def Authenticate(
        self, request: upb.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> upb.AuthenticateResponse:
        certificate = await self._customer_certificate(request.client_certificate_pem)
        view, session = await self._sessions.authenticate(
            certificate, request.login_id, request.login_password, actor=_actor()
        )
        return upb.AuthenticateResponse(
            user=user_message(view),
            access_token=session.access_token,
            token_type="Bearer",  # noqa: S106 - the RFC 6750 token type, not a secret
            expires_in=session.expires_in,
        )

    async def VerifyOtp(
        self, request: upb.VerifyOtpRequest, context: grpc.aio.ServicerContext
    ) -> upb.VerifyOtpResponse:
        if request.purpose not in (upb.OTP_PURPOSE_STEP_UP, upb.OTP_PURPOSE_CHECK):
            raise InvalidArgument(
                "the purpose is required", fields={"purpose": "OTP_PURPOSE_STEP_UP or OTP_PURPOSE_CHECK"}
            )
        check_request_id(request.request_id)
        session = await self._sessions.verify_otp(
            request.user_id,
            request.otp,
            request_id=request.request_id,
            step_up=request.purpose == upb.OTP_PURPOSE_STEP_UP,
            access_token=request.access_token,
            certificate=_session_certificate(),
            actor=_actor(),
        )
        if session is None:
            return upb.VerifyOtpResponse()
        return upb.VerifyOtpResponse(access_token=session.access_token, expires_in=session.expires_in)

    async def ConfirmTransaction(
        self, request: upb.ConfirmTransactionRequest, context: grpc.aio.ServicerContext
    ) -> upb.ConfirmTransactionResponse:
        certificate = _session_certificate()
        if certificate is not None and not request.access_token:
            raise InvalidArgument("the access token is required", fields={"access_token": "required"})
        confirmation = await self._sessions.confirm(
            request.user_id,
            transaction_id=request.transaction_id,
            summary=request.transaction_summary,
            confirmation_password=request.confirmation_password,
            otp=request.otp,
            access_token=request.access_token,
            certificate=certificate,
            actor=_actor(),
        )
        return upb.ConfirmTransactionResponse(
            confirmation=upb.Confirmation(
                confirmation_id=confirmation.confirmation_id,
                transaction_id=confirmation.transaction_id,
                txn_digest=confirmation.txn_digest,
                confirm_time=_timestamp(confirmation.confirmed_at),
                methods=list(confirmation.methods),
            ),
            confirmation_token=confirmation.token,
        )

    async def EndSession(
        self, request: upb.EndSessionRequest, context: grpc.aio.ServicerContext
    ) -> upb.EndSessionResponse:
        await self._sessions.end_session(request.access_token, actor=_actor(), certificate=_session_certificate())
        return upb.EndSessionResponse()

    async def GetJwks(self, request: upb.GetJwksRequest, context: grpc.aio.ServicerContext) -> upb.GetJwksResponse:
        return upb.GetJwksResponse(jwks_json=self._sessions.jwks_json())

    async def GetUser(self, request: upb.GetUserRequest, context: grpc.aio.ServicerContext) -> upb.GetUserResponse:
        return upb.GetUserResponse(user=user_message(await self._sessions.get(request.user_id)))

    async def ListUsers(
        self, request: upb.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> upb.ListUsersResponse:
        views, token = await self._sessions.list(
            request.page_size, request.page_token, company=request.company_name, account=request.account
        )
        return upb.ListUsersResponse(users=[user_message(v) for v in views], next_page_token=token)

    async def LockUser(self, request: upb.LockUserRequest, context: grpc.aio.ServicerContext) -> upb.LockUserResponse:
        async def act() -> upb.LockUserResponse:
            return upb.LockUserResponse(user=user_message(await self._sessions.lock(request.user_id, actor=_actor())))

        return await self._once(request, act, upb.LockUserResponse, subject=request.user_id)

    async def UnlockUser(
        self, request: upb.UnlockUserRequest, context: grpc.aio.ServicerContext
    ) -> upb.UnlockUserResponse:
        async def act() -> upb.UnlockUserResponse:
            view = await self._sessions.unlock(request.user_id, actor=_actor())
            return upb.UnlockUserResponse(user=user_message(view))

        return await self._once(request, act, upb.UnlockUserResponse, subject=request.user_id)

    # -- the credentials' lifecycle ------------------------------------------------------------------------

    async def ChangePassword(
        self, request: upb.ChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> upb.ChangePasswordResponse:
        certificate = _session_certificate()
        if certificate is not None and not request.access_token:
            raise InvalidArgument("the access token is required", fields={"access_token": "required"})
        user = await self._lifecycle.change_password(
            request.user_id,
            access_token=request.access_token,
            certificate=certificate,
            kind=_password_kind(request.kind),
            current_password=request.current_password,
            new_password=request.new_password,
            new_password_confirmation=request.new_password_confirmation,
            actor=_actor(),
        )
        return upb.ChangePasswordResponse(user=await self._view(user))

    async def IssuePasswordReset(
        self, request: upb.IssuePasswordResetRequest, context: grpc.aio.ServicerContext
    ) -> upb.IssuePasswordResetResponse:
        kind = _password_kind(request.kind)

        async def act() -> upb.IssuePasswordResetResponse:
            notice = await self._lifecycle.issue_reset(request.user_id, kind, actor=_actor())
            return upb.IssuePasswordResetResponse(
                user=await self._view(notice.user),
                kind=request.kind,
                temporary_password=notice.temporary_password,
                expire_time=_timestamp(notice.expires_at),
            )

        return await self._once(
            request,
            act,
            upb.IssuePasswordResetResponse,
            secret_response=("temporary_password",),
            subject=request.user_id,
        )

    async def ResetPassword(
        self, request: upb.ResetPasswordRequest, context: grpc.aio.ServicerContext
    ) -> upb.ResetPasswordResponse:
        user = await self._lifecycle.reset_password(
            relayed_certificate(),
            kind=_password_kind(request.kind),
            temporary=request.temporary_password,
            new_password=request.new_password,
            new_password_confirmation=request.new_password_confirmation,
            actor=_actor(),
        )
        return upb.ResetPasswordResponse(user=await self._view(user))

    async def RenewCertificate(
        self, request: upb.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> upb.RenewCertificateResponse:
        certificate = relayed_certificate()

        async def act() -> upb.RenewCertificateResponse:
            renewed = await self._lifecycle.renew_certificate(
                access_token=request.access_token,
                certificate=certificate,
                csr_pem=request.csr_pem,
                login_password=request.login_password,
                request_id=request.request_id,
                actor=_actor(),
            )
            return upb.RenewCertificateResponse(
                certificate_pem=renewed.certificate_pem,
                chain_pem=renewed.chain_pem,
                serial_number=renewed.serial_number,
            )

        # A retry with the request id answers the certificate the first call issued (a lost answer).
        # Scoped by the relayed certificate and the access token: a replay is for the holder of both only.
        return await self._once(
            request,
            act,
            upb.RenewCertificateResponse,
            secret_request=("access_token", "login_password"),
            subject=_credential_subject(certificate, request.access_token),
        )

    async def ReissueToken(
        self, request: upb.ReissueTokenRequest, context: grpc.aio.ServicerContext
    ) -> upb.ReissueTokenResponse:
        certificate = relayed_certificate()

        async def act() -> upb.ReissueTokenResponse:
            user = await self._lifecycle.reissue_token(
                certificate,
                access_token=request.access_token,
                login_id=request.login_id,
                login_password=request.login_password,
                confirmation_password=request.confirmation_password,
                entries={
                    "mobile_email": request.mobile_email,
                    "mobile_email_confirmation": request.mobile_email_confirmation,
                    "usage_start_password": request.usage_start_password,
                    "usage_start_password_confirmation": request.usage_start_password_confirmation,
                },
                request_id=request.request_id,
                actor=_actor(),
            )
            return upb.ReissueTokenResponse(user=await self._view(user))

        secrets = ("access_token", "login_password", "confirmation_password", "usage_start_password")
        return await self._once(
            request,
            act,
            upb.ReissueTokenResponse,
            secret_request=(*secrets, "usage_start_password_confirmation"),
            subject=_credential_subject(certificate, request.access_token),
        )

    async def AllowTokenReissue(
        self, request: upb.AllowTokenReissueRequest, context: grpc.aio.ServicerContext
    ) -> upb.AllowTokenReissueResponse:
        async def act() -> upb.AllowTokenReissueResponse:
            user = await self._lifecycle.allow_token_reissue(request.user_id, actor=_actor())
            return upb.AllowTokenReissueResponse(user=await self._view(user))

        return await self._once(request, act, upb.AllowTokenReissueResponse, subject=request.user_id)

    async def DisableUserToken(
        self, request: upb.DisableUserTokenRequest, context: grpc.aio.ServicerContext
    ) -> upb.DisableUserTokenResponse:
        async def act() -> upb.DisableUserTokenResponse:
            user = await self._lifecycle.disable_token(request.user_id, request.reason, actor=_actor())
            return upb.DisableUserTokenResponse(user=await self._view(user))

        return await self._once(request, act, upb.DisableUserTokenResponse, subject=request.user_id)

    async def _view(self, user: User) -> upb.User:
        return user_message(await self._sessions.view(user))


_PASSWORD_KINDS = {
    upb.PASSWORD_KIND_LOGIN: PasswordKind.LOGIN,
    upb.PASSWORD_KIND_CONFIRMATION: PasswordKind.CONFIRMATION,
}


def _password_kind(value: int) -> PasswordKind:
    try:
        return _PASSWORD_KINDS[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(
            "which password is required", fields={"kind": "PASSWORD_KIND_LOGIN or PASSWORD_KIND_CONFIRMATION"}
        ) from None


def user_binding(api: UserApi) -> ServiceBinding:
    """Register UserService on a server with its per-method allow-list."""
    return ServiceBinding(
        name=USER_SERVICE_NAME,
        register=lambda server: user_pb2_grpc.add_UserServiceServicer_to_server(api, server),
        allowed_roles=USER_ALLOWED_ROLES,
    )
