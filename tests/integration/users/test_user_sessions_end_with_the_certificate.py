"""Revoking a customer's certificate ends every session bound to it at once, on the front-end path too: a bank
front-end passes no certificate with the access token, so the enrollment service checks the bound one at the CA
on each use."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from kagi.ca.v1 import ca_pb2
from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from tests.support.enrollment_flow import Stack
from tests.support.frontend import FRONTEND, completed, issue_frontend, next_code


async def test_a_revoked_certificate_ends_its_sessions_for_front_ends(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """A front-end logs the customer in with the certificate it received; the token steps up; after the operator
    revokes the certificate (a lost PC), the same token is refused (ACCESS_TOKEN_INVALID) for a step-up and a
    confirmation, and a new login with that certificate is refused (CERTIFICATE_INVALID)."""
    customer = await completed(stack, workdir, clock)
    await issue_frontend(stack, workdir / "frontend")
    users = customer.users(FRONTEND)
    login = await users.Authenticate(
        upb.AuthenticateRequest(
            client_certificate_pem=customer.certificate_pem, login_id=customer.login_id, login_password="Passw0rd"
        )
    )
    user_id = login.user.user_id
    raised = await users.VerifyOtp(
        upb.VerifyOtpRequest(
            user_id=user_id,
            otp=next_code(customer, clock),
            purpose=upb.OTP_PURPOSE_STEP_UP,
            access_token=login.access_token,
        )
    )
    serial = format(x509.load_pem_x509_certificate(customer.certificate_pem.encode()).serial_number, "x")
    await stack.ca().RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id=uuid.uuid4().hex, serial_number=serial, reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as step_up:
        await users.VerifyOtp(
            upb.VerifyOtpRequest(
                user_id=user_id,
                otp=next_code(customer, clock),
                purpose=upb.OTP_PURPOSE_STEP_UP,
                access_token=raised.access_token,
            )
        )
    assert step_up.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ACCESS_TOKEN_INVALID" in str(step_up.value.trailing_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as confirm:
        await users.ConfirmTransaction(
            upb.ConfirmTransactionRequest(
                user_id=user_id,
                transaction_id="after-revocation",
                transaction_summary="振込 1円",
                confirmation_password="Kakunin9",
                otp=next_code(customer, clock),
                access_token=raised.access_token,
            )
        )
    assert confirm.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await users.Authenticate(
            upb.AuthenticateRequest(
                client_certificate_pem=customer.certificate_pem,
                login_id=customer.login_id,
                login_password="Passw0rd",
            )
        )
    assert again.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "CERTIFICATE_INVALID" in str(again.value.trailing_metadata())
