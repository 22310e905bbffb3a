"""UserService.Authenticate against the real CA, OTP and enrollment services over mTLS: the access token a login
answers (checked with joserfc, not the server's PyJWT), the front-end path with the certificate passed as PEM,
refusals that tell nobody which of login ID, certificate or password was wrong, and the enrollment a relayed
certificate finds."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from joserfc.errors import BadSignatureError, ExpiredTokenError

from kagi.ca.v1 import ca_pb2
from kagi.clock import FakeClock
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.enrollment.v1 import user_pb2 as upb
from tests.support.enrollment_flow import Customer, Stack, relayed
from tests.support.frontend import (
    completed,
    frontend_users,
    issue_frontend,
    jwks,
    refused,
    self_signed_client_certificate,
    verify_token,
    x5t_s256,
)

PASSWORD = "Passw0rd"


async def test_login_answers_the_user_and_a_certificate_bound_token_that_joserfc_verifies(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """Authenticate (gateway, certificate relayed) answers the ACTIVE user with an ACTIVE token and a Bearer
    access token that joserfc verifies against GetJwks: ES256, a kid that names a published key (its RFC 7638
    thumbprint), aud kagi, sub the user, amr [swk, pwd], cnf.x5t#S256 the SHA-256 of the customer certificate's
    DER, at most 15 minutes of life; joserfc refuses it once expired or with a changed signature."""
    customer = await completed(stack, workdir, clock)
    reply = await customer.login()
    assert reply.user.state == upb.User.STATE_ACTIVE
    assert reply.user.token_state == upb.User.TOKEN_STATE_ACTIVE
    assert reply.user.login_id == customer.login_id
    assert reply.user.lock_reason == upb.User.LOCK_REASON_UNSPECIFIED
    assert reply.token_type == "Bearer"

    key_set = await jwks(stack)
    assert key_set == await jwks(stack, "developer")
    assert all(key["kty"] == "EC" and key["crv"] == "P-256" and "d" not in key for key in key_set["keys"])
    verified = verify_token(reply.access_token, key_set, clock.now())
    assert verified.header["alg"] == "ES256"
    assert verified.header["kid"] in {key["kid"] for key in key_set["keys"]}
    claims = verified.claims
    assert claims["aud"] == "kagi"
    assert claims["sub"] == reply.user.user_id
    assert claims["amr"] == ["swk", "pwd"]
    assert claims["sid"]
    assert claims["cnf"] == {"x5t#S256": x5t_s256(customer.certificate_pem)}
    assert 0 < claims["exp"] - claims["iat"] <= 900
    assert reply.expires_in == claims["exp"] - claims["iat"]

    with pytest.raises(ExpiredTokenError):
        verify_token(reply.access_token, key_set, claims["exp"])
    head, body, signature = reply.access_token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'QQQQ'}"
    with pytest.raises(BadSignatureError):
        verify_token(forged, key_set, clock.now())


async def test_a_frontend_logs_in_with_the_certificate_it_received_and_no_other(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """A bank front-end (`frontend` identity from the internal CA) logs the customer in with the certificate it
    received passed as PEM, and the token is bound to it; a self-signed certificate, a certificate of the
    internal CA and the customer's own certificate after the operator revoked it are UNAUTHENTICATED
    CERTIFICATE_INVALID; without client_certificate_pem the answer is INVALID_ARGUMENT naming
    client_certificate_pem, and certificate metadata relayed by a front-end is PERMISSION_DENIED
    CLIENT_CERT_NOT_RELAYED (only the gateway relays)."""
    customer = await completed(stack, workdir, clock)
    frontend = await issue_frontend(stack, workdir / "frontend")
    users = frontend_users(stack)

    def login(pem: str, metadata: list[tuple[str, str]] | None = None) -> grpc.aio.UnaryUnaryCall:
        request = upb.AuthenticateRequest(
            client_certificate_pem=pem, login_id=customer.login_id, login_password=PASSWORD
        )
        return users.Authenticate(request, metadata=metadata)

    reply = await login(customer.certificate_pem)
    assert reply.user.state == upb.User.STATE_ACTIVE
    claims = verify_token(reply.access_token, await jwks(stack, "frontend"), clock.now()).claims
    assert claims["cnf"] == {"x5t#S256": x5t_s256(customer.certificate_pem)}
    assert claims["amr"] == ["swk", "pwd"]

    missing = await refused(login(""))
    assert missing.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_certificate_pem" in missing.fields
    relaying = await refused(login("", customer.cert_metadata))
    assert (relaying.code, relaying.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CLIENT_CERT_NOT_RELAYED")

    for foreign in (self_signed_client_certificate(), frontend.certificate_pem):
        refusal = await refused(login(foreign))
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_INVALID")

    serial = format(x509.load_pem_x509_certificate(customer.certificate_pem.encode()).serial_number, "x")
    await stack.ca().RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id=uuid.uuid4().hex, serial_number=serial, reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE
        )
    )
    revoked = await refused(login(customer.certificate_pem))
    assert (revoked.code, revoked.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_INVALID")


async def test_unknown_login_foreign_certificate_and_wrong_password_are_refused_alike(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """An unknown login ID, another customer's certificate with the right login ID and password (either way
    round), and a wrong password with the own certificate all answer UNAUTHENTICATED LOGIN_FAILED with the
    same message and no ErrorInfo metadata (no remaining attempts, nothing that tells them apart)."""
    alice = await completed(stack, workdir, clock)
    bob = await completed(stack, workdir, clock)
    users = alice.users()

    def login_with(certificate_of: Customer, login_id: str, password: str) -> grpc.aio.UnaryUnaryCall:
        request = upb.AuthenticateRequest(login_id=login_id, login_password=password)
        return users.Authenticate(request, metadata=certificate_of.cert_metadata)

    refusals = [
        await refused(login_with(alice, f"nobody{uuid.uuid4().hex[:6]}", PASSWORD)),
        await refused(login_with(bob, alice.login_id, PASSWORD)),
        await refused(login_with(alice, bob.login_id, PASSWORD)),
        await refused(login_with(alice, alice.login_id, "Wrong-pass-1")),
    ]
    for refusal in refusals:
        assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
        assert refusal.reason == "LOGIN_FAILED"
        assert refusal.metadata == {}
        assert refusal.fields == {}
    assert len({refusal.message for refusal in refusals}) == 1

    for customer in (alice, bob):  # one refusal each locks nobody
        assert (await customer.login()).user.state == upb.User.STATE_ACTIVE


async def test_a_half_done_setup_cannot_log_in(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """A user whose setup stopped after step 6 (certificate and login password proven, no token yet) is
    refused a login with FAILED_PRECONDITION SETUP_INCOMPLETE, and GetUser shows SETTING_UP with no token."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5, customer.step6):
        await step()
    refusal = await refused(customer.login())
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SETUP_INCOMPLETE")
    listed = await customer.users("developer").ListUsers(upb.ListUsersRequest(company_name="株式会社サンプル"))
    (user,) = [u for u in listed.users if u.login_id == customer.login_id]
    assert user.state == upb.User.STATE_SETTING_UP
    assert user.token_state == upb.User.TOKEN_STATE_NONE


async def test_get_current_enrollment_finds_the_setup_a_relayed_certificate_was_issued_for(
    stack: Stack, workdir: Path
) -> None:
    """GetCurrentEnrollment (gateway) with the relayed certificate of a setup left after step 4 answers that
    enrollment (CERTIFICATE_ISSUED); with a certificate the bank never issued it answers NOT_FOUND."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3, customer.step4):
        await step()
    found = await stack.enrollment().GetCurrentEnrollment(
        pb.GetCurrentEnrollmentRequest(), metadata=customer.cert_metadata
    )
    assert found.enrollment.enrollment_id == customer.enrollment_id
    assert found.enrollment.state == pb.Enrollment.STATE_CERTIFICATE_ISSUED

    unknown = await refused(
        stack.enrollment().GetCurrentEnrollment(
            pb.GetCurrentEnrollmentRequest(), metadata=relayed(self_signed_client_certificate())
        )
    )
    assert unknown.code == grpc.StatusCode.NOT_FOUND
