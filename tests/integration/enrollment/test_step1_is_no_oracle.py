"""Step 1 is no enumeration or timing oracle: every failure (unknown account, used notice, locked notice,
wrong passwords) answers the same status, reason and message after the same work; failures are throttled per
client address (relayed by the gateway only) before they count against an account; and the lockout is
decided by a compare-and-swap with the hash check, so a right guess racing wrong ones never gets 201 while
the application ends LOCKED."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path

import grpc
import pytest

from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.runtime.grpc_client import error_from_rpc
from kagi.runtime.grpc_server import CLIENT_ADDRESS_HEADER
from tests.support.enrollment_flow import Customer, Stack


async def _failure(customer: Customer, **changes: str) -> tuple[grpc.StatusCode, str, str, float]:
    assert customer.notice is not None
    request = pb.VerifyNoticeRequest(
        request_id=uuid.uuid4().hex,
        branch_code=customer.branch,
        account_type=pb.ACCOUNT_TYPE_ORDINARY,
        account_number=customer.account,
        temporary_login_password=customer.notice.temporary_login_password,
        temporary_confirmation_password=customer.notice.temporary_confirmation_password,
    )
    for name, value in changes.items():
        setattr(request, name, value)
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await customer.stack.enrollment().VerifyNotice(request)
    elapsed = time.perf_counter() - started
    error = error_from_rpc(failed.value)
    return failed.value.code(), error.reason, error.message, elapsed


async def test_every_step1_failure_answers_the_same_at_the_same_cost(stack: Stack, workdir: Path) -> None:
    """Unknown account, used notice, locked notice and wrong passwords (each with wrong passwords, as a prober
    sends) answer UNAUTHENTICATED NOTICE_MISMATCH with one message, and take as long as a real hash check."""
    used, locked, plain = Customer(stack, workdir), Customer(stack, workdir), Customer(stack, workdir)
    for customer in (used, locked, plain):
        await customer.register_application()
    for step in (used.step1, used.step2, used.step3):  # step 3 spends the notice
        await step()
    for _ in range(5):
        await _failure(locked, temporary_login_password="WRONGwrong99")
    unknown = Customer(stack, workdir)
    unknown.notice = plain.notice
    cases = {"unknown": unknown, "used": used, "locked": locked, "wrong": plain}
    answers: dict[str, list[tuple[grpc.StatusCode, str, str, float]]] = {name: [] for name in cases}
    for _ in range(4):
        for name, customer in cases.items():
            answers[name].append(await _failure(customer, temporary_login_password="WRONGwrong99"))
    shapes = {(code, reason, message) for runs in answers.values() for code, reason, message, _ in runs}
    assert len(shapes) == 1
    assert next(iter(shapes))[:2] == (grpc.StatusCode.UNAUTHENTICATED, "NOTICE_MISMATCH")
    medians = {name: statistics.median(t for *_, t in runs) for name, runs in answers.items()}
    # The same two argon2id verifies everywhere: no failure is several times cheaper than a real check.
    assert min(medians.values()) > 0.5 * max(medians.values()), medians


async def test_the_right_passwords_learn_that_the_notice_is_locked(stack: Stack, workdir: Path) -> None:
    """A locked notice says so (RESOURCE_EXHAUSTED APPLICATION_LOCKED) only to the right passwords."""
    customer = Customer(stack, workdir)
    await customer.register_application()
    for _ in range(5):
        await _failure(customer, temporary_login_password="WRONGwrong99")
    with pytest.raises(grpc.aio.AioRpcError) as locked:
        await customer.step1()
    assert locked.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_from_rpc(locked.value).reason == "APPLICATION_LOCKED"


async def test_failures_are_throttled_per_client_address_before_they_count(stack: Stack, workdir: Path) -> None:
    """Twenty failures from one client address (as relayed by the gateway) within the window, then that address
    gets RESOURCE_EXHAUSTED before its guesses count: a victim's notice is not locked by them, and another
    address is unaffected."""
    victim = Customer(stack, workdir)
    await victim.register_application()
    assert victim.notice is not None
    attacker = [(CLIENT_ADDRESS_HEADER, "198.51.100.7")]

    async def guess(address: list[tuple[str, str]], password: str = "WRONGwrong99") -> grpc.StatusCode:
        assert victim.notice is not None
        try:
            await stack.enrollment().VerifyNotice(
                pb.VerifyNoticeRequest(
                    request_id=uuid.uuid4().hex,
                    branch_code=victim.branch,
                    account_type=pb.ACCOUNT_TYPE_ORDINARY,
                    account_number=f"{uuid.uuid4().int % 10**7:07d}",  # unknown accounts
                    temporary_login_password=password,
                    temporary_confirmation_password=password,
                ),
                metadata=address,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    assert [await guess(attacker) for _ in range(20)] == [grpc.StatusCode.UNAUTHENTICATED] * 20
    for _ in range(5):  # aimed at the victim's account now: refused before counting
        with pytest.raises(grpc.aio.AioRpcError) as throttled:
            await stack.enrollment().VerifyNotice(
                pb.VerifyNoticeRequest(
                    request_id=uuid.uuid4().hex,
                    branch_code=victim.branch,
                    account_type=pb.ACCOUNT_TYPE_ORDINARY,
                    account_number=victim.account,
                    temporary_login_password="WRONGwrong99",
                    temporary_confirmation_password="WRONGwrong99",
                ),
                metadata=attacker,
            )
        assert throttled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_from_rpc(throttled.value).reason == "TOO_MANY_ATTEMPTS"
    assert await guess([(CLIENT_ADDRESS_HEADER, "203.0.113.9")]) == grpc.StatusCode.UNAUTHENTICATED
    assert (await victim.step1()).session_token  # the victim's notice was not locked


async def test_the_client_address_is_believed_from_the_gateway_only(stack: Stack, workdir: Path) -> None:
    """Any other caller sending the client-address header is refused (PERMISSION_DENIED), as for a relayed
    certificate."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.enrollment("developer").ListApplications(
            pb.ListApplicationsRequest(), metadata=[(CLIENT_ADDRESS_HEADER, "198.51.100.7")]
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_right_guess_racing_wrong_ones_never_gets_201_on_a_locked_notice(stack: Stack, workdir: Path) -> None:
    """The right passwords sent at once with five wrong ones, on several notices: whenever the right one gets
    its enrollment, the application is not LOCKED at the end (the lockout and the grant are one CAS)."""
    for _ in range(4):
        customer = Customer(stack, workdir)
        await customer.register_application()
        assert customer.notice is not None

        async def right(c: Customer = customer) -> bool:
            try:
                await c.step1()
            except grpc.aio.AioRpcError:
                return False
            return True

        outcomes = await asyncio.gather(
            right(), *(_failure(customer, temporary_login_password="WRONGwrong99") for _ in range(5))
        )
        listed = await stack.enrollment("developer").ListApplications(pb.ListApplicationsRequest(page_size=1000))
        [application] = [
            a for a in listed.applications if a.application_id == customer.notice.application.application_id
        ]
        assert not (outcomes[0] and application.state == pb.Application.STATE_LOCKED)
