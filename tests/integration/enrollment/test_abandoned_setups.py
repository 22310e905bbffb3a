"""Abandoned setups leave nothing alive: a cancelled or expired enrollment's certificate is revoked at the CA
(cessationOfOperation), its pending token is revoked at the OTP service, and its login ID is free again; a crash
between the state change and that clean-up is finished by the sweeper; an operator can re-open an expired
enrollment with `kagi admin reopen-enrollment`; the personal data goes after the retention period.

Real CA, OTP and enrollment services over mTLS; time is a FakeClock; the sweeper's background task is stopped so
that each test runs its passes itself (`sweep_now`), except where a real restarted process must do it alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from kagi.ca.v1 import ca_pb2
from kagi.clock import FakeClock
from kagi.enrollment.v1 import enrollment_pb2 as pb
from kagi.otp.v1 import otp_pb2
from kagi.runtime.failpoints import EXIT_STATUS
from services.ca_service.main import CaSettings, start_ca
from tests.integration.enrollment.test_crash_after_certificate import _wait_serving
from tests.support.enrollment_flow import PROFILE, Customer, Services, Stack, open_stack
from tests.support.tools import run, tool

IDLE = 60 * 60
DAY = 86400


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
async def stack(tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """A stack on the fake clock whose enrollment sweeper runs only when the test says so; `kagi admin` reaches it."""
    running = await open_stack(tmp_path / "kagi", clock=clock)
    assert running.dev is not None
    await running.dev.components["enrollment"].stop_sweeper()
    for name in ("ca", "otp", "enrollment"):
        monkeypatch.setenv(f"KAGI_{name.upper()}_TARGET", running.targets[name])
    yield running
    await running.close()
    running.smtp.stop()


async def sweep(stack: Stack) -> None:
    assert stack.dev is not None
    await stack.dev.components["enrollment"].sweep_now()


async def through(customer: Customer, last_step: int) -> Customer:
    """Take the customer from the bank's notice up to and including `last_step` (at most 7)."""
    await customer.register_application()
    steps = (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5, customer.step6)
    for step in (*steps, customer.step7)[:last_step]:
        await step()
    return customer


async def cancel(customer: Customer) -> pb.Enrollment:
    # Step 4 retires the session token: from then on the customer's certificate cancels.
    after_step4 = bool(customer.certificate_pem)
    reply = await customer.stack.enrollment().CancelEnrollment(
        pb.CancelEnrollmentRequest(
            request_id=uuid.uuid4().hex,
            enrollment_id=customer.enrollment_id,
            session_token="" if after_step4 else customer.session,
        ),
        metadata=customer.cert_metadata if after_step4 else None,
    )
    enrollment: pb.Enrollment = reply.enrollment
    return enrollment


async def certificate(stack: Services, serial: str) -> ca_pb2.Certificate:
    found: ca_pb2.Certificate = (
        await stack.ca().GetCertificate(ca_pb2.GetCertificateRequest(serial_number=serial))
    ).certificate
    return found


async def active_certificates(stack: Services, user_id: str) -> list[str]:
    listed = await stack.ca().ListCertificates(
        ca_pb2.ListCertificatesRequest(subject_id=user_id, state=ca_pb2.Certificate.STATE_ACTIVE)
    )
    return [c.serial_number for c in listed.certificates]


async def token_state(stack: Services, token_id: str) -> int:
    return (await stack.otp().GetToken(otp_pb2.GetTokenRequest(token_id=token_id))).token.state


async def assert_nothing_alive(stack: Services, enrollment: pb.Enrollment, customer: Customer) -> None:
    """The certificate is revoked as cessationOfOperation, no certificate of the user is active, and the token
    (when step 7 was taken) is revoked and refuses the app's activation."""
    revoked = await certificate(stack, enrollment.certificate_serial_number)
    assert revoked.state == ca_pb2.Certificate.STATE_REVOKED
    assert revoked.revocation_reason == ca_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION
    assert await active_certificates(stack, enrollment.user_id) == []
    if enrollment.token_id:
        assert await token_state(stack, enrollment.token_id) == otp_pb2.Token.STATE_REVOKED
        with pytest.raises(grpc.aio.AioRpcError):
            await customer.step8()
        assert not customer.secret


async def register_login_id(stack: Services, workdir: Path, login_id: str) -> pb.ConfirmRegistrationResponse:
    """Another company's user registers `login_id` (steps 1-3): it succeeds only if the login ID is free."""
    other = Customer(stack, workdir, login_id=login_id)
    await other.register_application()
    await other.step1()
    await other.step2()
    return await other.step3()


async def test_cancelled_after_step4_leaves_no_certificate_and_frees_the_login_id(stack: Stack, tmp_path: Path) -> None:
    """Cancelling after step 4 revokes the certificate at the CA (cessationOfOperation) before the answer, leaves
    no active certificate for the user, and a new enrollment registers the same login ID."""
    customer = await through(Customer(stack, tmp_path), 4)
    cancelled = await cancel(customer)
    assert cancelled.state == pb.Enrollment.STATE_CANCELLED

    await assert_nothing_alive(stack, await customer.state(), customer)
    registered = await register_login_id(stack, tmp_path, customer.login_id)
    assert registered.enrollment.state == pb.Enrollment.STATE_REGISTERED


async def test_cancelled_after_step7_revokes_the_pending_token(stack: Stack, tmp_path: Path) -> None:
    """Cancelling after step 7 also revokes the pending token: the app can no longer activate it with the IDs
    the mail gave, and the token is REVOKED at the OTP service."""
    customer = await through(Customer(stack, tmp_path), 7)
    await cancel(customer)
    enrollment = await customer.state()
    assert enrollment.token_id
    await assert_nothing_alive(stack, enrollment, customer)


async def test_expired_after_step7_is_swept_like_a_cancellation(stack: Stack, clock: FakeClock, tmp_path: Path) -> None:
    """An enrollment idle past its timeout is written EXPIRED by a sweeper pass, which also revokes its
    certificate and token and frees its login ID; one pass before the timeout changes nothing."""
    customer = await through(Customer(stack, tmp_path), 7)
    clock.advance(IDLE - 60)
    await sweep(stack)
    before = await customer.state()
    assert before.state == pb.Enrollment.STATE_TOKEN_REQUESTED
    assert (await certificate(stack, before.certificate_serial_number)).state == ca_pb2.Certificate.STATE_ACTIVE

    clock.advance(120)
    await sweep(stack)
    expired = await customer.state()
    assert expired.state == pb.Enrollment.STATE_EXPIRED
    await assert_nothing_alive(stack, expired, customer)
    await register_login_id(stack, tmp_path, customer.login_id)


async def test_expired_after_step3_frees_the_login_id(stack: Stack, clock: FakeClock, tmp_path: Path) -> None:
    """After step 3 the login ID is reserved; once the enrollment expires and is swept, a new enrollment
    registers the same login ID."""
    customer = await through(Customer(stack, tmp_path), 3)
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await register_login_id(stack, tmp_path, customer.login_id)
    assert taken.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    clock.advance(IDLE + 1)
    await sweep(stack)
    assert (await customer.state()).state == pb.Enrollment.STATE_EXPIRED
    registered = await register_login_id(stack, tmp_path, customer.login_id)
    assert registered.enrollment.state == pb.Enrollment.STATE_REGISTERED


async def test_the_ca_down_during_the_sweep_is_finished_by_the_next_pass(
    stack: Stack, clock: FakeClock, tmp_path: Path
) -> None:
    """With the CA down the sweeper still writes EXPIRED, but the clean-up stays pending (the login ID stays
    reserved); once the CA is back, the next pass revokes the certificate and releases the login ID. While the
    CA is down the enrollment service answers no caller (it cannot check callers' certificates for revocation:
    UNAVAILABLE, CALLER_REVOCATION_UNKNOWN), so what the pass wrote is read once the CA is back, before the
    next pass."""
    assert stack.dev is not None
    customer = await through(Customer(stack, tmp_path), 4)
    await stack.dev.components.pop("ca").stop(0)
    clock.advance(IDLE + 1)
    await sweep(stack)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await customer.state()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    stack.dev.components["ca"] = await start_ca(CaSettings.from_env(stack.dev.env), clock=clock)
    enrollment = None
    for _ in range(100):  # the enrollment service reconnects to the CA with backoff
        try:
            enrollment = await customer.state()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.3)
        else:
            break
    assert enrollment is not None
    assert enrollment.state == pb.Enrollment.STATE_EXPIRED
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await register_login_id(stack, tmp_path, customer.login_id)
    assert taken.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(100):  # the enrollment's channel reconnects to the CA with backoff
        await sweep(stack)
        if (await certificate(stack, enrollment.certificate_serial_number)).state == ca_pb2.Certificate.STATE_REVOKED:
            break
        await asyncio.sleep(0.3)
    await assert_nothing_alive(stack, enrollment, customer)
    await register_login_id(stack, tmp_path, customer.login_id)


def _spawn(stack: Stack, **extra: str) -> subprocess.Popen[bytes]:
    assert stack.dev is not None
    env = {**os.environ, **stack.dev.env, "KAGI_LOG_LEVEL": "WARNING", "KAGI_MAIL_POLL_MS": "100", **extra}
    return subprocess.Popen([tool("kagi"), "serve", "enrollment"], env=env)


async def test_a_crash_after_the_cancellation_is_cleaned_up_by_the_restarted_service(
    stack: Stack, tmp_path: Path
) -> None:
    """The enrollment process is killed right after CANCELLED is written (a failpoint, before any clean-up):
    the certificate and token are still live then; the restarted process's own background sweeper revokes both
    and frees the login ID, with nobody calling it."""
    assert stack.dev is not None
    await stack.dev.components.pop("enrollment").stop(0)
    services = Services(stack.targets, stack.tls_dir, stack.smtp)  # mail goes out by the process's own sender
    process = _spawn(stack, KAGI_FAILPOINTS="enrollment.after_abandon", KAGI_IDEMPOTENCY_PENDING_SECONDS="1")
    try:
        await _wait_serving(stack)
        customer = await through(Customer(services, tmp_path), 7)
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await cancel(customer)
        assert crashed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=10) == EXIT_STATUS
        serial = format(x509.load_pem_x509_certificate(customer.certificate_pem.encode()).serial_number, "x")
        assert (await certificate(services, serial)).state == ca_pb2.Certificate.STATE_ACTIVE  # not cleaned up

        process = _spawn(stack, KAGI_SWEEP_SECONDS="1")
        await _wait_serving(stack)
        enrollment = await customer.state()
        assert enrollment.state == pb.Enrollment.STATE_CANCELLED  # written before the crash
        for _ in range(100):
            if (await certificate(services, serial)).state == ca_pb2.Certificate.STATE_REVOKED:
                break
            await asyncio.sleep(0.2)
        await assert_nothing_alive(services, enrollment, customer)
        await register_login_id(services, tmp_path, customer.login_id)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        await services.close()


def _admin(stack: Stack, *args: str) -> list[str]:
    assert stack.dev is not None
    return [tool("kagi"), "admin", "--state-dir", str(stack.dev.state_dir), *args]


async def test_reopen_resumes_an_expired_enrollment_where_it_stood(
    stack: Stack, clock: FakeClock, tmp_path: Path
) -> None:
    """`kagi admin reopen-enrollment --json` re-opens an enrollment that expired after step 7 and was not swept
    yet: it is TOKEN_REQUESTED again with a fresh idle timeout, its certificate still active, and the customer
    finishes steps 8-10."""
    customer = await through(Customer(stack, tmp_path), 7)
    clock.advance(IDLE + 1)
    assert (await customer.state()).state == pb.Enrollment.STATE_EXPIRED

    shown = json.loads(await run(_admin(stack, "reopen-enrollment", "--enrollment", customer.enrollment_id, "--json")))
    assert (shown["state"], shown["next_step"]) == ("TOKEN_REQUESTED", "ACTIVATE_APP")
    enrollment = await customer.state()
    assert enrollment.state == pb.Enrollment.STATE_TOKEN_REQUESTED
    assert enrollment.expire_time.ToSeconds() >= int(clock.now()) + IDLE - 1
    await sweep(stack)  # the stale index entry is filed again, not expired
    assert (await certificate(stack, enrollment.certificate_serial_number)).state == ca_pb2.Certificate.STATE_ACTIVE

    await customer.step8()
    await customer.step9()
    done = await customer.step10(clock.now())
    assert done.enrollment.state == pb.Enrollment.STATE_COMPLETED


async def test_reopen_after_the_clean_up_goes_back_to_a_new_certificate(
    stack: Stack, clock: FakeClock, tmp_path: Path
) -> None:
    """Once the sweeper revoked the expired enrollment's certificate and token and released its login ID,
    `kagi admin reopen-enrollment` re-opens it at REGISTERED with the login ID reserved again: step 4 issues a new
    certificate and the customer completes the setup with the same login ID; the old certificate stays revoked."""
    customer = await through(Customer(stack, tmp_path), 7)
    clock.advance(IDLE + 1)
    await sweep(stack)
    old = await customer.state()
    assert old.state == pb.Enrollment.STATE_EXPIRED

    text = await run(_admin(stack, "reopen-enrollment", "--enrollment", customer.enrollment_id))
    assert "REGISTERED" in text
    assert "ISSUE_CERTIFICATE" in text
    assert customer.enrollment_id in text
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await register_login_id(stack, tmp_path, customer.login_id)
    assert taken.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    customer.csr, customer.certificate_pem, customer.service_id, customer.app_user_id = "", "", "", ""
    for step in (customer.step4, customer.step5, customer.step6, customer.step7, customer.step8, customer.step9):
        await step()
    done = await customer.step10(clock.now())
    assert done.enrollment.state == pb.Enrollment.STATE_COMPLETED
    assert done.enrollment.certificate_serial_number != old.certificate_serial_number
    assert (await certificate(stack, old.certificate_serial_number)).state == ca_pb2.Certificate.STATE_REVOKED
    assert (await customer.login()).access_token


async def test_reopen_is_refused_naming_why(stack: Stack, clock: FakeClock, tmp_path: Path) -> None:
    """`kagi admin reopen-enrollment` refuses a cancelled enrollment (ENROLLMENT_NOT_EXPIRED) and an expired one
    whose released login ID another user registered since (LOGIN_ID_REREGISTERED)."""
    cancelled = await through(Customer(stack, tmp_path), 3)
    await cancel(cancelled)
    with pytest.raises(AssertionError, match="ENROLLMENT_NOT_EXPIRED"):
        await run(_admin(stack, "reopen-enrollment", "--enrollment", cancelled.enrollment_id))

    expired = await through(Customer(stack, tmp_path), 4)
    clock.advance(IDLE + 1)
    await sweep(stack)
    await register_login_id(stack, tmp_path, expired.login_id)
    with pytest.raises(AssertionError, match="LOGIN_ID_REREGISTERED"):
        await run(_admin(stack, "reopen-enrollment", "--enrollment", expired.enrollment_id))
    assert (await expired.state()).state == pb.Enrollment.STATE_EXPIRED


def _live_values(database: Path, now: float) -> list[bytes]:
    """Every live stored value of a service's SQLite store (transient entries past their expiry excluded)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT value FROM entries WHERE expires_at IS NULL OR expires_at > ?", (now,))
        return [bytes(row[0]) for row in rows]


async def test_personal_data_is_erased_after_the_retention_period(
    stack: Stack, clock: FakeClock, tmp_path: Path
) -> None:
    """A setup cancelled after step 7 keeps its user name and e-mail addresses on the enrollment record for 90
    days (the default retention); after that a sweeper pass erases them, and no live record of the enrollment or
    OTP service holds the name, the e-mail or the mobile e-mail any more; the identifiers stay."""
    assert stack.dev is not None
    customer = await through(Customer(stack, tmp_path), 7)
    await cancel(customer)
    user_id = (await customer.state()).user_id
    personal = [PROFILE["user_name"].encode(), PROFILE["email"].encode(), customer.mobile_email.encode()]
    enrollment_db, otp_db = stack.dev.state_dir / "enrollment.db", stack.dev.state_dir / "otp.db"

    clock.advance(89 * DAY)
    await sweep(stack)
    kept = b"\n".join(_live_values(enrollment_db, clock.now()))
    assert PROFILE["email"].encode() in kept  # within the retention period

    clock.advance(2 * DAY)
    await sweep(stack)
    for database in (enrollment_db, otp_db):
        values = _live_values(database, clock.now())
        leaks = [p.decode() for p in personal for value in values if p in value]
        assert leaks == [], f"{database.name} still holds {leaks}"
    enrollment = await customer.state()
    assert (enrollment.state, enrollment.user_id) == (pb.Enrollment.STATE_CANCELLED, user_id)
    assert enrollment.certificate_serial_number
    assert enrollment.token_id
