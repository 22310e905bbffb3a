"""The enrollment use cases when things go wrong: the CA, the OTP service or the mail server down, concurrent
steps on one enrollment (a lost race), and a crash between another service's answer and the step's save or
between the save and the answer (the step repeated with the same request id)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from kagi.errors import ConcurrentChange, ErrorKind, FailedPrecondition, Unavailable
from services.enrollment_service.domain.records import AccountType, ApplicationState, Cleanup, account_key
from services.enrollment_service.domain.states import State
from tests.unit.enrollment.fakes import Crash, csr_for, new_key
from tests.unit.enrollment.harness import Bank, Customer, as_request

# -- another service down -------------------------------------------------------------------------------------


async def test_step_4_with_the_ca_down_changes_nothing_and_works_once_it_is_back(
    bank: Bank, customer: Customer
) -> None:
    """The CA's outage surfaces as UNAVAILABLE and leaves the enrollment REGISTERED; the same step afterwards
    issues the one certificate."""
    registered = await customer.walk_to(State.REGISTERED)
    bank.ca.down = True
    with pytest.raises(Unavailable) as down:
        await customer.step4()
    assert down.value.reason == "SERVICE_UNAVAILABLE"
    assert (await bank.repository.enrollment(customer.enrollment_id)).record.state is State.REGISTERED
    bank.ca.down = False
    assert (await customer.step4()).state is State.CERTIFICATE_ISSUED
    assert len(bank.ca.active_serials(registered.user_id)) == 1


async def test_step_7_with_the_otp_service_down_changes_nothing(bank: Bank, customer: Customer) -> None:
    """The OTP service's outage leaves the enrollment at PASSWORD_VERIFIED with no token and no mail queued."""
    await customer.walk_to(State.PASSWORD_VERIFIED)
    bank.otp.down = True
    with pytest.raises(Unavailable):
        await customer.step7()
    stored = (await bank.repository.enrollment(customer.enrollment_id)).record
    assert (stored.state, stored.token_id) == (State.PASSWORD_VERIFIED, "")
    assert await bank.mails_to(customer.mobile_email) == []
    bank.otp.down = False
    assert (await customer.step7()).state is State.TOKEN_REQUESTED


async def test_a_cancellation_while_the_ca_is_down_is_finished_by_the_sweeper(bank: Bank, customer: Customer) -> None:
    """Cancelling answers CANCELLED even with the CA down; the clean-up stays pending until a sweep with the CA
    back revokes the certificate and releases the login ID."""
    enrollment = await customer.walk_to(State.CERTIFICATE_ISSUED)
    bank.ca.down = True
    cancelled = await bank.service.cancel(customer.enrollment_id, "", customer.certificate)
    assert cancelled.state is State.CANCELLED
    assert (await bank.repository.enrollment(customer.enrollment_id)).record.cleanup is not Cleanup.DONE
    assert (await bank.service.setups.sweep()).cleaned == 0
    bank.ca.down = False
    assert (await bank.service.setups.sweep()).cleaned == 1
    assert bank.ca.active_serials(enrollment.user_id) == []
    assert not await bank.repository.login_id_taken(customer.login_id)


async def test_mail_waits_out_a_mail_server_that_is_down(bank: Bank, customer: Customer) -> None:
    """Step 7 succeeds with the mail server down; its mail stays queued and goes out once the server is back."""
    bank.mailer.down = True
    await customer.walk_to(State.TOKEN_REQUESTED)
    assert await bank.deliver_mail() == 0
    bank.mailer.down = False
    bank.clock.advance(5)  # past the first retry's backoff
    assert len(await bank.mails_to(customer.mobile_email)) == 1


# -- lost races -----------------------------------------------------------------------------------------------


async def test_two_concurrent_certificate_logins_one_wins_the_other_is_told_to_retry(
    bank: Bank, customer: Customer
) -> None:
    """Both steps read the enrollment before either writes; the one whose compare-and-swap loses answers
    ABORTED CONCURRENT_CHANGE and the enrollment moved on once."""
    await customer.walk_to(State.CERTIFICATE_ISSUED)
    bank.ca.rendezvous("status", 2)
    results = await asyncio.gather(customer.step5(), customer.step5(), return_exceptions=True)
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(lost) == 1
    assert isinstance(lost[0], ConcurrentChange)
    assert (lost[0].kind, lost[0].reason) == (ErrorKind.ABORTED, "CONCURRENT_CHANGE")
    stored = await bank.repository.enrollment(customer.enrollment_id)
    assert stored.record.state is State.CERTIFICATE_LOGGED_IN


async def test_two_concurrent_step_4s_with_one_csr_answer_the_one_certificate(bank: Bank, customer: Customer) -> None:
    """Racing step 4s for the same CSR both get the certificate the CA signed once."""
    registered = await customer.walk_to(State.REGISTERED)
    bank.ca.rendezvous("issue_customer_certificate", 2)
    first, second = await asyncio.gather(customer.step4(), customer.step4())
    assert first.certificate_serial == second.certificate_serial
    assert bank.ca.active_serials(registered.user_id) == [first.certificate_serial]


async def test_two_concurrent_step_4s_with_different_csrs_issue_one_certificate(bank: Bank, customer: Customer) -> None:
    """Racing step 4s for two keys: the CA signs one; the other is told a certificate was requested with
    another CSR, and the enrollment holds the one the CA signed."""
    registered = await customer.walk_to(State.REGISTERED)
    bank.ca.rendezvous("issue_customer_certificate", 2)
    results = await asyncio.gather(customer.step4(), customer.step4(csr=csr_for(new_key())), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1
    assert isinstance(refused[0], FailedPrecondition)
    assert refused[0].reason == "CERTIFICATE_ALREADY_REQUESTED"
    stored = (await bank.repository.enrollment(customer.enrollment_id)).record
    assert bank.ca.active_serials(registered.user_id) == [stored.certificate_serial]


async def test_concurrent_wrong_notice_entries_are_each_counted(bank: Bank, customer: Customer) -> None:
    """Five wrong step-1 entries at once all count (each lost race reads and counts again): the notice locks."""
    notice = await customer.register_application()
    entries = [customer.step1(login_password=f"wrong-password-{n}") for n in range(5)]
    results = await asyncio.gather(*entries, return_exceptions=True)
    assert all(isinstance(r, Exception) and getattr(r, "reason", "") == "NOTICE_MISMATCH" for r in results)
    stored = (await bank.repository.application(notice.application.application_id)).record
    assert (stored.failures, stored.state) == (5, ApplicationState.LOCKED)


async def test_concurrent_applications_for_one_account_both_land(bank: Bank) -> None:
    """Two notices registered at once for one account both commit (the loser of the account pointer's race
    files again); the pointer names one of them, whose notice opens the setup."""
    first, second = bank.customer(), bank.customer()
    second.account = first.account
    notices = await asyncio.gather(first.register_application(), second.register_application())
    newest = await bank.repository.application_for_account(
        account_key(first.branch, AccountType.ORDINARY, first.account)
    )
    assert newest is not None
    assert newest.record.application_id in {n.application.application_id for n in notices}
    listed, _ = await bank.service.list_applications(0, "")
    assert len(listed) == 2


# -- crashes --------------------------------------------------------------------------------------------------


async def test_a_crash_between_the_cas_answer_and_the_save_issues_one_certificate(
    bank: Bank, customer: Customer
) -> None:
    """The CA signed but the enrollment never saved it; the step repeated with the same request gets that same
    certificate, and the CA holds exactly one for the user."""
    registered = await customer.walk_to(State.REGISTERED)
    bank.ca.crash_after.add("issue_customer_certificate")
    with pytest.raises(Crash):
        await as_request("IssueCertificate/cert-1", customer.step4)
    assert (await bank.repository.enrollment(customer.enrollment_id)).record.state is State.REGISTERED
    [signed] = bank.ca.active_serials(registered.user_id)
    issued = await as_request("IssueCertificate/cert-1", customer.step4)
    assert (issued.state, issued.certificate_serial) == (State.CERTIFICATE_ISSUED, signed)
    assert bank.ca.active_serials(registered.user_id) == [signed]


async def test_a_crash_between_the_otp_services_answer_and_the_save_creates_one_token(
    bank: Bank, customer: Customer
) -> None:
    """The OTP service created the token but the enrollment never saved it; step 7 repeated with the same request
    id gets that same token and mails it once."""
    await customer.walk_to(State.PASSWORD_VERIFIED)
    bank.otp.crash_after.add("create_token")
    with pytest.raises(Crash):
        await customer.step7(request_id="token-1")
    assert await bank.mails_to(customer.mobile_email) == []
    [created] = bank.otp.tokens
    requested = await customer.step7(request_id="token-1")
    assert requested.token_id == created
    assert list(bank.otp.tokens) == [created]
    assert len(await bank.mails_to(customer.mobile_email)) == 1


async def test_an_activation_whose_save_was_lost_is_never_answered_twice(bank: Bank, customer: Customer) -> None:
    """The OTP service delivered the seed but the enrollment never saved step 8; the same request again is told
    the seed goes out once, and step 7 again (a new token) is the way on."""
    await customer.walk_to(State.TOKEN_REQUESTED)
    bank.otp.crash_after.add("activate")
    with pytest.raises(Crash):
        await customer.step8(request_id="activate-1")
    with pytest.raises(FailedPrecondition) as replayed:
        await customer.step8(request_id="activate-1")
    assert replayed.value.reason == "ACTIVATION_ALREADY_DELIVERED"
    await customer.step7(request_id="token-2")
    assert (await customer.step8(request_id="activate-2")).secret


async def test_a_step_whose_answer_was_lost_after_its_save_answers_from_the_record(
    bank: Bank, customer: Customer
) -> None:
    """Step 5 saved but its answer was lost; the same request again answers from the record without asking the
    CA again, while another request is refused as out of order."""
    await customer.walk_to(State.CERTIFICATE_ISSUED)
    first = await as_request("CertificateLogin/login-1", customer.step5)
    asked = bank.ca.count("status")
    again = await as_request("CertificateLogin/login-1", customer.step5)
    # The record also names the request that wrote it; otherwise the answer is the first one.
    assert dataclasses.replace(again, last_request="") == first
    assert bank.ca.count("status") == asked
    with pytest.raises(FailedPrecondition) as other:
        await as_request("CertificateLogin/login-2", customer.step5)
    assert other.value.reason == "WRONG_STEP"


async def test_step_4_whose_answer_was_lost_answers_the_certificate_from_the_record(
    bank: Bank, customer: Customer
) -> None:
    """Step 4 saved and retired the session token, then its answer was lost; the same request with that token
    answers the saved certificate without a second call to the CA."""
    await customer.walk_to(State.REGISTERED)
    saved = await as_request("IssueCertificate/cert-1", customer.step4)
    issued_first = customer.issued
    again = await as_request("IssueCertificate/cert-1", customer.step4)
    assert again.certificate_serial == saved.certificate_serial
    assert customer.issued == issued_first
    assert bank.ca.count("issue_customer_certificate") == 1
