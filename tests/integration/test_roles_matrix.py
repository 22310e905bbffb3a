"""Who may call what, against the running services: every RPC of every kagi gRPC service, called with every
role's certificate, a customer's certificate and no certificate, gets what DESIGN.md section 3 says.

The policy below is written from the design, not imported from the allow-lists in code, so the test checks
the code against the design. RPCs are enumerated from the proto descriptors: an RPC added to a proto and not
decided here fails the test until someone writes down who may call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from kagi.ca.v1 import ca_pb2
from kagi.enrollment.v1 import enrollment_pb2, user_pb2
from kagi.otp.v1 import otp_pb2
from kagi.runtime.grpc_client import error_from_rpc, open_channel
from kagi.runtime.identity import Role
from kagi.runtime.settings import TlsFiles
from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack, open_gateway_stack
from tests.support.identities import issue_internal_identity

CA = "kagi.ca.v1.CertificateAuthorityService"
OTP = "kagi.otp.v1.OtpService"
ENROLLMENT = "kagi.enrollment.v1.EnrollmentService"
USER = "kagi.enrollment.v1.UserService"

# Every service the API's proto files define, and the component whose port serves it (by proto package), so a
# service added to one of these files is called (and must be decided) too.
COMPONENTS = {"kagi.ca.v1": "ca", "kagi.otp.v1": "otp", "kagi.enrollment.v1": "enrollment"}
SERVICES: list[tuple[ServiceDescriptor, str]] = [
    (service, COMPONENTS[proto.package])
    for proto in (ca_pb2.DESCRIPTOR, otp_pb2.DESCRIPTOR, enrollment_pb2.DESCRIPTOR, user_pb2.DESCRIPTOR)
    for service in proto.services_by_name.values()
]

# DESIGN.md section 3, "Who may call what", per RPC.
EVERY_INTERNAL_ROLE = frozenset({"ca", "otp", "enrollment", "gateway", "operator", "frontend"})
CA_PUBLIC_READERS = ("GetCrl", "GetCertificateStatus", "AnswerOcsp", "GetCaCertificates", "WatchRevocations")
CA_MANAGEMENT = (
    "IssueCertificate",
    "GetCertificate",
    "ListCertificates",
    "RevokeCertificate",
    "RevokeSubjectCertificates",
    "RenewCertificate",
)
SETUP_STEPS = (
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
)
POLICY: dict[str, dict[str, frozenset[str]]] = {
    CA: {
        **dict.fromkeys(CA_PUBLIC_READERS, EVERY_INTERNAL_ROLE),
        **dict.fromkeys(CA_MANAGEMENT, frozenset({"enrollment", "operator"})),
    },
    OTP: {
        **dict.fromkeys(
            ("CreateToken", "ActivateToken", "ConfirmRegistration", "VerifyCode"), frozenset({"enrollment"})
        ),
        **dict.fromkeys(
            ("GetToken", "ListTokens", "DisableToken", "ReissueToken", "RevokeToken"),
            frozenset({"enrollment", "operator"}),
        ),
        "UnlockToken": frozenset({"operator"}),
    },
    ENROLLMENT: {
        **dict.fromkeys(
            ("RegisterApplication", "UnlockApplication", "ListApplications", "ReissueCertificate", "ReopenEnrollment"),
            frozenset({"operator"}),
        ),
        "GetEnrollment": frozenset({"gateway", "operator"}),
        **dict.fromkeys((*SETUP_STEPS, "GetCurrentEnrollment"), frozenset({"gateway"})),
    },
    USER: {
        **dict.fromkeys(
            ("Authenticate", "VerifyOtp", "ConfirmTransaction", "EndSession", "ChangePassword"),
            frozenset({"gateway", "frontend"}),
        ),
        **dict.fromkeys(("GetJwks", "GetUser"), frozenset({"gateway", "frontend", "operator"})),
        # What mints or replaces a credential: the gateway (which proves possession of the certificate) only.
        **dict.fromkeys(("ResetPassword", "RenewCertificate", "ReissueToken"), frozenset({"gateway"})),
        **dict.fromkeys(
            ("ListUsers", "LockUser", "UnlockUser", "IssuePasswordReset", "AllowTokenReissue", "DisableUserToken"),
            frozenset({"operator"}),
        ),
    },
}

# Callers with no kagi role: refused on every RPC, by the allow-list or by the TLS handshake already.
CUSTOMER = "customer certificate"
NO_CERTIFICATE = "no certificate"

CONCURRENCY = 48
CALL_TIMEOUT = 10.0
DEV_ROLES = ("ca", "otp", "enrollment", "gateway", "operator")


@dataclass(frozen=True)
class Outcome:
    """What one call got: the status code name and the ErrorInfo reason ("" when OK)."""

    code: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.code}/{self.reason}" if self.reason else self.code


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return the real CA, OTP and enrollment services (and the gateway) with mTLS on free loopback ports."""
    running = await open_gateway_stack(tmp_path)
    yield running
    await running.close()


async def callers(stack: GatewayStack, directory: Path) -> dict[str, dict[str, grpc.aio.Channel]]:
    """Return, per caller name, a channel to each component: every role, a customer, and no certificate."""
    credentials: dict[str, TlsFiles] = {}
    for role in Role:
        if role.value in DEV_ROLES:
            credentials[role.value] = stack.pki.tls(role.value)
        else:
            credentials[role.value] = await issue_internal_identity(
                stack.ca("operator"), role.value, directory, stack.root_file
            )
    customer = await GatewayCustomer(stack).through_step4()
    assert customer.certificate is not None
    credentials[CUSTOMER] = customer.certificate

    components = sorted({component for _, component in SERVICES})
    channels: dict[str, dict[str, grpc.aio.Channel]] = {}
    for name, tls in credentials.items():
        channels[name] = {c: open_channel(stack.target(c), tls, server_name="localhost") for c in components}
    root_only = grpc.ssl_channel_credentials(root_certificates=stack.root_file.read_bytes())
    override = [("grpc.ssl_target_name_override", "localhost")]
    channels[NO_CERTIFICATE] = {c: grpc.aio.secure_channel(stack.target(c), root_only, override) for c in components}
    for per_component in channels.values():
        stack.channels.extend(per_component.values())
    return channels


async def call(channel: grpc.aio.Channel, method: MethodDescriptor) -> Outcome:
    """Send the method's empty request; a stream is read up to its first message or error, then cancelled."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = GetMessageClass(method.input_type)()
    response_class = GetMessageClass(method.output_type)
    serialize, deserialize = type(request).SerializeToString, response_class.FromString
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=serialize, response_deserializer=deserialize)
            reading = stream(request, timeout=CALL_TIMEOUT)
            try:
                await reading.read()
            finally:
                reading.cancel()
        else:
            unary = channel.unary_unary(path, request_serializer=serialize, response_deserializer=deserialize)
            await unary(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code().name, error_from_rpc(exc).reason)
    return Outcome("OK")


def judge(service: str, method: str, caller: str, outcome: Outcome) -> str | None:
    """Return None when `outcome` is what the policy wants for `caller`, else a line saying what went wrong."""
    where = f"{service}/{method} as {caller}: "
    if caller in (CUSTOMER, NO_CERTIFICATE):
        if (outcome.code, outcome.reason) == ("UNAUTHENTICATED", "CALLER_NOT_AUTHENTICATED"):
            return None
        if outcome.code == "UNAVAILABLE":  # the TLS handshake refused the certificate (or its absence)
            return None
        return where + f"expected UNAUTHENTICATED/CALLER_NOT_AUTHENTICATED (or UNAVAILABLE), got {outcome}"
    allowed = POLICY[service][method]
    if caller not in allowed:
        if (outcome.code, outcome.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED"):
            return None
        return where + f"expected PERMISSION_DENIED/CALLER_NOT_ALLOWED, got {outcome}"
    if outcome.code == "UNIMPLEMENTED":
        return where + "UNIMPLEMENTED: every RPC must be served"
    if outcome.code in ("INTERNAL", "UNKNOWN"):
        # A servicer that lacks the method falls back to the generated base class, whose NotImplementedError
        # the kagi interceptor answers as INTERNAL; an empty request must never crash a served method either.
        return where + f"{outcome}: not implemented, or crashed on an empty request"
    if outcome.reason in ("CALLER_NOT_ALLOWED", "CALLER_NOT_AUTHENTICATED"):
        return where + f"allowed by the design, refused: {outcome}"
    return None


def undecided_rpcs() -> list[str]:
    """Return the RPCs in the protos the policy does not decide, and policy entries no proto has."""
    problems = []
    for descriptor, _ in SERVICES:
        methods = {method.name for method in descriptor.methods}
        decided = POLICY.get(descriptor.full_name, {})
        if not decided:
            problems.append(f"{descriptor.full_name}: a service not in the test's policy: decide who may call it")
        problems += [
            f"{descriptor.full_name}/{m}: not in the test's policy: decide who may call it"
            for m in methods - decided.keys()
        ]
        problems += [
            f"{descriptor.full_name}/{m}: in the test's policy, not in the proto" for m in decided.keys() - methods
        ]
    return sorted(problems)


def test_the_policy_decides_every_rpc_of_every_service() -> None:
    """Every RPC the protos define has a decided set of callers in this test's policy, and nothing more."""
    assert sorted(descriptor.full_name for descriptor, _ in SERVICES) == sorted([CA, ENROLLMENT, OTP, USER])
    assert undecided_rpcs() == []


async def test_every_caller_gets_what_the_design_allows_on_every_rpc(stack: GatewayStack, tmp_path: Path) -> None:
    """Each role may call exactly the RPCs DESIGN.md section 3 gives it and is PERMISSION_DENIED (CALLER_NOT_ALLOWED)
    on every other; a customer certificate and no certificate are refused on every RPC; every RPC is served."""
    channels = await callers(stack, tmp_path / "identities")
    limit = asyncio.Semaphore(CONCURRENCY)

    async def attempt(caller: str, component: str, method: MethodDescriptor) -> tuple[str, str, str, Outcome]:
        async with limit:
            outcome = await call(channels[caller][component], method)
        return method.containing_service.full_name, method.name, caller, outcome

    attempts = [
        attempt(caller, component, method)
        for descriptor, component in SERVICES
        for method in descriptor.methods
        if method.name in POLICY.get(descriptor.full_name, {})
        for caller in channels
    ]
    results = await asyncio.gather(*attempts)

    mismatches = undecided_rpcs()
    mismatches += sorted(filter(None, (judge(*result) for result in results)))
    assert not mismatches, f"{len(mismatches)} calls did not get what the design says:\n" + "\n".join(mismatches)
