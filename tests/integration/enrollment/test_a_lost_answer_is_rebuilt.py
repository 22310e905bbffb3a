"""A crash between a step's own write and the ledger's answer loses only the answer: the retry with the same
request id finds the step done by that very request and answers from the enrollment's record (the same
certificate at step 4, the same state after), instead of refusing it as out of order or doing it twice."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

from kagi.ca.v1 import ca_pb2
from kagi.clock import FakeClock
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.idempotency import COLLECTION
from tests.support.enrollment_flow import Customer, Stack, open_stack


async def _lose_answer(stack: Stack, request_id: str) -> None:
    """Remove the ledger's entry of `request_id` (claim and answer), as if the process died after the step's own
    write and the claim then ran out: the store's listing skips transient entries, so the file is edited."""
    assert stack.dev is not None
    with sqlite3.connect(stack.dev.state_dir / "enrollment.db") as db:
        gone = db.execute(
            "DELETE FROM entries WHERE collection = ? AND key LIKE ?", (COLLECTION, f"%/{request_id}")
        ).rowcount
    assert gone == 1


async def test_lost_answers_of_steps_4_5_and_7_are_rebuilt_from_the_record(tmp_path: Path, workdir: Path) -> None:
    """Steps 4, 5 and 7 each lose their stored answer after their write; each retry with its request id answers
    what the first call did (step 4: the same certificate, and the CA holds one certificate for the user),
    and the setup then completes."""
    clock = FakeClock(time.time())
    stack = await open_stack(tmp_path / "kagi", clock=clock)
    try:
        customer = Customer(stack, workdir)
        await customer.register_application()
        for step in (customer.step1, customer.step2, customer.step3):
            await step()
        first = await customer.step4(request_id="step-4")
        await _lose_answer(stack, "step-4")
        again = await customer.step4(request_id="step-4")
        assert again.certificate_pem == first.certificate_pem
        assert again.serial_number == first.serial_number
        assert again.enrollment.state == pb.Enrollment.STATE_CERTIFICATE_ISSUED
        user_id = (await customer.state()).user_id
        listed = await stack.ca().ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=user_id))
        assert [c.serial_number for c in listed.certificates] == [first.serial_number]

        await customer.step5(request_id="step-5")
        await _lose_answer(stack, "step-5")
        assert (await customer.step5(request_id="step-5")).enrollment.state == pb.Enrollment.STATE_CERTIFICATE_LOGGED_IN
        await customer.step6()
        await customer.step7(request_id="step-7")
        await _lose_answer(stack, "step-7")
        replayed = await customer.step7(request_id="step-7")
        assert replayed.enrollment.state == pb.Enrollment.STATE_TOKEN_REQUESTED
        await customer.step8(request_id=uuid.uuid4().hex)
        await customer.step9()
        done = await customer.step10(clock.now())
        assert done.enrollment.state == pb.Enrollment.STATE_COMPLETED
    finally:
        await stack.close()
        stack.smtp.stop()
