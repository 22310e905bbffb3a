"""Per-RPC caller identities of the OTP service over mTLS: every (method, role) pair is allowed or refused exactly as
the issue's table says, a customer certificate is no service identity, and the gateway may not create tokens."""

from __future__ import annotations

import grpc
import pytest

from kagi.otp.v1 import otp_pb2 as pb
from tests.integration.otp.otp_grpc_support import ROLES, OtpCluster, failing

ALLOWED = {
    "CreateToken": {"enrollment"},
    "ActivateToken": {"enrollment"},
    "ConfirmRegistration": {"enrollment"},
    "VerifyCode": {"enrollment"},
    "GetToken": {"enrollment", "operator"},
    "ListTokens": {"enrollment", "operator"},
    "DisableToken": {"enrollment", "operator"},
    "ReissueToken": {"enrollment", "operator"},
    "UnlockToken": {"operator"},
}
REQUESTS = {
    "CreateToken": pb.CreateTokenRequest(),
    "ActivateToken": pb.ActivateTokenRequest(),
    "ConfirmRegistration": pb.ConfirmRegistrationRequest(),
    "VerifyCode": pb.VerifyCodeRequest(),
    "GetToken": pb.GetTokenRequest(),
    "ListTokens": pb.ListTokensRequest(),
    "DisableToken": pb.DisableTokenRequest(),
    "ReissueToken": pb.ReissueTokenRequest(),
    "UnlockToken": pb.UnlockTokenRequest(),
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_every_method_admits_exactly_its_roles(cluster: OtpCluster) -> None:
    """Each of the 9 methods called by each of the 6 roles: an allowed role gets past the allow-list (its empty
    request is then refused as INVALID_ARGUMENT), every other role gets PERMISSION_DENIED naming its role."""
    await cluster.start()
    seen: dict[tuple[str, str], grpc.StatusCode] = {}
    for role in ROLES:
        stub = cluster.stub(role)
        for method, request in REQUESTS.items():
            seen[(method, role)] = (await failing(getattr(stub, method)(request))).code
    expected = {
        (method, role): grpc.StatusCode.INVALID_ARGUMENT
        if role in ALLOWED[method]
        else grpc.StatusCode.PERMISSION_DENIED
        for method in REQUESTS
        for role in ROLES
    }
    assert seen == expected


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_gateway_may_not_create_tokens(cluster: OtpCluster) -> None:
    """A well-formed CreateToken from the gateway's identity is PERMISSION_DENIED (reason CALLER_NOT_ALLOWED)."""
    await cluster.start()
    failure = await failing(
        cluster.stub("gateway").CreateToken(
            pb.CreateTokenRequest(user_id="user-1", delivery_email="a@example.jp", usage_start_password="1234")
        )
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert failure.metadata == {"role": "gateway", "method": "CreateToken"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_customer_certificate_is_not_a_service_identity(cluster: OtpCluster) -> None:
    """A customer-CA certificate fails the TLS handshake (the port trusts only the internal CA): UNAVAILABLE."""
    await cluster.start()
    failure = await failing(cluster.stub("customer").GetToken(pb.GetTokenRequest(token_id="0" * 32)))
    assert failure.code == grpc.StatusCode.UNAVAILABLE
