"""Step 4 asks the CA with a request id derived from the enrollment, not the caller's: racing step-4 calls
leave exactly one ACTIVE certificate, and a certificate whose enrollment write lost is revoked."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc

from kagi.ca.v1 import ca_pb2
from kagi.enrollment.v1 import enrollment_pb2 as pb
from tests.support.enrollment_flow import Customer, Stack, make_csr, relayed


async def _step4(customer: Customer, csr: str) -> pb.IssueCertificateResponse | grpc.aio.AioRpcError:
    try:
        reply: pb.IssueCertificateResponse = await customer.stack.enrollment().IssueCertificate(
            pb.IssueCertificateRequest(
                request_id=uuid.uuid4().hex,
                enrollment_id=customer.enrollment_id,
                session_token=customer.session,
                csr_pem=csr,
            )
        )
    except grpc.aio.AioRpcError as exc:
        return exc
    return reply


async def _active(stack: Stack, user_id: str) -> list[str]:
    listed = await stack.ca().ListCertificates(
        ca_pb2.ListCertificatesRequest(subject_id=user_id, state=ca_pb2.Certificate.STATE_ACTIVE)
    )
    return [c.serial_number for c in listed.certificates]


async def test_four_parallel_step4_calls_leave_one_active_certificate(stack: Stack, workdir: Path) -> None:
    """Four step-4 calls at once, each with its own request id and the same CSR: the one enrollment holds one
    certificate, the only ACTIVE one; every call that succeeded answers that certificate."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3):
        await step()
    csr, _ = make_csr(workdir)
    results = await asyncio.gather(*(_step4(customer, csr) for _ in range(4)))
    won = [r for r in results if isinstance(r, pb.IssueCertificateResponse)]
    state = await stack.enrollment().GetEnrollment(
        pb.GetEnrollmentRequest(enrollment_id=customer.enrollment_id), metadata=_relayed(won)
    )
    serial = state.enrollment.certificate_serial_number
    assert await _active(stack, state.enrollment.user_id) == [serial]
    assert {r.serial_number.lower() for r in won} == {serial.lower()}


async def test_parallel_step4_calls_with_different_csrs_leave_one_active_certificate(
    stack: Stack, workdir: Path
) -> None:
    """Four step-4 calls at once with four different CSRs (four keys): still one ACTIVE certificate, the one
    the enrollment holds; the others are told a certificate was already requested (409)."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3):
        await step()
    csrs = [make_csr(workdir)[0] for _ in range(4)]
    results = await asyncio.gather(*(_step4(customer, csr) for csr in csrs))
    won = [r for r in results if isinstance(r, pb.IssueCertificateResponse)]
    assert len(won) >= 1
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(r.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED) for r in refused)
    state = await stack.enrollment().GetEnrollment(
        pb.GetEnrollmentRequest(enrollment_id=customer.enrollment_id), metadata=_relayed(won)
    )
    assert await _active(stack, state.enrollment.user_id) == [state.enrollment.certificate_serial_number]


def _relayed(won: list[pb.IssueCertificateResponse]) -> list[tuple[str, str]]:
    return relayed(won[0].certificate_pem)
