"""Bad input over gRPC, on SQLite and on Redis: each is INVALID_ARGUMENT naming the request's field and leaves the
store exactly as it was; and an unknown service ID is answered exactly like a wrong usage-start password."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from kagi.otp.v1 import otp_pb2_grpc
from tests.integration.otp.otp_grpc_support import (
    USAGE_START_PASSWORD,
    Backend,
    OtpCluster,
    create_pending,
    failing,
    provision,
)

Call = Callable[[otp_pb2_grpc.OtpServiceStub, str, str, str], Awaitable[object]]


def _verify(code: str) -> Call:
    def call(stub: otp_pb2_grpc.OtpServiceStub, token_id: str, service_id: str, user_id: str) -> Awaitable[object]:
        return stub.VerifyCode(pb.VerifyCodeRequest(request_id="bad-verify", token_id=token_id, code=code))

    return call


def _create(password: str) -> Call:
    def call(stub: otp_pb2_grpc.OtpServiceStub, token_id: str, service_id: str, user_id: str) -> Awaitable[object]:
        return stub.CreateToken(
            pb.CreateTokenRequest(
                request_id="bad-create", user_id="user-9", delivery_email="a@example.jp", usage_start_password=password
            )
        )

    return call


def _activate(password: str, consent: bool = True) -> Call:
    def call(stub: otp_pb2_grpc.OtpServiceStub, token_id: str, service_id: str, user_id: str) -> Awaitable[object]:
        return stub.ActivateToken(
            pb.ActivateTokenRequest(
                request_id="bad-activate",
                service_id=service_id,
                app_user_id=user_id,
                usage_start_password=password,
                consent=consent,
            )
        )

    return call


def _create_with_email(email: str) -> Call:
    def call(stub: otp_pb2_grpc.OtpServiceStub, token_id: str, service_id: str, user_id: str) -> Awaitable[object]:
        return stub.CreateToken(pb.CreateTokenRequest(user_id="u", delivery_email=email, usage_start_password="1234"))

    return call


CASES: list[tuple[str, Call, str, str]] = [
    ("code with a letter", _verify("12a456"), "code", "INVALID_CODE_FORMAT"),
    ("code too short", _verify("12345"), "code", "INVALID_CODE_FORMAT"),
    ("code too long", _verify("1234567"), "code", "INVALID_CODE_FORMAT"),
    ("full-width code", _verify("１２３４５６"), "code", "INVALID_CODE_FORMAT"),
    ("3-digit password at creation", _create("123"), "usage_start_password", "INVALID_USAGE_START_PASSWORD"),
    ("9-digit password at creation", _create("123456789"), "usage_start_password", "INVALID_USAGE_START_PASSWORD"),
    ("password with letters at creation", _create("12ab"), "usage_start_password", "INVALID_USAGE_START_PASSWORD"),
    ("3-digit password at activation", _activate("123"), "usage_start_password", "INVALID_USAGE_START_PASSWORD"),
    ("9-digit password at activation", _activate("123456789"), "usage_start_password", "INVALID_USAGE_START_PASSWORD"),
    ("password with letters at activation", _activate("12ab"), "usage_start_password", "INVALID_USAGE_START_PASSWORD"),
    ("full-width password", _activate("１２３４"), "usage_start_password", "INVALID_USAGE_START_PASSWORD"),
    ("consent not given", _activate(USAGE_START_PASSWORD, consent=False), "consent", "CONSENT_REQUIRED"),
    ("bad delivery e-mail", _create_with_email("not-an-address"), "delivery_email", "INVALID_FIELD"),
]


@pytest.mark.parametrize(("case", "call", "field", "reason"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_invalid_argument_naming_the_field_and_changes_nothing(
    cluster: OtpCluster, backend: Backend, case: str, call: Call, field: str, reason: str
) -> None:
    """The call fails with INVALID_ARGUMENT, its reason, a BadRequest violation for exactly the offending request
    field (named in the message too), and every stored entry is byte-for-byte what it was before the call."""
    await cluster.start()
    token = await provision(cluster, register=False)
    pending = await create_pending(cluster, user_id="user-0002")  # still waiting for activation
    stub = cluster.stub("enrollment")
    before = await backend.snapshot()

    failure = await failing(call(stub, token.token_id, pending.service_id, pending.app_user_id))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, case
    assert failure.reason == reason
    assert list(failure.fields) == [field]
    assert field in failure.message
    assert await backend.snapshot() == before


async def test_full_width_digits_are_refused_with_a_message_that_says_so(cluster: OtpCluster) -> None:
    """A full-width code gets a message (Japanese and English) saying full-width digits are not accepted."""
    await cluster.start()
    token = await provision(cluster)
    failure = await failing(
        cluster.stub("enrollment").VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code="１２３４５６"))
    )
    assert "全角数字は使えません" in failure.message
    assert "full-width digits are not accepted" in failure.message


async def test_unknown_service_id_is_answered_exactly_like_a_wrong_password(
    cluster: OtpCluster, clock: FakeClock
) -> None:
    """Activation with an unknown service ID and activation with a wrong usage-start password give the same
    status code, reason, message, metadata and fields: the answer does not reveal which service IDs exist."""
    await cluster.start()
    token = await provision(cluster, register=False)
    pending = await create_pending(cluster, user_id="user-0002")
    gateway = cluster.stub("enrollment")
    unknown_service = "Z" * 10 if pending.service_id != "Z" * 10 else "Y" * 10

    unknown = await failing(
        gateway.ActivateToken(
            pb.ActivateTokenRequest(
                service_id=unknown_service,
                app_user_id=pending.app_user_id,
                usage_start_password=USAGE_START_PASSWORD,
                consent=True,
            )
        )
    )
    wrong_password = await failing(
        gateway.ActivateToken(
            pb.ActivateTokenRequest(
                service_id=pending.service_id,
                app_user_id=pending.app_user_id,
                usage_start_password="00000000",
                consent=True,
            )
        )
    )
    unknown_user = await failing(
        gateway.ActivateToken(
            pb.ActivateTokenRequest(
                service_id=pending.service_id,
                app_user_id=token.app_user_id,
                usage_start_password=USAGE_START_PASSWORD,
                consent=True,
            )
        )
    )
    assert unknown.code == grpc.StatusCode.UNAUTHENTICATED
    assert unknown.reason == "ACTIVATION_FAILED"
    assert unknown == wrong_password == unknown_user
