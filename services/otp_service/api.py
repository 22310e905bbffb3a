"""The OTP gRPC API: translates messages to use-case calls and back, and nothing more.

Every mutation but VerifyCode runs through the request_id ledger, with the usage-start password kept out of
fingerprints and the seed (base32 and otpauth URI) cleared from stored answers, so a replay never hands the seed
out again. CreateToken, ActivateToken and ConfirmRegistration (steps 7-9) write their answer with their own
commit (`_once_in_commit`); the others claim the id first (`_once`). VerifyCode's request_id is honoured inside
the verification's own atomic commit instead (see `services.otp_service.app.verifier`): same guarantee, one store
round trip instead of three. Steps 8 and 9 commit within one token's placement group, so their answers go to a
ledger spread by token id (`token-requests`, keys starting with the token id the service ID names); a service ID
that names no token gets no ledger (the step fails, and a failure stores nothing).

Domain errors name the domain's fields (`email`, `owner_id`, `user_id`); each RPC renames them to its own
request's fields (`delivery_email`, `user_id`, `app_user_id`) so a caller is told which of *its* fields is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kagi.common.v1 import common_pb2
from kagi.errors import InvalidArgument, KagiError
from kagi.idempotency import IdempotencyLedger, check_request_id
from kagi.otp.v1 import otp_pb2 as pb
from kagi.otp.v1 import otp_pb2_grpc
from kagi.runtime.grpc_idempotency import IdempotentApi
from kagi.runtime.grpc_server import ServiceBinding
from kagi.runtime.identity import Role, allow
from kagi.runtime.metrics import otp_verifications
from services.otp_service.app.repository import TOKEN_REQUESTS
from services.otp_service.app.use_cases import Activation, OtpService
from services.otp_service.domain import Algorithm, Token, TokenState
from services.otp_service.domain.totp import seconds_remaining

SERVICE_NAME = "kagi.otp.v1.OtpService"
"""The full gRPC name of the service."""

ALLOWED_ROLES = {
    # Only the enrollment service drives a token and checks codes; front-ends and the gateway reach tokens
    # through it, bound to the customer's proof (DESIGN.md section 3). Operators manage, never verify.
    "CreateToken": allow(Role.ENROLLMENT),
    "ActivateToken": allow(Role.ENROLLMENT),
    "ConfirmRegistration": allow(Role.ENROLLMENT),
    "VerifyCode": allow(Role.ENROLLMENT),
    "GetToken": allow(Role.ENROLLMENT, Role.OPERATOR),
    "ListTokens": allow(Role.ENROLLMENT, Role.OPERATOR),
    "DisableToken": allow(Role.ENROLLMENT, Role.OPERATOR),
    "ReissueToken": allow(Role.ENROLLMENT, Role.OPERATOR),
    "RevokeToken": allow(Role.ENROLLMENT, Role.OPERATOR),
    "UnlockToken": allow(Role.OPERATOR),
}
"""Is, per RPC, the caller roles that may call it; any other role is PERMISSION_DENIED."""

# The API has one LOCKED state for both lockouts. An expired token shows as pending with its activation
# deadline in the past, which is also how a pending token past its deadline looks before anyone touches it.
_STATE_PB: dict[TokenState, pb.Token.State.ValueType] = {
    TokenState.PENDING_ACTIVATION: pb.Token.STATE_PENDING_ACTIVATION,
    TokenState.ACTIVATED: pb.Token.STATE_ACTIVATED,
    TokenState.REGISTERED: pb.Token.STATE_REGISTERED,
    TokenState.ACTIVE: pb.Token.STATE_ACTIVE,
    TokenState.ACTIVATION_LOCKED: pb.Token.STATE_ACTIVATION_LOCKED,
    TokenState.LOCKED: pb.Token.STATE_LOCKED,
    TokenState.DISABLED: pb.Token.STATE_DISABLED,
    TokenState.EXPIRED: pb.Token.STATE_EXPIRED,
    TokenState.REVOKED: pb.Token.STATE_REVOKED,
}
_ALGORITHM_PB: dict[Algorithm, common_pb2.OtpAlgorithm.ValueType] = {
    Algorithm.SHA1: common_pb2.OTP_ALGORITHM_SHA1,
    Algorithm.SHA256: common_pb2.OTP_ALGORITHM_SHA256,
    Algorithm.SHA512: common_pb2.OTP_ALGORITHM_SHA512,
}
_ALGORITHM = {v: k for k, v in _ALGORITHM_PB.items()}
_SEED_FIELDS = ("activation.secret", "activation.otpauth_uri")

Resp = TypeVar("Resp", bound=Message)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def token_message(token: Token, now: float) -> pb.Token:
    """Render a token's public information (never its seed or password hash)."""
    return pb.Token(
        token_id=token.token_id,
        user_id=token.owner_id,
        state=_STATE_PB[token.state],
        algorithm=_ALGORITHM_PB[token.params.algorithm],
        digits=token.params.digits,
        period=token.params.period,
        remaining_seconds=seconds_remaining(now, token.params.period),
        service_id=token.service_id,
        app_user_id=token.app_user_id,
        create_time=_timestamp(token.created_at),
        activation_expire_time=_timestamp(token.activation_expires_at),
    )


def _algorithm(value: common_pb2.OtpAlgorithm.ValueType) -> Algorithm | None:
    if value == common_pb2.OTP_ALGORITHM_UNSPECIFIED:
        return None
    try:
        return _ALGORITHM[value]
    except KeyError:
        raise InvalidArgument(
            "invalid algorithm: must be SHA1, SHA256 or SHA512",
            reason="INVALID_FIELD",
            fields={"algorithm": "must be OTP_ALGORITHM_SHA1, _SHA256 or _SHA512 (unspecified means SHA1)"},
        ) from None


@contextlib.contextmanager
def _request_fields(rename: Mapping[str, str]) -> Iterator[None]:
    """Rename the domain's field names in an error to the request message's field names."""
    try:
        yield
    except KagiError as exc:
        for old, new in rename.items():
            if old in exc.fields:
                exc.fields = {new if k == old else k: v for k, v in exc.fields.items()}
                prefix = f"invalid {old}:"
                if exc.message.startswith(prefix):
                    exc.message = f"invalid {new}:{exc.message[len(prefix) :]}"
        raise


class OtpApi(IdempotentApi, otp_pb2_grpc.OtpServiceServicer):
    """The gRPC face of OtpService."""

    def __init__(self, service: OtpService, ledger: IdempotencyLedger) -> None:
        self._service = service
        self._ledger = ledger
        self._token_ledger = ledger.in_collection(TOKEN_REQUESTS)

    def _token(self, token: Token) -> pb.Token:
        return token_message(token, self._service.now())

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTokenResponse:
        async def act() -> Token:
            with _request_fields({"owner_id": "user_id", "email": "delivery_email"}):
                return await self._service.create(
                    owner_id=request.user_id,
                    email=request.delivery_email,
                    usage_start_password=request.usage_start_password,
                    algorithm=_algorithm(request.algorithm),
                    digits=request.digits or None,
                )

        return await self._once_in_commit(
            request,
            act,
            lambda token: pb.CreateTokenResponse(token=self._token(token)),
            pb.CreateTokenResponse,
            secret_request=("usage_start_password",),
            subject=request.user_id,
        )

    async def ActivateToken(
        self, request: pb.ActivateTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.ActivateTokenResponse:
        async def act() -> Activation:
            with _request_fields({"user_id": "app_user_id"}):
                return await self._service.activate(
                    service_id=request.service_id,
                    app_user_id=request.app_user_id,
                    usage_start_password=request.usage_start_password,
                    consent=request.consent,
                )

        def answer(activation: Activation) -> pb.ActivateTokenResponse:
            seed = activation.seed
            return pb.ActivateTokenResponse(
                token=self._token(activation.token),
                activation=common_pb2.AppActivation(
                    secret=seed.secret_base32,
                    otpauth_uri=seed.key_uri,
                    algorithm=_ALGORITHM_PB[seed.params.algorithm],
                    digits=seed.params.digits,
                    period=seed.params.period,
                    activation_id=activation.activation_id,
                ),
            )

        token_id = await self._service.token_for_service(request.service_id)
        if token_id is None:
            check_request_id(request.request_id)
            return answer(await act())
        return await self._once_in_commit(
            request,
            act,
            answer,
            pb.ActivateTokenResponse,
            secret_request=("usage_start_password",),
            secret_response=_SEED_FIELDS,
            subject=f"{request.service_id}/{request.app_user_id}",
            ledger=self._token_ledger,
            aggregate=token_id,
        )

    async def ConfirmRegistration(
        self, request: pb.ConfirmRegistrationRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmRegistrationResponse:
        async def act() -> Token:
            with _request_fields({"user_id": "app_user_id"}):
                return await self._service.confirm_registration(
                    service_id=request.service_id,
                    app_user_id=request.app_user_id,
                    activation_id=request.activation_id,
                )

        def answer(token: Token) -> pb.ConfirmRegistrationResponse:
            return pb.ConfirmRegistrationResponse(token=self._token(token))

        token_id = await self._service.token_for_service(request.service_id)
        if token_id is None:
            check_request_id(request.request_id)
            return answer(await act())
        return await self._once_in_commit(
            request,
            act,
            answer,
            pb.ConfirmRegistrationResponse,
            subject=f"{request.service_id}/{request.app_user_id}",
            ledger=self._token_ledger,
            aggregate=token_id,
        )

    async def VerifyCode(
        self, request: pb.VerifyCodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyCodeResponse:
        check_request_id(request.request_id)
        verified = await self._service.verify(request.token_id, request.code, request_id=request.request_id)
        otp_verifications.labels(verified.result.verdict.value).inc()
        verified.result.raise_for_failure()
        return pb.VerifyCodeResponse(token=self._token(verified.token))

    async def GetToken(self, request: pb.GetTokenRequest, context: grpc.aio.ServicerContext) -> pb.GetTokenResponse:
        token = await self._service.get(request.token_id)
        return pb.GetTokenResponse(token=self._token(token))

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTokensResponse:
        with _request_fields({"owner_id": "user_id"}):
            tokens, next_page = await self._service.list_for_user(
                request.user_id, page_size=request.page_size, page_token=request.page_token
            )
        return pb.ListTokensResponse(tokens=[self._token(t) for t in tokens], next_page_token=next_page)

    async def DisableToken(
        self, request: pb.DisableTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.DisableTokenResponse:
        async def act() -> pb.DisableTokenResponse:
            return pb.DisableTokenResponse(token=self._token(await self._service.disable(request.token_id)))

        return await self._once(request, act, pb.DisableTokenResponse, subject=request.token_id)

    async def UnlockToken(
        self, request: pb.UnlockTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnlockTokenResponse:
        async def act() -> pb.UnlockTokenResponse:
            return pb.UnlockTokenResponse(token=self._token(await self._service.unlock(request.token_id)))

        return await self._once(request, act, pb.UnlockTokenResponse, subject=request.token_id)

    async def ReissueToken(
        self, request: pb.ReissueTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReissueTokenResponse:
        async def act() -> pb.ReissueTokenResponse:
            with _request_fields({"email": "delivery_email"}):
                token = await self._service.reissue(
                    request.token_id,
                    email=request.delivery_email,
                    usage_start_password=request.usage_start_password,
                )
            return pb.ReissueTokenResponse(token=self._token(token))

        return await self._once(
            request,
            act,
            pb.ReissueTokenResponse,
            secret_request=("usage_start_password",),
            subject=request.token_id,
        )

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeTokenResponse:
        async def act() -> pb.RevokeTokenResponse:
            return pb.RevokeTokenResponse(token=self._token(await self._service.revoke(request.token_id)))

        return await self._once(request, act, pb.RevokeTokenResponse, subject=request.token_id)


def binding(api: OtpApi) -> ServiceBinding:
    """Register the API on a server with its per-method allow-list."""
    return ServiceBinding(
        name=SERVICE_NAME,
        register=lambda server: otp_pb2_grpc.add_OtpServiceServicer_to_server(api, server),
        allowed_roles=ALLOWED_ROLES,
    )
