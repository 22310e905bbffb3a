"""Who may ask the CA for what: the gateway cannot issue, a service certificate is for the operator alone, and
the enrollment retrying an issuance with the same request_id gets the same certificate, not a second one."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kagi.ca.v1 import ca_pb2
from kagi.runtime.grpc_client import error_from_rpc
from tests.integration.ca.ca_service_harness import RunningCa, issue_request, make_csr, snapshot


async def test_gateway_identity_cannot_issue(ca: RunningCa) -> None:
    """IssueCertificate as the gateway is PERMISSION_DENIED (CALLER_NOT_ALLOWED) and stores nothing."""
    before = await snapshot(ca.target)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ca.stub("gateway").IssueCertificate(issue_request())
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_from_rpc(failure.value).reason == "CALLER_NOT_ALLOWED"
    assert await snapshot(ca.target) == before


async def test_service_profile_is_for_the_operator_only(ca: RunningCa) -> None:
    """The enrollment may issue customer certificates but not internal (service) ones; the operator may."""
    request = ca_pb2.IssueCertificateRequest(
        request_id="svc-1", csr=make_csr(), profile="service", service=ca_pb2.ServiceIdentity(role="frontend")
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ca.stub("enrollment").IssueCertificate(request)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await ca.stub("operator").IssueCertificate(request)
    assert reply.certificate.profile == "service"
    assert reply.certificate.issuer == ca_pb2.ISSUER_INTERNAL


async def test_enrollment_cannot_revoke_a_service_certificate(ca: RunningCa) -> None:
    """Revoking kagi's own certificates is the operator's: the enrollment gets PERMISSION_DENIED."""
    issued = await ca.stub("operator").IssueCertificate(
        ca_pb2.IssueCertificateRequest(
            request_id="svc-2", csr=make_csr(), profile="service", service=ca_pb2.ServiceIdentity(role="frontend")
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ca.stub("enrollment").RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(request_id="r", serial_number=issued.certificate.serial_number)
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_retry_with_the_same_request_id_gets_the_same_certificate(ca: RunningCa) -> None:
    """The enrollment retrying IssueCertificate (also concurrently) gets one serial; one certificate is stored."""
    stub = ca.stub("enrollment")
    request = issue_request("enrollment-42/step-4")
    first = await stub.IssueCertificate(request)
    again = await stub.IssueCertificate(request)
    assert again.certificate.serial_number == first.certificate.serial_number
    assert again.certificate.certificate_pem == first.certificate.certificate_pem

    concurrent = issue_request("enrollment-43/step-4", user_id="u-0043")
    results = await asyncio.gather(*(stub.IssueCertificate(concurrent) for _ in range(5)), return_exceptions=True)
    serials = {r.certificate.serial_number for r in results if isinstance(r, ca_pb2.IssueCertificateResponse)}
    aborted = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(serials) == 1
    assert all(r.code() == grpc.StatusCode.ABORTED for r in aborted)

    listed = await ca.stub("operator").ListCertificates(ca_pb2.ListCertificatesRequest(subject_id="u-0043"))
    assert [c.serial_number for c in listed.certificates] == list(serials)
