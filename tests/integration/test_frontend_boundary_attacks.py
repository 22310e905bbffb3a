"""The review's attacks by a bank front-end (`frontend` role) on another customer's credentials, each refused with
PERMISSION_DENIED and changing nothing: renewing the victim's certificate onto the attacker's key, driving the
victim's setup steps with the victim's certificate relayed as metadata, and reissuing, disabling or listing the
victim's token. A front-end reaches UserService and the CA's public readers only, and relays no certificate."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import Message

from gateway.tls import ascii_rfc4514
from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.enrollment.v1 import enrollment_pb2, enrollment_pb2_grpc, user_pb2, user_pb2_grpc
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime.grpc_client import error_from_rpc, open_channel
from kagi.runtime.grpc_server import CLIENT_CERT_SERIAL_HEADER, CLIENT_CERT_SHA256_HEADER, CLIENT_CERT_SUBJECT_HEADER
from kagi.runtime.settings import TlsFiles
from tests.integration.gateway.gateway_support import MOBILE, USAGE_START_PASSWORD, GatewayCustomer, GatewayStack
from tests.integration.gateway.gateway_support import open_gateway_stack as open_stack
from tests.support.identities import issue_internal_identity, make_key_and_csr

ATTACKER_MAIL = "attacker@evil.example"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return the real CA, OTP and enrollment services (and the gateway) with mTLS on free loopback ports."""
    running = await open_stack(tmp_path)
    yield running
    await running.close()


async def issue_frontend(stack: GatewayStack) -> TlsFiles:
    """Return a bank front-end's mTLS identity: a new key, certified by the CA at the operator's request."""
    return await issue_internal_identity(stack.ca("operator"), "frontend", stack.workdir / "frontend", stack.root_file)


def channel_as(stack: GatewayStack, tls: TlsFiles, component: str) -> grpc.aio.Channel:
    """Return a channel to a component with the `tls` identity, closed with the stack."""
    channel = open_channel(stack.target(component), tls, server_name="localhost")
    stack.channels.append(channel)
    return channel


def relayed(victim: GatewayCustomer) -> tuple[tuple[str, str], ...]:
    """Return the victim's certificate as the gateway would relay it (serial, SHA-256 of the DER, subject)."""
    assert victim.certificate is not None
    certificate = x509.load_pem_x509_certificate(victim.certificate.cert_file.read_bytes())
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return (
        (CLIENT_CERT_SERIAL_HEADER, victim.serial_hex),
        (CLIENT_CERT_SHA256_HEADER, fingerprint),
        (CLIENT_CERT_SUBJECT_HEADER, ascii_rfc4514(certificate.subject)),
    )


async def refusal(call: Awaitable[Message]) -> tuple[grpc.StatusCode, str]:
    """Await a call that must fail and answers its status code and ErrorInfo reason."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value.code(), error_from_rpc(failure.value).reason


async def delivered_mail(stack: GatewayStack) -> list[str]:
    """Flush the enrollment's outbox and lists the recipients of every mail the SMTP server got."""
    await stack.components["enrollment"].deliver_mail_now()
    return [str(message["To"]) for message in stack.smtp.inbox.messages]


async def subject_id(stack: GatewayStack, serial_hex: str) -> str:
    """Return the user id the CA bound a customer certificate to (asked as the operator)."""
    reply = await stack.ca("operator").GetCertificate(ca_pb2.GetCertificateRequest(serial_number=serial_hex))
    return reply.certificate.subject_id


async def test_frontend_cannot_renew_a_victims_certificate_onto_its_own_key(stack: GatewayStack) -> None:
    """RenewCertificate of a customer's certificate with the attacker's CSR, as a front-end, is PERMISSION_DENIED
    (CALLER_NOT_ALLOWED): the CA issues nothing for the victim and the victim's certificate stays active."""
    victim = await GatewayCustomer(stack).through_step4()
    user_id = await subject_id(stack, victim.serial_hex)
    operator = stack.ca("operator")
    before = await operator.ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=user_id))
    assert [c.serial_number for c in before.certificates] == [victim.serial_hex]

    _key, attacker_csr = make_key_and_csr("attacker")
    ca = ca_pb2_grpc.CertificateAuthorityServiceStub(channel_as(stack, await issue_frontend(stack), "ca"))
    renewal = ca_pb2.RenewCertificateRequest(
        request_id=uuid.uuid4().hex, serial_number=victim.serial_hex, csr=attacker_csr, revoke_previous=True
    )
    assert await refusal(ca.RenewCertificate(renewal)) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")

    after = await operator.ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=user_id))
    assert after == before
    assert after.certificates[0].state == ca_pb2.Certificate.STATE_ACTIVE


async def test_frontend_cannot_drive_a_victims_setup_with_a_relayed_certificate(stack: GatewayStack) -> None:
    """CertificateLogin, PasswordLogin, RequestToken and VerifyFirstCode on a victim's enrollment, as a front-end
    relaying the victim's certificate serial and fingerprint, are each PERMISSION_DENIED; the enrollment stays at
    CERTIFICATE_ISSUED and no mail is sent."""
    victim = await GatewayCustomer(stack).through_step4()
    path = f"/v1/enrollments/{victim.enrollment_id}"
    async with stack.client(victim.certificate) as client:  # step 4 retired the session token
        answer = await client.request("GET", path)
    assert answer.status == 200, answer.body
    assert answer.body["state"] == "CERTIFICATE_ISSUED"
    mail_before = await delivered_mail(stack)

    enrollment = enrollment_pb2_grpc.EnrollmentServiceStub(channel_as(stack, await issue_frontend(stack), "enrollment"))
    metadata = relayed(victim)
    eid = victim.enrollment_id
    steps: dict[str, Callable[[], Awaitable[Message]]] = {
        "CertificateLogin": lambda: enrollment.CertificateLogin(
            enrollment_pb2.CertificateLoginRequest(request_id=uuid.uuid4().hex, enrollment_id=eid), metadata=metadata
        ),
        "PasswordLogin": lambda: enrollment.PasswordLogin(
            enrollment_pb2.PasswordLoginRequest(
                request_id=uuid.uuid4().hex, enrollment_id=eid, login_password="Passw0rd"
            ),
            metadata=metadata,
        ),
        "RequestToken": lambda: enrollment.RequestToken(
            enrollment_pb2.RequestTokenRequest(
                request_id=uuid.uuid4().hex,
                enrollment_id=eid,
                mobile_email=ATTACKER_MAIL,
                mobile_email_confirmation=ATTACKER_MAIL,
                usage_start_password="1111",
                usage_start_password_confirmation="1111",
            ),
            metadata=metadata,
        ),
        "VerifyFirstCode": lambda: enrollment.VerifyFirstCode(
            enrollment_pb2.VerifyFirstCodeRequest(request_id=uuid.uuid4().hex, enrollment_id=eid, otp="123456"),
            metadata=metadata,
        ),
    }
    for step, attempt in steps.items():
        code, reason = await refusal(attempt())
        assert code == grpc.StatusCode.PERMISSION_DENIED, (step, code, reason)
        assert reason in ("CALLER_NOT_ALLOWED", "CLIENT_CERT_NOT_RELAYED"), (step, reason)

    async with stack.client(victim.certificate) as client:
        answer = await client.request("GET", path)
    assert answer.status == 200, answer.body
    assert answer.body["state"] == "CERTIFICATE_ISSUED"
    assert await delivered_mail(stack) == mail_before


@pytest.mark.parametrize(
    ("component", "rpc"),
    [
        ("ca", "GetCaCertificates"),
        ("ca", "GetCrl"),
        ("enrollment", "GetJwks"),
        ("enrollment", "GetUser"),
    ],
)
async def test_frontend_relaying_a_certificate_is_refused_even_where_it_may_call(
    stack: GatewayStack, component: str, rpc: str
) -> None:
    """A front-end sending relayed client-certificate metadata is PERMISSION_DENIED (CLIENT_CERT_NOT_RELAYED) even
    on an RPC its role may call: only the kagi gateway relays a certificate it verified."""
    victim = await GatewayCustomer(stack).through_step4()
    user_id = await subject_id(stack, victim.serial_hex)
    channel = channel_as(stack, await issue_frontend(stack), component)
    calls: dict[str, Callable[[], Awaitable[Message]]] = {
        "GetCaCertificates": lambda: ca_pb2_grpc.CertificateAuthorityServiceStub(channel).GetCaCertificates(
            ca_pb2.GetCaCertificatesRequest(), metadata=relayed(victim)
        ),
        "GetCrl": lambda: ca_pb2_grpc.CertificateAuthorityServiceStub(channel).GetCrl(
            ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER), metadata=relayed(victim)
        ),
        "GetJwks": lambda: user_pb2_grpc.UserServiceStub(channel).GetJwks(
            user_pb2.GetJwksRequest(), metadata=relayed(victim)
        ),
        "GetUser": lambda: user_pb2_grpc.UserServiceStub(channel).GetUser(
            user_pb2.GetUserRequest(user_id=user_id), metadata=relayed(victim)
        ),
    }
    assert await refusal(calls[rpc]()) == (grpc.StatusCode.PERMISSION_DENIED, "CLIENT_CERT_NOT_RELAYED")


async def test_frontend_cannot_reissue_disable_or_list_a_victims_token(stack: GatewayStack) -> None:
    """ReissueToken, DisableToken and ListTokens on a victim's token, as a front-end, are PERMISSION_DENIED
    (CALLER_NOT_ALLOWED): the victim's token keeps its state, no other token appears, and nothing is mailed to
    the attacker."""
    victim = await GatewayCustomer(stack).through_step4()
    assert victim.certificate is not None
    path = f"/v1/enrollments/{victim.enrollment_id}"
    token_request = {
        "mobile_email": MOBILE,
        "mobile_email_confirmation": MOBILE,
        "usage_start_password": USAGE_START_PASSWORD,
        "usage_start_password_confirmation": USAGE_START_PASSWORD,
    }
    async with stack.client(victim.certificate) as client:
        for route, body in (
            ("/certificate-login", {}),
            ("/password-login", {"login_password": "Passw0rd"}),
            ("/token", token_request),
        ):
            answer = await client.request("POST", path + route, body)
            assert answer.status == 200, (route, answer.body)
    await stack.mail_ids()
    user_id = await subject_id(stack, victim.serial_hex)
    operator_otp = otp_pb2_grpc.OtpServiceStub(channel_as(stack, stack.identity("operator"), "otp"))
    before = await operator_otp.ListTokens(otp_pb2.ListTokensRequest(user_id=user_id))
    assert len(before.tokens) == 1
    token_id = before.tokens[0].token_id

    otp = otp_pb2_grpc.OtpServiceStub(channel_as(stack, await issue_frontend(stack), "otp"))
    attacks: dict[str, Callable[[], Awaitable[Message]]] = {
        "ReissueToken": lambda: otp.ReissueToken(
            otp_pb2.ReissueTokenRequest(
                request_id=uuid.uuid4().hex,
                token_id=token_id,
                delivery_email=ATTACKER_MAIL,
                usage_start_password="1111",
            )
        ),
        "DisableToken": lambda: otp.DisableToken(
            otp_pb2.DisableTokenRequest(request_id=uuid.uuid4().hex, token_id=token_id)
        ),
        "ListTokens": lambda: otp.ListTokens(otp_pb2.ListTokensRequest(user_id=user_id)),
    }
    for name, attempt in attacks.items():
        refused = await refusal(attempt())
        assert refused == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED"), (name, refused)

    after = await operator_otp.ListTokens(otp_pb2.ListTokensRequest(user_id=user_id))
    assert [(t.token_id, t.state) for t in after.tokens] == [(t.token_id, t.state) for t in before.tokens]
    assert after.tokens[0].state == otp_pb2.Token.STATE_PENDING_ACTIVATION
    assert ATTACKER_MAIL not in await delivered_mail(stack)
