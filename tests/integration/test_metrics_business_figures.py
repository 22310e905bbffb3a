"""The figures an operator alerts on reach /metrics: one setup through the gateway (the ten steps, with curl,
openssl and oathtool) moves the certificate, OCSP-free CRL, one-time-password, enrollment, outbox, per-call and
client-call figures, and a lockout is counted by kind."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kagi.ca.v1 import ca_pb2
from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime.grpc_client import error_from_rpc
from tests.integration.gateway.gateway_support import GatewayStack, open_gateway_stack, walk_ten_steps

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return CA, OTP and enrollment services with the gateway in front, each with its management listener."""
    running = await open_gateway_stack(tmp_path)
    yield running
    await running.close()


async def scrape(stack: GatewayStack, component: str) -> Samples:
    """Return every sample a component's /metrics answers, by name and labels."""
    async with aiohttp.ClientSession() as session, session.get(stack.management_url(component) + "/metrics") as got:
        assert got.status == 200
        text = await got.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _reason(exc: grpc.aio.AioRpcError) -> str:
    return error_from_rpc(exc).reason


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return the sum of a metric's samples whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


async def test_one_setup_moves_the_business_figures(stack: GatewayStack) -> None:
    """Scrapes of the CA, OTP and enrollment listeners before and after one setup: the CA counts a customer
    certificate issued and shows its CRLs' age, size and time to nextUpdate; the OTP service counts an ACCEPTED
    verification; the enrollment counts each step answered OK with its duration, the enrollment reaching
    COMPLETED, its client calls to the CA and OTP services, and an outbox that is empty again; the servers
    count the calls they served by caller role; each service's store operations are timed."""
    before = {name: await scrape(stack, name) for name in ("ca", "otp", "enrollment")}
    await walk_ten_steps(stack)
    after = {name: await scrape(stack, name) for name in ("ca", "otp", "enrollment")}

    def grew(component: str, name: str, **labels: str) -> float:
        return value(after[component], name, **labels) - value(before[component], name, **labels)

    assert grew("ca", "kagi_certificates_issued_total", profile="customer") == 1
    for issuer in ("customer", "internal"):
        assert value(after["ca"], "kagi_crl_age_seconds", issuer=issuer) >= 0
        assert value(after["ca"], "kagi_crl_size_bytes", issuer=issuer) > 0
        assert value(after["ca"], "kagi_crl_next_update_seconds", issuer=issuer) > 0
    assert grew("otp", "kagi_otp_verifications_total", outcome="ACCEPTED") >= 1
    for step in ("VerifyNotice", "SubmitProfile", "ConfirmRegistration", "IssueCertificate", "VerifyFirstCode"):
        assert grew("enrollment", "kagi_enrollment_steps_total", step=step, grpc_code="OK") >= 1, step
        assert grew("enrollment", "kagi_enrollment_step_duration_seconds_count", step=step) >= 1, step
    assert grew("enrollment", "kagi_enrollments_total", state="COMPLETED") == 1
    assert grew("enrollment", "kagi_grpc_client_call_duration_seconds_count", grpc_method="IssueCertificate") >= 1
    assert grew("enrollment", "kagi_grpc_client_call_duration_seconds_count", grpc_method="VerifyCode") >= 1
    for namespace in ("ca", "otp", "enrollment"):
        assert grew(namespace, "kagi_store_operation_duration_seconds_count", namespace=namespace) > 0, namespace
    assert value(after["enrollment"], "kagi_outbox_depth") == 0
    assert value(after["enrollment"], "kagi_outbox_oldest_age_seconds") == 0
    served = grew(
        "ca",
        "kagi_grpc_server_calls_total",
        grpc_service="kagi.ca.v1.CertificateAuthorityService",
        grpc_method="IssueCertificate",
        caller_role="enrollment",
        grpc_code="OK",
    )
    assert served == 1
    ca_issue = {"grpc_service": "kagi.ca.v1.CertificateAuthorityService", "grpc_method": "IssueCertificate"}
    assert grew("ca", "kagi_grpc_server_call_duration_seconds_count", **ca_issue) == 1


async def test_a_locked_token_counts_as_a_lockout(tmp_path: Path) -> None:
    """Wrong codes for a token until it locks (the clock skipped past each rate-limit window): the answer that
    locked it is counted as a lockout of kind otp_token, and every wrong code as a failed verification."""
    clock = FakeClock(time.time())
    stack = await open_gateway_stack(tmp_path, clock=clock, ca_on_real_time=True)
    try:
        await walk_ten_steps(stack)
        enrollment = otp_pb2_grpc.OtpServiceStub(stack._channel("otp", "enrollment"))
        service_id, _ = await stack.mail_ids()
        token_id = await stack.components["otp"].service.token_for_service(service_id)
        assert token_id is not None
        before = await scrape(stack, "otp")
        codes: list[str] = []
        for _ in range(20):
            try:
                await enrollment.VerifyCode(
                    otp_pb2.VerifyCodeRequest(token_id=token_id, code="000000", request_id=str(uuid.uuid4()))
                )
            except grpc.aio.AioRpcError as exc:
                reason = _reason(exc)
                codes.append(reason)
                if reason == "TOKEN_LOCKED":
                    break
                if reason == "RATE_LIMITED":
                    clock.advance(3600)
        after = await scrape(stack, "otp")
    finally:
        await stack.close()
    locked = value(after, "kagi_lockouts_total", kind="otp_token") - value(
        before, "kagi_lockouts_total", kind="otp_token"
    )
    assert codes[-1] == "TOKEN_LOCKED", codes
    failed = sum(
        value(after, "kagi_otp_verifications_total", outcome=outcome)
        - value(before, "kagi_otp_verifications_total", outcome=outcome)
        for outcome in ("WRONG_CODE", "RATE_LIMITED", "TOKEN_LOCKED", "REPLAYED", "STEP_EXPIRED")
    )
    assert locked == 1, codes
    assert failed == len(codes)


async def test_a_revocation_is_counted_and_its_stream_lag_shown(stack: GatewayStack) -> None:
    """The operator revokes the customer's certificate (key compromise) after a setup: the CA counts it by reason,
    and the gateway, hearing it over the CA's revocation stream, shows how late it arrived (the CA's revocation
    time against the gateway's clock: on one machine, near 0)."""
    await walk_ten_steps(stack)
    ca = stack.ca()
    assert not value(await scrape(stack, "gateway"), "kagi_gateway_revocation_events_total")
    listed = await ca.ListCertificates(
        ca_pb2.ListCertificatesRequest(state=ca_pb2.Certificate.STATE_ACTIVE, page_size=100)
    )
    [customer] = [certificate for certificate in listed.certificates if certificate.profile == "customer"]
    before = await scrape(stack, "ca")
    await ca.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id=str(uuid.uuid4()),
            serial_number=customer.serial_number,
            reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
        )
    )
    for _ in range(300):  # the gateway's stream delivers it within 2 s by design; 30 s on a loaded machine
        gateway = await scrape(stack, "gateway")
        if value(gateway, "kagi_gateway_revocation_events_total"):
            break
        await asyncio.sleep(0.1)
    lag = value(gateway, "kagi_revocation_stream_lag_seconds", issuer="customer")
    after = await scrape(stack, "ca")
    revoked = value(after, "kagi_certificates_revoked_total", reason="KEY_COMPROMISE") - value(
        before, "kagi_certificates_revoked_total", reason="KEY_COMPROMISE"
    )
    assert revoked == 1
    assert value(gateway, "kagi_gateway_revocation_events_total") == 1
    assert -60 < lag < 60  # a sanity bound on one machine's clocks, not a timing
