"""The gateway's HTTP applications: the customer API (JSON to gRPC and back), the ops routes, and the frame
every request passes through (request id, errors as JSON, security headers, metrics, access log)."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.backends import Backends
from gateway.errors import INTERNAL_MESSAGE, HttpError, invalid_input
from gateway.metrics import GatewayMetrics
from gateway.openapi import ID_PATTERN, IDEMPOTENCY_KEY_PATTERN, openapi_document
from gateway.pki import PkiFiles
from gateway.schemas import (
    ACTIVATE_APP,
    CHANGE_PASSWORD,
    CONFIRM_TRANSACTION,
    EMPTY,
    ISSUE_CERTIFICATE,
    LOGIN,
    OPERATIONS,
    PASSWORD_LOGIN,
    REGISTER_APP,
    REISSUE_TOKEN,
    RENEW_CERTIFICATE,
    REQUEST_TOKEN,
    RESET_PASSWORD,
    STEP_UP,
    SUBMIT_PROFILE,
    VERIFY_FIRST_CODE,
    VERIFY_NOTICE,
    BodySpec,
)
from gateway.tls import CustomerCertificate, CustomerCertificateVerifier, peer_certificate
from gateway.web import WebPages
from kagi.clients.revocation import RevocationRegistry, RevocationUnavailable, Status
from kagi.common.v1 import common_pb2
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.runtime.grpc_server import CLIENT_ADDRESS_HEADER
from kagi.runtime.logging import new_request_id, request_id_var
from services.enrollment_service.domain.messages import CARRIER_FILTER_NOTE

log = structlog.get_logger("kagi.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ID = re.compile(ID_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SESSION_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")
# A compact JWS: three base64url parts (RFC 7515 section 7.1).
_ACCESS_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,2048}\.[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{1,512}")
_ACCOUNT_TYPES = {"ordinary": pb.ACCOUNT_TYPE_ORDINARY, "current": pb.ACCOUNT_TYPE_CURRENT}

MSG_SESSION_REQUIRED = (
    "セッションが確認できません。初期設定を最初からやり直してください"
    " / the session token is missing or malformed (Authorization: Bearer <session_token> from step 1)"
)
MSG_CREDENTIAL_REQUIRED = (
    "セッションまたは電子証明書が必要です / this needs the session token (steps 2-4) or the client certificate"
)
MSG_NOT_FOUND = "見つかりません / not found"
MSG_NO_ENROLLMENT = "指定された初期設定が見つかりません / no such enrollment"
MSG_METHOD = "このメソッドは使用できません / method not allowed"
MSG_TOO_LARGE = "送信データが大きすぎます / the request body is larger than 64 KiB"
MSG_MEDIA_TYPE = "application/json で送信してください / send the body as application/json"
MSG_REVOKED = "この電子証明書は失効しています / this client certificate has been revoked"
MSG_UNKNOWN_CERT = "この電子証明書は確認できません / the customer CA has no record of this certificate"
MSG_STATUS_UNAVAILABLE = (
    "電子証明書の失効状況を確認できません。しばらくしてからやり直してください"
    " / the certificate's revocation status cannot be checked right now: retry shortly"
)
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kagi"'}
MSG_ACCESS_TOKEN_REQUIRED = (
    "ログインしてください / this needs the access token from POST /v1/sessions (Authorization: Bearer <access_token>)"
)
_USER_STATES = {v: k.removeprefix("STATE_") for k, v in upb.User.State.items()}
_TOKEN_STATES = {v: k.removeprefix("TOKEN_STATE_") for k, v in upb.User.TokenState.items()}
JWKS_CACHE_SECONDS = 10.0
_PASSWORD_KINDS = {"login": upb.PASSWORD_KIND_LOGIN, "confirmation": upb.PASSWORD_KIND_CONFIRMATION}


@dataclass
class GatewayContext:
    """What the routes work with: backends, certificate checks, PKI files, metrics."""

    backends: Backends
    verifier: CustomerCertificateVerifier
    revocation: RevocationRegistry
    pki: PkiFiles
    metrics: GatewayMetrics
    max_body_bytes: int
    # The rate limits on step 1 and step 8 (gateway.ratelimit), inside the frame; None when they are off.
    rate_limits: Middleware | None = None


# -- helpers ----------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(error: HttpError) -> web.Response:
    """Render an HttpError as the JSON error document."""
    return _json(error.body(), error.status, error.headers)


def _timestamp(stamp: Timestamp) -> str | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return str(stamp.ToJsonString())


def enrollment_view(enrollment: pb.Enrollment) -> dict[str, Any]:
    """Return what the API shows of an enrollment: id, state, next step by name, expiry."""
    state = pb.Enrollment.State.Name(enrollment.state).removeprefix("STATE_")
    step = pb.Step.Name(enrollment.next_step).removeprefix("STEP_") if enrollment.next_step else None
    return {
        "enrollment_id": enrollment.enrollment_id,
        "kind": pb.EnrollmentKind.Name(enrollment.kind).removeprefix("ENROLLMENT_KIND_")
        if enrollment.kind
        else "SETUP",
        "state": state,
        "next_step": step,
        "expires_at": _timestamp(enrollment.expire_time),
    }


def _enrollment_id(request: web.Request) -> str:
    enrollment_id = request.match_info["id"]
    if not _ID.fullmatch(enrollment_id):
        # A malformed id names no enrollment: the same answer as an unknown one.
        raise HttpError(404, "NOT_FOUND", MSG_NO_ENROLLMENT)
    return enrollment_id


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return ""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise invalid_input(
            {"Idempotency-Key": "1～128文字の半角英数記号 / 1-128 visible ASCII characters (no spaces)"},
            reason="INVALID_IDEMPOTENCY_KEY",
        )
    return key


def _session(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _SESSION_TOKEN.fullmatch(token):
        raise HttpError(401, "SESSION_REQUIRED", MSG_SESSION_REQUIRED, headers=_BEARER_CHALLENGE)
    return token


def _access_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _ACCESS_TOKEN.fullmatch(token):
        raise HttpError(401, "ACCESS_TOKEN_REQUIRED", MSG_ACCESS_TOKEN_REQUIRED, headers=_BEARER_CHALLENGE)
    return token


def _user_view(user: upb.User) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "login_id": user.login_id,
        "user_name": user.user_name,
        "company_name": user.company_name,
        "state": _USER_STATES.get(user.state, "UNSPECIFIED"),
        "token_state": _TOKEN_STATES.get(user.token_state, "UNSPECIFIED"),
    }


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


class CustomerApi:
    """Serves the ten steps: checks the caller's credential and the body's shape, calls the
    enrollment service, and renders its answer. Every rule about the enrollment is the service's."""

    def __init__(self, context: GatewayContext) -> None:
        self._ctx = context
        self._backends = context.backends
        self._stub = context.backends.enrollment
        self._users = context.backends.users
        self._jwks: tuple[float, str] | None = None

    def routes(self) -> list[web.RouteDef]:
        """Return the customer API's routes, one per entry of schemas.OPERATIONS."""
        handlers: dict[str, Handler] = {
            "verifyNotice": self.verify_notice,
            "submitProfile": self.submit_profile,
            "confirmRegistration": self.confirm_registration,
            "issueCertificate": self.issue_certificate,
            "certificateLogin": self.certificate_login,
            "passwordLogin": self.password_login,
            "requestToken": self.request_token,
            "activateApp": self.activate_app,
            "registerApp": self.register_app,
            "verifyFirstCode": self.verify_first_code,
            "getEnrollment": self.get_enrollment,
            "getClientCertificate": self.client_certificate,
            "getCurrentEnrollment": self.current_enrollment,
            "login": self.login,
            "stepUp": self.step_up,
            "logout": self.logout,
            "confirmTransaction": self.confirm_transaction,
            "getJwks": self.jwks,
            "changePassword": self.change_password,
            "resetPassword": self.reset_password,
            "renewCertificate": self.renew_certificate,
            "reissueToken": self.reissue_token,
        }
        return [web.route(op.method, op.path, handlers[op.operation_id]) for op in OPERATIONS]

    async def _body(self, request: web.Request, spec: BodySpec) -> dict[str, Any]:
        length = request.content_length
        if length is not None and length > self._ctx.max_body_bytes:
            raise HttpError(413, "BODY_TOO_LARGE", MSG_TOO_LARGE)
        raw = await request.read()
        if raw.strip() and not _is_json(request.content_type):
            raise HttpError(415, "UNSUPPORTED_MEDIA_TYPE", MSG_MEDIA_TYPE)
        return spec.parse(raw)

    async def certificate(self, request: web.Request) -> CustomerCertificate:
        """Return the request's verified, unrevoked customer certificate, or an HttpError."""
        certificate = self._ctx.verifier.check(peer_certificate(request), time.time())
        rejections = self._ctx.metrics.certificate_rejections
        try:
            status = await self._ctx.revocation.status(certificate.serial, certificate.serial_hex)
        except RevocationUnavailable:
            rejections.labels("status_unavailable").inc()
            raise HttpError(
                503, "REVOCATION_STATUS_UNAVAILABLE", MSG_STATUS_UNAVAILABLE, headers={"Retry-After": "1"}
            ) from None
        if status is Status.REVOKED:
            rejections.labels("revoked").inc()
            raise HttpError(401, "CLIENT_CERT_REVOKED", MSG_REVOKED)
        if status is Status.UNKNOWN:
            rejections.labels("unknown_to_ca").inc()
            raise HttpError(401, "CLIENT_CERT_UNKNOWN", MSG_UNKNOWN_CERT)
        return certificate

    # -- steps 1-4: none, then the session token ----------------------------------------------------------

    async def verify_notice(self, request: web.Request) -> web.Response:
        """Take step 1: the representative account and the notice's temporary passwords."""
        key = _idempotency_key(request)
        body = await self._body(request, VERIFY_NOTICE)
        reply = await self._backends.call(
            "enrollment",
            self._stub.VerifyNotice,
            pb.VerifyNoticeRequest(
                request_id=key,
                branch_code=body["branch_code"],
                account_type=_ACCOUNT_TYPES[body["account_type"]],
                account_number=body["account_number"],
                temporary_login_password=body["temporary_login_password"],
                temporary_confirmation_password=body["temporary_confirmation_password"],
            ),
            metadata=((CLIENT_ADDRESS_HEADER, request.remote or ""),),
        )
        view = enrollment_view(reply.enrollment)
        view["session_token"] = reply.session_token
        return _json(view, 201, {"Location": f"/v1/enrollments/{reply.enrollment.enrollment_id}"})

    async def submit_profile(self, request: web.Request) -> web.Response:
        """Take step 2: the user's profile; answers with a summary (never the passwords)."""
        enrollment_id, session, key = _enrollment_id(request), _session(request), _idempotency_key(request)
        body = await self._body(request, SUBMIT_PROFILE)
        reply = await self._backends.call(
            "enrollment",
            self._stub.SubmitProfile,
            pb.SubmitProfileRequest(request_id=key, enrollment_id=enrollment_id, session_token=session, **body),
        )
        view = enrollment_view(reply.enrollment)
        summary = reply.summary
        view["summary"] = {
            "user_name": summary.user_name,
            "email": summary.email,
            "login_id": summary.login_id,
            "company_name": summary.company_name,
        }
        return _json(view)

    async def confirm_registration(self, request: web.Request) -> web.Response:
        """Take step 3: the user presses Register."""
        enrollment_id, session, key = _enrollment_id(request), _session(request), _idempotency_key(request)
        await self._body(request, EMPTY)
        reply = await self._backends.call(
            "enrollment",
            self._stub.ConfirmRegistration,
            pb.ConfirmRegistrationRequest(request_id=key, enrollment_id=enrollment_id, session_token=session),
        )
        view = enrollment_view(reply.enrollment)
        view["user_id"] = reply.user_id
        return _json(view)

    async def issue_certificate(self, request: web.Request) -> web.Response:
        """Take step 4: the CSR made on the client is signed by the customer CA."""
        enrollment_id, session, key = _enrollment_id(request), _session(request), _idempotency_key(request)
        body = await self._body(request, ISSUE_CERTIFICATE)
        reply = await self._backends.call(
            "enrollment",
            self._stub.IssueCertificate,
            pb.IssueCertificateRequest(
                request_id=key, enrollment_id=enrollment_id, session_token=session, csr_pem=body["csr_pem"]
            ),
        )
        view = enrollment_view(reply.enrollment)
        view.update(certificate_pem=reply.certificate_pem, chain_pem=reply.chain_pem, serial_number=reply.serial_number)
        return _json(view)

    # -- steps 5-7 and 10: the client certificate ---------------------------------------------------------

    async def certificate_login(self, request: web.Request) -> web.Response:
        """Take step 5: the new certificate was presented."""
        enrollment_id, key = _enrollment_id(request), _idempotency_key(request)
        certificate = await self.certificate(request)
        await self._body(request, EMPTY)
        reply = await self._backends.call(
            "enrollment",
            self._stub.CertificateLogin,
            pb.CertificateLoginRequest(request_id=key, enrollment_id=enrollment_id),
            metadata=certificate.metadata,
        )
        return _json(enrollment_view(reply.enrollment))

    async def password_login(self, request: web.Request) -> web.Response:
        """Take step 6: the login password, with the certificate."""
        enrollment_id, key = _enrollment_id(request), _idempotency_key(request)
        certificate = await self.certificate(request)
        body = await self._body(request, PASSWORD_LOGIN)
        reply = await self._backends.call(
            "enrollment",
            self._stub.PasswordLogin,
            pb.PasswordLoginRequest(request_id=key, enrollment_id=enrollment_id, login_password=body["login_password"]),
            metadata=certificate.metadata,
        )
        return _json(enrollment_view(reply.enrollment))

    async def request_token(self, request: web.Request) -> web.Response:
        """Take step 7: the phone's e-mail and the usage-start password; the IDs go by mail."""
        enrollment_id, key = _enrollment_id(request), _idempotency_key(request)
        certificate = await self.certificate(request)
        body = await self._body(request, REQUEST_TOKEN)
        reply = await self._backends.call(
            "enrollment",
            self._stub.RequestToken,
            pb.RequestTokenRequest(request_id=key, enrollment_id=enrollment_id, **body),
            metadata=certificate.metadata,
        )
        return _json({**enrollment_view(reply.enrollment), "mail_note": CARRIER_FILTER_NOTE})

    async def verify_first_code(self, request: web.Request) -> web.Response:
        """Take step 10: the app's code; completes the enrollment."""
        enrollment_id, key = _enrollment_id(request), _idempotency_key(request)
        certificate = await self.certificate(request)
        body = await self._body(request, VERIFY_FIRST_CODE)
        reply = await self._backends.call(
            "enrollment",
            self._stub.VerifyFirstCode,
            pb.VerifyFirstCodeRequest(request_id=key, enrollment_id=enrollment_id, otp=body["otp"]),
            metadata=certificate.metadata,
        )
        return _json(enrollment_view(reply.enrollment))

    # -- steps 8 and 9: the app, no credential but what it types --------------------------------------------

    async def activate_app(self, request: web.Request) -> web.Response:
        """Take step 8: the app's entry; answers with the seed, this once."""
        key = _idempotency_key(request)
        body = await self._body(request, ACTIVATE_APP)
        reply = await self._backends.call(
            "enrollment",
            self._stub.ActivateApp,
            pb.ActivateAppRequest(
                request_id=key,
                service_id=body["service_id"],
                user_id=body["user_id"],
                usage_start_password=body["usage_start_password"],
                agreed=body["agreed"],
            ),
        )
        activation = reply.activation
        return _json(
            {
                "otpauth_uri": activation.otpauth_uri,
                "secret": activation.secret,
                "algorithm": common_pb2.OtpAlgorithm.Name(activation.algorithm).removeprefix("OTP_ALGORITHM_"),
                "digits": activation.digits,
                "period": activation.period,
                "activation_id": activation.activation_id,
            }
        )

    async def register_app(self, request: web.Request) -> web.Response:
        """Take step 9: the app stored the seed."""
        key = _idempotency_key(request)
        body = await self._body(request, REGISTER_APP)
        reply = await self._backends.call(
            "enrollment", self._stub.RegisterApp, pb.RegisterAppRequest(request_id=key, **body)
        )
        state = pb.Enrollment.State.Name(reply.state).removeprefix("STATE_") if reply.state else None
        return _json({"state": state})

    # -- reading ------------------------------------------------------------------------------------------

    async def get_enrollment(self, request: web.Request) -> web.Response:
        """Answer an enrollment's state to its session token or to its client certificate."""
        enrollment_id = _enrollment_id(request)
        metadata: tuple[tuple[str, str], ...] = ()
        session = ""
        if "Authorization" in request.headers:
            session = _session(request)
        elif peer_certificate(request) is not None:
            metadata = (await self.certificate(request)).metadata
        else:
            raise HttpError(401, "CREDENTIAL_REQUIRED", MSG_CREDENTIAL_REQUIRED, headers=_BEARER_CHALLENGE)
        reply = await self._backends.call(
            "enrollment",
            self._stub.GetEnrollment,
            pb.GetEnrollmentRequest(enrollment_id=enrollment_id, session_token=session),
            metadata=metadata,
        )
        return _json(enrollment_view(reply.enrollment))

    async def client_certificate(self, request: web.Request) -> web.Response:
        """Show which certificate this connection presented (procedure ⑯), once checked."""
        certificate = await self.certificate(request)
        not_after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(certificate.not_after))
        return _json(
            {
                "serial_number": certificate.serial_hex,
                "fingerprint_sha256": certificate.fingerprint_sha256,
                "subject": certificate.subject,
                "not_after": not_after,
            }
        )

    async def current_enrollment(self, request: web.Request) -> web.Response:
        """Find the enrollment this certificate was issued in (the browser was closed)."""
        certificate = await self.certificate(request)
        reply = await self._backends.call(
            "enrollment",
            self._stub.GetCurrentEnrollment,
            pb.GetCurrentEnrollmentRequest(),
            metadata=certificate.metadata,
        )
        return _json(enrollment_view(reply.enrollment))

    # -- after the setup: sessions and confirmations ------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        """The client certificate, the login ID and the login password; answers an access token."""
        certificate = await self.certificate(request)
        body = await self._body(request, LOGIN)
        reply = await self._backends.call(
            "enrollment",
            self._users.Authenticate,
            upb.AuthenticateRequest(login_id=body["login_id"], login_password=body["login_password"]),
            metadata=certificate.metadata,
        )
        return _json(
            {
                "access_token": reply.access_token,
                "token_type": reply.token_type,
                "expires_in": reply.expires_in,
                "user": _user_view(reply.user),
            },
            201,
        )

    async def step_up(self, request: web.Request) -> web.Response:
        """A one-time password raises the session; answers the stepped-up access token."""
        certificate = await self.certificate(request)
        token = _access_token(request)
        body = await self._body(request, STEP_UP)
        claims_user = await self._token_user(token)
        reply = await self._backends.call(
            "enrollment",
            self._users.VerifyOtp,
            upb.VerifyOtpRequest(
                user_id=claims_user,
                otp=body["otp"],
                purpose=upb.OTP_PURPOSE_STEP_UP,
                access_token=token,
            ),
            metadata=certificate.metadata,
        )
        return _json({"access_token": reply.access_token, "token_type": "Bearer", "expires_in": reply.expires_in})

    async def logout(self, request: web.Request) -> web.Response:
        """End the session: the token and every token of its session are refused from now on."""
        certificate = await self.certificate(request)
        token = _access_token(request)
        await self._backends.call(
            "enrollment",
            self._users.EndSession,
            upb.EndSessionRequest(access_token=token),
            metadata=certificate.metadata,
        )
        return web.Response(status=204)

    async def confirm_transaction(self, request: web.Request) -> web.Response:
        """The confirmation password and a code confirm one transaction."""
        certificate = await self.certificate(request)
        token = _access_token(request)
        body = await self._body(request, CONFIRM_TRANSACTION)
        reply = await self._backends.call(
            "enrollment",
            self._users.ConfirmTransaction,
            upb.ConfirmTransactionRequest(
                user_id=await self._token_user(token),
                transaction_id=body["transaction_id"],
                transaction_summary=body["transaction_summary"],
                confirmation_password=body["confirmation_password"],
                otp=body["otp"],
                access_token=token,
            ),
            metadata=certificate.metadata,
        )
        confirmation = reply.confirmation
        return _json(
            {
                "confirmation_id": confirmation.confirmation_id,
                "transaction_id": confirmation.transaction_id,
                "txn_digest": confirmation.txn_digest,
                "confirmed_at": _timestamp(confirmation.confirm_time),
                "methods": list(confirmation.methods),
                "confirmation_token": reply.confirmation_token,
            },
            201,
            {"Location": f"/v1/confirmations/{confirmation.confirmation_id}"},
        )

    # -- the credentials' lifecycle --------------------------------------------------------------------------

    async def change_password(self, request: web.Request) -> web.Response:
        """The current password and the new one twice; every session ends."""
        certificate = await self.certificate(request)
        token = _access_token(request)
        body = await self._body(request, CHANGE_PASSWORD)
        reply = await self._backends.call(
            "enrollment",
            self._users.ChangePassword,
            upb.ChangePasswordRequest(
                user_id=await self._token_user(token),
                access_token=token,
                kind=_PASSWORD_KINDS[body["kind"]],
                current_password=body["current_password"],
                new_password=body["new_password"],
                new_password_confirmation=body["new_password_confirmation"],
            ),
            metadata=certificate.metadata,
        )
        return _json({"user": _user_view(reply.user)})

    async def reset_password(self, request: web.Request) -> web.Response:
        """The reset notice's temporary password and the new one twice, with the certificate."""
        certificate = await self.certificate(request)
        body = await self._body(request, RESET_PASSWORD)
        reply = await self._backends.call(
            "enrollment",
            self._users.ResetPassword,
            upb.ResetPasswordRequest(
                kind=_PASSWORD_KINDS[body["kind"]],
                temporary_password=body["temporary_password"],
                new_password=body["new_password"],
                new_password_confirmation=body["new_password_confirmation"],
            ),
            metadata=certificate.metadata,
        )
        return _json({"user": _user_view(reply.user)})

    async def renew_certificate(self, request: web.Request) -> web.Response:
        """A CSR for a new key and the login password; answers the new certificate."""
        key = _idempotency_key(request)
        certificate = await self.certificate(request)
        token = _access_token(request)
        body = await self._body(request, RENEW_CERTIFICATE)
        reply = await self._backends.call(
            "enrollment",
            self._users.RenewCertificate,
            upb.RenewCertificateRequest(
                request_id=key, access_token=token, csr_pem=body["csr_pem"], login_password=body["login_password"]
            ),
            metadata=certificate.metadata,
        )
        return _json(
            {
                "certificate_pem": reply.certificate_pem,
                "chain_pem": reply.chain_pem,
                "serial_number": reply.serial_number,
            },
            201,
        )

    async def reissue_token(self, request: web.Request) -> web.Response:
        """A new token for a new phone (the IDs go by mail); with a session, or as the bank allowed."""
        key = _idempotency_key(request)
        certificate = await self.certificate(request)
        token = _access_token(request) if "Authorization" in request.headers else ""
        body = await self._body(request, REISSUE_TOKEN)
        if not token and not (body.get("login_id") and body.get("login_password")):
            raise invalid_input(
                {"login_id": "ログインしていない場合は必須です / required without a session (Authorization: Bearer)"},
                reason="SESSION_OR_LOGIN_REQUIRED",
            )
        reply = await self._backends.call(
            "enrollment",
            self._users.ReissueToken,
            upb.ReissueTokenRequest(request_id=key, access_token=token, **body),
            metadata=certificate.metadata,
        )
        return _json({"user": _user_view(reply.user)}, 202)

    async def _token_user(self, token: str) -> str:
        # The subject only routes the call; the enrollment service verifies the whole token and its binding.
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            subject = claims["sub"]
        except (ValueError, KeyError, TypeError, IndexError):
            subject = None
        if not isinstance(subject, str) or not subject:
            raise HttpError(401, "ACCESS_TOKEN_INVALID", MSG_ACCESS_TOKEN_REQUIRED, headers=_BEARER_CHALLENGE)
        return subject

    async def jwks(self, request: web.Request) -> web.Response:
        """The public keys that verify access and confirmation tokens, cached for a few seconds."""
        now = time.monotonic()
        if self._jwks is None or now - self._jwks[0] > JWKS_CACHE_SECONDS:
            reply = await self._backends.call("enrollment", self._users.GetJwks, upb.GetJwksRequest())
            self._jwks = (now, reply.jwks_json)
        return web.Response(
            text=self._jwks[1],
            content_type="application/json",
            headers={"Cache-Control": f"public, max-age={int(JWKS_CACHE_SECONDS)}"},
        )


async def readiness(context: GatewayContext) -> tuple[bool, dict[str, Any]]:
    """Return whether every backend's gRPC health is SERVING, and which is not (the management
    listener's /readyz)."""
    backends = await context.backends.health()
    ready = all(status == "SERVING" for status in backends.values())
    revocation = {"live": context.revocation.live, "revoked_serials": context.revocation.revoked_count}
    return ready, {"backends": backends, "revocation": revocation}


class Ops:
    """Serves /healthz and /openapi.json (/readyz and /metrics are the management listener's)."""

    def __init__(self, context: GatewayContext) -> None:
        self._ctx = context
        self._openapi = json.dumps(openapi_document(), ensure_ascii=False, indent=1)

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is alive and answering."""
        return _json({"status": "ok"})

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of this API."""
        return web.Response(text=self._openapi, content_type="application/json")


# -- the frame --------------------------------------------------------------------------------------------


def _from_aiohttp(exc: web.HTTPException) -> HttpError:
    if exc.status == 404:
        return HttpError(404, "NOT_FOUND", MSG_NOT_FOUND)
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return HttpError(405, "METHOD_NOT_ALLOWED", MSG_METHOD, headers={"Allow": allow} if allow else None)
    if exc.status == 413:
        return HttpError(413, "BODY_TOO_LARGE", MSG_TOO_LARGE)
    if exc.status < 500:
        return HttpError(exc.status, exc.reason.upper().replace(" ", "_"), exc.reason)
    return HttpError(500, "INTERNAL", INTERNAL_MESSAGE)


def frame(metrics: GatewayMetrics, *, https: bool) -> Middleware:
    """Return the middleware every request passes through.

    It sets the request id (the client's X-Request-Id when well-formed, else a new one) for the logs and the
    gRPC metadata, turns every failure into the JSON error document (never a stack trace), adds security
    headers, counts and times the request by route template, and writes one access-log line.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        offered = request.headers.get("X-Request-Id", "")
        request_id = offered if _REQUEST_ID.fullmatch(offered) else new_request_id()
        token = request_id_var.set(request_id)
        try:
            try:
                response = await handler(request)
            except HttpError as exc:
                response = error_response(exc)
            except web.HTTPException as exc:
                response = error_response(_from_aiohttp(exc))
            except Exception:  # anything unforeseen: logged with its trace here, answered without one
                log.exception("request failed", method=request.method, path=request.path)
                response = error_response(HttpError(500, "INTERNAL", INTERNAL_MESSAGE))
            headers = response.headers
            headers["X-Request-Id"] = request_id
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Server"] = "kagi"  # not aiohttp's default, which names the Python and aiohttp versions
            if https:
                headers["Strict-Transport-Security"] = "max-age=31536000"
            if request.path.startswith("/v1/"):
                # Session tokens, seeds and personal data must not stay in any cache.
                headers["Cache-Control"] = "no-store"
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            elapsed = time.perf_counter() - started
            metrics.requests.labels(route, request.method, str(response.status)).inc()
            metrics.worker_requests.inc()
            metrics.latency.labels(route, request.method).observe(elapsed)
            log.info(
                "request",
                method=request.method,
                route=route,
                http_status=response.status,
                ms=round(elapsed * 1000, 2),
            )
            return response
        finally:
            request_id_var.reset(token)

    return middleware


def https_application(context: GatewayContext) -> web.Application:
    """Return everything the HTTPS port serves: the customer API, the customer's pages, PKI files, /healthz and the
    OpenAPI document (/readyz and /metrics are on the management listener only)."""
    middlewares = [frame(context.metrics, https=True)]
    if context.rate_limits is not None:
        middlewares.append(context.rate_limits)
    app = web.Application(middlewares=middlewares, client_max_size=context.max_body_bytes)
    ops = Ops(context)
    app.add_routes(CustomerApi(context).routes())
    app.add_routes(context.pki.routes())
    app.add_routes(
        [
            web.get("/healthz", ops.healthz),
            web.get("/openapi.json", ops.openapi),
        ]
    )
    app.add_routes(WebPages().routes())  # the customer's pages: the app (/app/) and the setup wizard (/setup/)
    return app


def http_application(context: GatewayContext) -> web.Application:
    """Return the plain-HTTP port: the PKI files (CRL and OCSP URLs are http://) and /healthz only."""
    app = web.Application(middlewares=[frame(context.metrics, https=False)], client_max_size=context.max_body_bytes)
    app.add_routes(context.pki.routes())
    app.add_routes([web.get("/healthz", Ops(context).healthz)])
    return app
