"""A step's request-id answer is written by the step's own commit: concurrent retries of a step make one step
and all get its answer, a request id reused with other content is refused, and step 8's secret goes out once
however many retries race for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from kagi.ca.v1 import ca_pb2
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.runtime.grpc_client import error_from_rpc
from tests.support.enrollment_flow import Customer, Stack


async def test_concurrent_retries_of_a_step_make_one_step_and_get_one_answer(stack: Stack, workdir: Path) -> None:
    """Five simultaneous step 4s with one request id: every one answers the same certificate, and the CA holds
    that one certificate for the user."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3):
        await step()
    replies = await asyncio.gather(*(customer.step4(request_id="step-4") for _ in range(5)))
    serials = {reply.serial_number for reply in replies}
    assert len(serials) == 1
    assert all(reply.enrollment.state == pb.Enrollment.STATE_CERTIFICATE_ISSUED for reply in replies)
    user_id = (await customer.state()).user_id
    listed = await stack.ca().ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=user_id))
    assert [c.serial_number for c in listed.certificates] == list(serials)


async def test_a_request_id_reused_with_other_content_is_refused(stack: Stack, workdir: Path) -> None:
    """Step 7 sent again with its request id but another phone address is INVALID_ARGUMENT REQUEST_ID_REUSED,
    and the enrollment keeps the first request's token."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5, customer.step6):
        await step()
    await customer.step7(request_id="step-7")
    first = await customer.state()
    customer.mobile_email = "another-phone@example.jp"
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await customer.step7(request_id="step-7")
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_from_rpc(reused.value).reason == "REQUEST_ID_REUSED"
    assert (await customer.state()).token_id == first.token_id


async def test_racing_activations_deliver_the_secret_once(stack: Stack, workdir: Path) -> None:
    """Four simultaneous step 8s with one request id: exactly one answer carries the seed; every other is
    refused (already delivered, or in progress) or answered without it."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for step in (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5, customer.step6):
        await step()
    await customer.step7()
    results = await asyncio.gather(*(customer.step8(request_id="step-8") for _ in range(4)), return_exceptions=True)
    secrets = [r.activation.secret for r in results if isinstance(r, pb.ActivateAppResponse) and r.activation.secret]
    assert len(secrets) == 1
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert error_from_rpc(result).reason in ("ACTIVATION_ALREADY_DELIVERED", "REQUEST_IN_PROGRESS")
        else:
            assert isinstance(result, pb.ActivateAppResponse)
    await customer.step9()
    done = await customer.step10(time.time())
    assert done.enrollment.state == pb.Enrollment.STATE_COMPLETED
