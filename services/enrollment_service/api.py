"""The enrollment gRPC API: translates messages to use-case calls and back, and nothing more."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kagi.common.v1 import common_pb2
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.enrollment.v1 import enrollment_pb2_grpc
from kagi.errors import InvalidArgument, KagiError
from kagi.idempotency import IdempotencyLedger
from kagi.runtime.grpc_idempotency import IdempotentApi
from kagi.runtime.grpc_server import ServiceBinding, relayed_client_address, relayed_client_certificate
from kagi.runtime.identity import Role, allow
from kagi.runtime.metrics import enrollment_step_duration, enrollment_steps, enrollments_entered
from services.enrollment_service.app.ports import AppActivation, IssuedCertificate
from services.enrollment_service.app.use_cases import EnrollmentService, Notice, activation_already_delivered
from services.enrollment_service.domain.client_certificates import ClientCertificate
from services.enrollment_service.domain.records import (
    AccountType,
    Application,
    ApplicationState,
    Enrollment,
    account_key,
)
from services.enrollment_service.domain.states import Kind

SERVICE_NAME = "kagi.enrollment.v1.EnrollmentService"
# The setup steps are the customer's, reached only through the kagi gateway, which proves possession of the
# client certificate itself; a bank front-end has UserService and nothing here (DESIGN.md section 3).
ALLOWED_ROLES = {
    "RegisterApplication": allow(Role.OPERATOR),
    "UnlockApplication": allow(Role.OPERATOR),
    "ListApplications": allow(Role.OPERATOR),
    "ReopenEnrollment": allow(Role.OPERATOR),
    "ReissueCertificate": allow(Role.OPERATOR),
    "GetEnrollment": allow(Role.GATEWAY, Role.OPERATOR),
    "GetCurrentEnrollment": allow(Role.GATEWAY),
    **dict.fromkeys(
        (
            "VerifyNotice",
            "SubmitProfile",
            "ConfirmRegistration",
            "IssueCertificate",
            "CertificateLogin",
            "PasswordLogin",
            "RequestToken",
            "ActivateApp",
            "RegisterApp",
            "VerifyFirstCode",
            "CancelEnrollment",
        ),
        allow(Role.GATEWAY),
    ),
}

_ACCOUNT_TYPES = {pb.ACCOUNT_TYPE_ORDINARY: AccountType.ORDINARY, pb.ACCOUNT_TYPE_CURRENT: AccountType.CURRENT}
_ACCOUNT_TYPE_PB = {v: k for k, v in _ACCOUNT_TYPES.items()}
_APPLICATION_STATE_PB = {
    ApplicationState.OPEN: pb.Application.STATE_OPEN,
    ApplicationState.USED: pb.Application.STATE_USED,
    ApplicationState.LOCKED: pb.Application.STATE_LOCKED,
    ApplicationState.EXPIRED: pb.Application.STATE_EXPIRED,
}
_KIND_PB = {Kind.SETUP: pb.ENROLLMENT_KIND_SETUP, Kind.REISSUE: pb.ENROLLMENT_KIND_REISSUE}
_REISSUE_REASONS = ("keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "unspecified")
_ALGORITHM_PB = {
    "SHA1": common_pb2.OTP_ALGORITHM_SHA1,
    "SHA256": common_pb2.OTP_ALGORITHM_SHA256,
    "SHA512": common_pb2.OTP_ALGORITHM_SHA512,
}

Resp = TypeVar("Resp", bound=Message)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _account_type(value: int) -> AccountType:
    try:
        return _ACCOUNT_TYPES[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(
            "invalid account type", fields={"account_type": "must be ORDINARY (普通) or CURRENT (当座)"}
        ) from None


def enrollment_message(enrollment: Enrollment, now: float) -> pb.Enrollment:
    """Render an enrollment for the API (expiry applied, no secret)."""
    current = enrollment.current(now)
    step = current.next_step
    return pb.Enrollment(
        enrollment_id=current.enrollment_id,
        application_id=current.application_id,
        state=pb.Enrollment.State.Value(f"STATE_{current.state.value}"),
        next_step=pb.Step.Value(f"STEP_{step.name}") if step is not None else pb.STEP_UNSPECIFIED,
        create_time=_timestamp(current.created_at),
        update_time=_timestamp(current.updated_at),
        expire_time=_timestamp(current.expires_at),
        user_id=current.user_id,
        certificate_serial_number=current.certificate_serial,
        token_id=current.token_id,
        kind=_KIND_PB[current.kind],
    )


def application_message(application: Application, now: float) -> pb.Application:
    """Render an application for the API (never its password hashes)."""
    return pb.Application(
        application_id=application.application_id,
        company_name=application.company_name,
        branch_code=application.branch_code,
        account_type=_ACCOUNT_TYPE_PB[application.account_type],
        account_number=application.account_number,
        state=_APPLICATION_STATE_PB[application.current_state(now)],
        create_time=_timestamp(application.created_at),
        expire_time=_timestamp(application.expires_at),
        kind=_KIND_PB[application.kind],
        user_id=application.user_id,
    )


def relayed_certificate() -> ClientCertificate:
    """Return the customer certificate the gateway verified and relayed for this call."""
    relayed = relayed_client_certificate()
    return ClientCertificate(relayed.serial_number, relayed.fingerprint_sha256)


def _certificate_subject(enrollment_id: str, certificate: ClientCertificate) -> str:
    return f"{enrollment_id}/{certificate.fingerprint_sha256.lower()}"


async def _already_delivered() -> None:
    # Step 8's secret goes out once: a replay (its answer lost) is told to ask for a new token, never answered
    # 200 without the secret. The usage-start password cannot be re-checked: the OTP service forgets its hash
    # on activation, and a fresh request for an activated token is refused the same way (ILLEGAL_TRANSITION).
    raise activation_already_delivered()


StepResponse = TypeVar("StepResponse", bound=Message)
StepMethod = Callable[["EnrollmentApi", Any, grpc.aio.ServicerContext], Awaitable[StepResponse]]


def _left_in(response: Message) -> str:
    """Return the state a step's answer leaves the enrollment in ("" when it names none)."""
    state = getattr(response, "state", None)
    if state is None and "enrollment" in response.DESCRIPTOR.fields_by_name and response.HasField("enrollment"):
        state = response.enrollment.state  # type: ignore[attr-defined]
    if not state:
        return ""
    return str(pb.Enrollment.State.Name(state)).removeprefix("STATE_")


def _step(method: StepMethod[StepResponse]) -> StepMethod[StepResponse]:
    """Time a setup step and count it by status, and by the state its answer leaves the enrollment in."""
    name = method.__name__

    @functools.wraps(method)
    async def timed(api: EnrollmentApi, request: Any, context: grpc.aio.ServicerContext) -> StepResponse:
        start = time.perf_counter()
        code = "INTERNAL"
        try:
            response = await method(api, request, context)
            code = "OK"
        except KagiError as exc:
            code = exc.kind.value
            raise
        finally:
            enrollment_step_duration.labels(name).observe(time.perf_counter() - start)
            enrollment_steps.labels(name, code).inc()
        state = _left_in(response)
        if state:
            enrollments_entered.labels(state).inc()
        return response

    return timed


class EnrollmentApi(IdempotentApi, enrollment_pb2_grpc.EnrollmentServiceServicer):
    """The gRPC face of EnrollmentService."""

    def __init__(self, service: EnrollmentService, ledger: IdempotencyLedger, now: Callable[[], float]) -> None:
        self._service = service
        self._ledger = ledger
        self._now = now

    @staticmethod
    async def _checked(check: Awaitable[object]) -> None:
        await check

    def _notice(self, notice: Notice) -> dict[str, Any]:
        """Return a notice's fields (the application and its temporary passwords, this once) for its answer."""
        return {
            "application": application_message(notice.application, self._now()),
            "temporary_login_password": notice.temporary_login_password,
            "temporary_confirmation_password": notice.temporary_confirmation_password,
        }

    async def RegisterApplication(
        self, request: pb.RegisterApplicationRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterApplicationResponse:
        async def act() -> pb.RegisterApplicationResponse:
            notice = await self._service.register_application(
                company_name=request.company_name,
                branch_code=request.branch_code,
                account_type=_account_type(request.account_type),
                account_number=request.account_number,
            )
            return pb.RegisterApplicationResponse(**self._notice(notice))

        return await self._once(
            request,
            act,
            pb.RegisterApplicationResponse,
            secret_response=("temporary_login_password", "temporary_confirmation_password"),
            subject=f"{request.branch_code}-{request.account_type}-{request.account_number}",
        )

    @_step
    async def VerifyNotice(
        self, request: pb.VerifyNoticeRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyNoticeResponse:
        account_type = _account_type(request.account_type)
        entries = {
            "branch_code": request.branch_code,
            "account_type": account_type,
            "account_number": request.account_number,
            "temporary_login_password": request.temporary_login_password,
            "temporary_confirmation_password": request.temporary_confirmation_password,
            "client_address": relayed_client_address(),
        }

        def answer(granted: tuple[Enrollment, str]) -> pb.VerifyNoticeResponse:
            enrollment, session = granted
            return pb.VerifyNoticeResponse(
                enrollment=enrollment_message(enrollment, self._now()), session_token=session
            )

        return await self._once_in_commit(
            request,
            lambda: self._service.verify_notice(**entries),  # type: ignore[arg-type]
            answer,
            pb.VerifyNoticeResponse,
            secret_request=("temporary_login_password", "temporary_confirmation_password"),
            secret_response=("session_token",),
            # One ledger entry per account; the temporary passwords are checked (and counted) before a replay.
            subject=account_key(request.branch_code, account_type, request.account_number),
            before_replay=lambda: self._checked(self._service.check_notice(**entries)),  # type: ignore[arg-type]
        )

    @_step
    async def SubmitProfile(
        self, request: pb.SubmitProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitProfileResponse:
        def act() -> Awaitable[tuple[Enrollment, str]]:
            return self._service.submit_profile(
                request.enrollment_id,
                request.session_token,
                user_name=request.user_name,
                email=request.email,
                email_confirmation=request.email_confirmation,
                login_id=request.login_id,
                login_id_confirmation=request.login_id_confirmation,
                login_password=request.login_password,
                login_password_confirmation=request.login_password_confirmation,
                confirmation_password=request.confirmation_password,
                confirmation_password_confirmation=request.confirmation_password_confirmation,
            )

        def answer(submitted: tuple[Enrollment, str]) -> pb.SubmitProfileResponse:
            enrollment, company = submitted
            summary = pb.ProfileSummary(
                user_name=enrollment.user_name,
                email=enrollment.email,
                login_id=enrollment.login_id,
                company_name=company,
            )
            return pb.SubmitProfileResponse(enrollment=enrollment_message(enrollment, self._now()), summary=summary)

        return await self._once_in_commit(
            request,
            act,
            answer,
            pb.SubmitProfileResponse,
            secret_request=(
                "session_token",
                "login_password",
                "login_password_confirmation",
                "confirmation_password",
                "confirmation_password_confirmation",
            ),
            subject=request.enrollment_id,
            before_replay=lambda: self._service.check_session(request.enrollment_id, request.session_token),
        )

    @_step
    async def ConfirmRegistration(
        self, request: pb.ConfirmRegistrationRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmRegistrationResponse:
        def answer(enrollment: Enrollment) -> pb.ConfirmRegistrationResponse:
            return pb.ConfirmRegistrationResponse(
                enrollment=enrollment_message(enrollment, self._now()), user_id=enrollment.user_id
            )

        return await self._once_in_commit(
            request,
            lambda: self._service.confirm_registration(request.enrollment_id, request.session_token),
            answer,
            pb.ConfirmRegistrationResponse,
            secret_request=("session_token",),
            subject=request.enrollment_id,
            before_replay=lambda: self._service.check_session(request.enrollment_id, request.session_token),
        )

    @_step
    async def IssueCertificate(
        self, request: pb.IssueCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.IssueCertificateResponse:
        def answer(issued: tuple[Enrollment, IssuedCertificate]) -> pb.IssueCertificateResponse:
            enrollment, certificate = issued
            return pb.IssueCertificateResponse(
                enrollment=enrollment_message(enrollment, self._now()),
                certificate_pem=certificate.certificate_pem,
                chain_pem=certificate.chain_pem,
                serial_number=certificate.serial_number,
            )

        # A replay of this step (its answer lost) still takes the session token step 4 retired.
        return await self._once_in_commit(
            request,
            lambda: self._service.issue_certificate(
                request.enrollment_id, request.session_token, request.csr_pem, request.request_id
            ),
            answer,
            pb.IssueCertificateResponse,
            secret_request=("session_token",),
            subject=request.enrollment_id,
            before_replay=lambda: self._service.check_session(
                request.enrollment_id, request.session_token, retired=True
            ),
        )

    @_step
    async def CertificateLogin(
        self, request: pb.CertificateLoginRequest, context: grpc.aio.ServicerContext
    ) -> pb.CertificateLoginResponse:
        certificate = relayed_certificate()

        return await self._once_in_commit(
            request,
            lambda: self._service.certificate_login(request.enrollment_id, certificate),
            lambda enrollment: pb.CertificateLoginResponse(enrollment=enrollment_message(enrollment, self._now())),
            pb.CertificateLoginResponse,
            subject=_certificate_subject(request.enrollment_id, certificate),
            before_replay=lambda: self._service.check_certificate(request.enrollment_id, certificate),
        )

    @_step
    async def PasswordLogin(
        self, request: pb.PasswordLoginRequest, context: grpc.aio.ServicerContext
    ) -> pb.PasswordLoginResponse:
        certificate = relayed_certificate()

        return await self._once_in_commit(
            request,
            lambda: self._service.password_login(request.enrollment_id, certificate, request.login_password),
            lambda enrollment: pb.PasswordLoginResponse(enrollment=enrollment_message(enrollment, self._now())),
            pb.PasswordLoginResponse,
            secret_request=("login_password",),
            subject=_certificate_subject(request.enrollment_id, certificate),
            before_replay=lambda: self._service.check_login_password(
                request.enrollment_id, certificate, request.login_password
            ),
        )

    @_step
    async def RequestToken(
        self, request: pb.RequestTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestTokenResponse:
        certificate = relayed_certificate()

        def act() -> Awaitable[Enrollment]:
            return self._service.request_token(
                request.enrollment_id,
                certificate,
                request.request_id,
                mobile_email=request.mobile_email,
                mobile_email_confirmation=request.mobile_email_confirmation,
                usage_start_password=request.usage_start_password,
                usage_start_password_confirmation=request.usage_start_password_confirmation,
            )

        return await self._once_in_commit(
            request,
            act,
            lambda enrollment: pb.RequestTokenResponse(enrollment=enrollment_message(enrollment, self._now())),
            pb.RequestTokenResponse,
            secret_request=("usage_start_password", "usage_start_password_confirmation"),
            subject=_certificate_subject(request.enrollment_id, certificate),
            before_replay=lambda: self._service.check_certificate(request.enrollment_id, certificate),
        )

    @_step
    async def ActivateApp(
        self, request: pb.ActivateAppRequest, context: grpc.aio.ServicerContext
    ) -> pb.ActivateAppResponse:
        def act() -> Awaitable[AppActivation]:
            return self._service.activate_app(
                service_id=request.service_id,
                app_user_id=request.user_id,
                usage_start_password=request.usage_start_password,
                agreed=request.agreed,
                request_id=request.request_id,
            )

        def answer(activation: AppActivation) -> pb.ActivateAppResponse:
            return pb.ActivateAppResponse(
                activation=common_pb2.AppActivation(
                    secret=activation.secret,
                    otpauth_uri=activation.otpauth_uri,
                    algorithm=_ALGORITHM_PB.get(activation.algorithm, common_pb2.OTP_ALGORITHM_SHA1),
                    digits=activation.digits,
                    period=activation.period,
                    activation_id=activation.activation_id,
                )
            )

        return await self._once_in_commit(
            request,
            act,
            answer,
            pb.ActivateAppResponse,
            secret_request=("usage_start_password",),
            secret_response=("activation.secret", "activation.otpauth_uri"),
            subject=f"{request.service_id}/{request.user_id}",
            before_replay=_already_delivered,
        )

    @_step
    async def RegisterApp(
        self, request: pb.RegisterAppRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAppResponse:
        def act() -> Awaitable[Enrollment | None]:
            return self._service.register_app(
                service_id=request.service_id,
                app_user_id=request.user_id,
                activation_id=request.activation_id,
                request_id=request.request_id,
            )

        def answer(enrollment: Enrollment | None) -> pb.RegisterAppResponse:
            state = (
                pb.Enrollment.State.Value(f"STATE_{enrollment.state.value}")
                if enrollment is not None
                else pb.Enrollment.STATE_UNSPECIFIED
            )
            return pb.RegisterAppResponse(state=state)

        # The activation ID (high-entropy, from step 8) is this step's credential: it scopes the entry.
        return await self._once_in_commit(
            request,
            act,
            answer,
            pb.RegisterAppResponse,
            subject=f"{request.service_id}/{request.user_id}/{request.activation_id}",
        )

    @_step
    async def VerifyFirstCode(
        self, request: pb.VerifyFirstCodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyFirstCodeResponse:
        certificate = relayed_certificate()

        return await self._once_in_commit(
            request,
            lambda: self._service.verify_first_code(
                request.enrollment_id, certificate, request.otp, request.request_id
            ),
            lambda enrollment: pb.VerifyFirstCodeResponse(enrollment=enrollment_message(enrollment, self._now())),
            pb.VerifyFirstCodeResponse,
            secret_request=("otp",),
            subject=_certificate_subject(request.enrollment_id, certificate),
            before_replay=lambda: self._service.check_certificate(request.enrollment_id, certificate),
        )

    async def GetEnrollment(
        self, request: pb.GetEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEnrollmentResponse:
        certificate = None if request.session_token else relayed_certificate()
        enrollment = await self._service.get(
            request.enrollment_id, session=request.session_token, certificate=certificate
        )
        return pb.GetEnrollmentResponse(enrollment=enrollment_message(enrollment, self._now()))

    async def GetCurrentEnrollment(
        self, request: pb.GetCurrentEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCurrentEnrollmentResponse:
        enrollment = await self._service.current_for_certificate(relayed_certificate())
        return pb.GetCurrentEnrollmentResponse(enrollment=enrollment_message(enrollment, self._now()))

    @_step
    async def CancelEnrollment(
        self, request: pb.CancelEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelEnrollmentResponse:
        # Before step 4 the session token cancels; from step 4 (the token retired) the relayed certificate.
        certificate = None if request.session_token else relayed_certificate()

        async def check() -> None:
            if certificate is not None:
                await self._service.check_certificate(request.enrollment_id, certificate)
            else:
                await self._service.check_session(request.enrollment_id, request.session_token)

        return await self._once_in_commit(
            request,
            lambda: self._service.cancel(request.enrollment_id, request.session_token, certificate),
            lambda enrollment: pb.CancelEnrollmentResponse(enrollment=enrollment_message(enrollment, self._now())),
            pb.CancelEnrollmentResponse,
            secret_request=("session_token",),
            subject=request.enrollment_id,
            before_replay=check,
        )

    async def UnlockApplication(
        self, request: pb.UnlockApplicationRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnlockApplicationResponse:
        async def act() -> pb.UnlockApplicationResponse:
            application = await self._service.unlock_application(request.application_id)
            return pb.UnlockApplicationResponse(application=application_message(application, self._now()))

        return await self._once(request, act, pb.UnlockApplicationResponse, subject=request.application_id)

    async def ReissueCertificate(
        self, request: pb.ReissueCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReissueCertificateResponse:
        reason = request.revocation_reason or "keyCompromise"
        if reason not in _REISSUE_REASONS:
            raise InvalidArgument(
                "invalid revocation reason", fields={"revocation_reason": "one of " + ", ".join(_REISSUE_REASONS)}
            )

        async def act() -> pb.ReissueCertificateResponse:
            notice = await self._service.reissue_certificate(request.user_id, reason)
            return pb.ReissueCertificateResponse(**self._notice(notice))

        return await self._once(
            request,
            act,
            pb.ReissueCertificateResponse,
            secret_response=("temporary_login_password", "temporary_confirmation_password"),
            subject=request.user_id,
        )

    async def ListApplications(
        self, request: pb.ListApplicationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApplicationsResponse:
        applications, token = await self._service.list_applications(request.page_size, request.page_token)
        now = self._now()
        return pb.ListApplicationsResponse(
            applications=[application_message(a, now) for a in applications], next_page_token=token
        )

    async def ReopenEnrollment(
        self, request: pb.ReopenEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReopenEnrollmentResponse:
        async def act() -> pb.ReopenEnrollmentResponse:
            enrollment = await self._service.reopen(request.enrollment_id)
            return pb.ReopenEnrollmentResponse(enrollment=enrollment_message(enrollment, self._now()))

        return await self._once(request, act, pb.ReopenEnrollmentResponse, subject=request.enrollment_id)


def binding(api: EnrollmentApi) -> ServiceBinding:
    """Register the API on a server with its per-method allow-list."""
    return ServiceBinding(
        name=SERVICE_NAME,
        register=lambda server: enrollment_pb2_grpc.add_EnrollmentServiceServicer_to_server(api, server),
        allowed_roles=ALLOWED_ROLES,
    )
