"""Every use case of EnrollmentService in memory: the operator's applications, the ten steps with their refusals,
reading, cancelling, expiry, re-opening and the lost-PC reissue (the CA, OTP and mail faked; the store real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kagi.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from kagi.errors import Unauthenticated as UnauthenticatedError
from services.enrollment_service.app.ports import RevocationReason, TokenState
from services.enrollment_service.app.use_cases import EnrollmentPolicy
from services.enrollment_service.domain.client_certificates import ClientCertificate
from services.enrollment_service.domain.records import AccountType, ApplicationState, Cleanup
from services.enrollment_service.domain.states import Kind, State
from tests.unit.enrollment.fakes import csr_for, new_key
from tests.unit.enrollment.harness import (
    CONFIRMATION_PASSWORD,
    LOGIN_PASSWORD,
    USAGE_START_PASSWORD,
    Bank,
    Customer,
    mailed_ids,
    open_bank,
)

DAY = 86400.0
A_STRANGERS_CERTIFICATE = ClientCertificate("1234abcd", "ab" * 32)


# -- the operator's applications ------------------------------------------------------------------------------


async def test_an_application_hands_over_its_temporary_passwords_once(bank: Bank, customer: Customer) -> None:
    """Registering an application answers two temporary passwords; the store keeps only their hashes."""
    notice = await customer.register_application()
    assert notice.temporary_login_password
    assert notice.temporary_confirmation_password
    stored = (await bank.repository.application(notice.application.application_id)).record
    assert notice.temporary_login_password not in stored.temporary_login_hash
    listed, next_page = await bank.service.list_applications(0, "")
    assert [a.application_id for a in listed] == [notice.application.application_id]
    assert next_page == ""


async def test_an_invalid_application_is_refused_naming_each_field(bank: Bank) -> None:
    """A branch code and an account number that break the rules are named, and nothing is stored."""
    with pytest.raises(InvalidArgument) as refused:
        await bank.service.register_application(
            company_name="株式会社テスト", branch_code="1", account_type=AccountType.ORDINARY, account_number="12"
        )
    assert set(refused.value.fields) == {"branch_code", "account_number"}
    assert (await bank.service.list_applications(0, ""))[0] == []


async def test_a_company_that_applies_again_gets_a_new_notice(bank: Bank, customer: Customer) -> None:
    """A second application for the account replaces the first: the old notice no longer opens a setup."""
    old = await customer.register_application()
    await customer.register_application()
    customer_with_old_notice = bank.customer(account=customer.account)
    customer_with_old_notice.notice = old
    with pytest.raises(UnauthenticatedError) as refused:
        await customer_with_old_notice.step1()
    assert refused.value.reason == "NOTICE_MISMATCH"
    assert (await customer.step1()).state is State.NOTICE_VERIFIED


# -- step 1 ---------------------------------------------------------------------------------------------------


async def test_step_1_opens_an_enrollment_with_a_session_token(bank: Bank, customer: Customer) -> None:
    """The right temporary passwords open a NOTICE_VERIFIED enrollment that its session token reads."""
    enrollment = await customer.step1()
    assert enrollment.state is State.NOTICE_VERIFIED
    assert enrollment.expires_at == bank.clock.now() + EnrollmentPolicy().idle_seconds
    assert (await bank.service.get(enrollment.enrollment_id, session=customer.session)).state is State.NOTICE_VERIFIED
    with pytest.raises(UnauthenticatedError) as refused:
        await bank.service.get(enrollment.enrollment_id, session="not-the-token")
    assert refused.value.reason == "SESSION_INVALID"


async def test_step_1_answers_an_unknown_account_and_wrong_passwords_alike(bank: Bank, customer: Customer) -> None:
    """An account without an application and a wrong temporary password get the same NOTICE_MISMATCH."""
    stranger = bank.customer()
    stranger.notice = await customer.register_application()
    answers = []
    for who in (stranger, customer):
        with pytest.raises(UnauthenticatedError) as refused:
            await who.step1(login_password="wrong-password-1")
        answers.append((refused.value.reason, refused.value.message, refused.value.metadata))
    assert answers[0] == answers[1]
    assert answers[0][0] == "NOTICE_MISMATCH"


async def test_step_1_locks_the_notice_after_five_wrong_entries_until_the_operator_unlocks(
    bank: Bank, customer: Customer
) -> None:
    """Five wrong entries lock the application; only the right passwords learn it; an unlock lets them in."""
    notice = await customer.register_application()
    for _ in range(5):
        with pytest.raises(UnauthenticatedError):
            await customer.step1(login_password="wrong-password-1")
    with pytest.raises(ResourceExhausted) as locked:
        await customer.step1()
    assert locked.value.reason == "APPLICATION_LOCKED"
    unlocked = await bank.service.unlock_application(notice.application.application_id)
    assert unlocked.state is ApplicationState.OPEN
    assert (await customer.step1()).state is State.NOTICE_VERIFIED


async def test_step_1_refuses_an_address_over_its_failure_budget_until_the_window_passes(tmp_path: Path) -> None:
    """After the address's failures in the window even the right passwords are refused; another address and
    the next window get through."""
    policy = EnrollmentPolicy(notice_failures_per_address=2, notice_address_window_seconds=600)
    bank = await open_bank(tmp_path, policy=policy)
    try:
        customer = bank.customer()
        for _ in range(2):
            with pytest.raises(UnauthenticatedError):
                await customer.step1(login_password="wrong-password-1", client_address="192.0.2.7")
        with pytest.raises(ResourceExhausted) as throttled:
            await customer.step1(client_address="192.0.2.7")
        assert throttled.value.reason == "TOO_MANY_ATTEMPTS"
        assert (await customer.step1(client_address="192.0.2.8")).state is State.NOTICE_VERIFIED
        bank.clock.advance(601)
        assert (await customer.step1(client_address="192.0.2.7")).state is State.NOTICE_VERIFIED
    finally:
        await bank.store.close()


async def test_a_used_or_expired_notice_opens_no_second_setup(bank: Bank, customer: Customer) -> None:
    """Once step 3 spent the notice step 1 says it is used; an unused notice past its lifetime says expired."""
    await customer.walk_to(State.REGISTERED)
    with pytest.raises(FailedPrecondition) as used:
        await customer.step1()
    assert used.value.reason == "APPLICATION_USED"
    late = bank.customer()
    await late.register_application()
    bank.clock.advance(EnrollmentPolicy().application_ttl_seconds + 1)
    with pytest.raises(FailedPrecondition) as expired:
        await late.step1()
    assert expired.value.reason == "APPLICATION_EXPIRED"


# -- steps 2 and 3 --------------------------------------------------------------------------------------------


async def test_step_2_checks_the_session_and_every_rule_of_the_profile(bank: Bank, customer: Customer) -> None:
    """A wrong session token is refused; a profile breaking rules names each field; a good one is submitted."""
    await customer.step1()
    session, customer.session = customer.session, "stolen"
    with pytest.raises(UnauthenticatedError):
        await customer.step2()
    customer.session = session
    with pytest.raises(InvalidArgument) as invalid:
        await customer.step2(email_confirmation="other@example.co.jp", login_password="short")
    assert {"email_confirmation", "login_password"} <= set(invalid.value.fields)
    enrollment, company = await bank.service.submit_profile(customer.enrollment_id, session, **customer.profile())
    assert (enrollment.state, company) == (State.PROFILE_SUBMITTED, customer.company)
    assert enrollment.login_password_hash
    assert LOGIN_PASSWORD not in enrollment.login_password_hash


async def test_step_3_creates_the_user_and_reserves_the_login_id(bank: Bank, customer: Customer) -> None:
    """Step 3 makes the user (hashes only), reserves the login ID and spends the notice in one commit."""
    enrollment = await customer.walk_to(State.REGISTERED)
    user = await bank.repository.user_for_login(customer.login_id)
    assert user is not None
    assert user.record.user_id == enrollment.user_id
    assert not user.record.setup_complete
    application = await bank.repository.application(enrollment.application_id)
    assert application.record.state is ApplicationState.USED


async def test_a_login_id_goes_to_whoever_registers_it_first(bank: Bank) -> None:
    """Two setups that both passed step 2 with one login ID: the first step 3 takes it, the second is told."""
    first, second = bank.customer(), bank.customer()
    await first.walk_to(State.PROFILE_SUBMITTED)
    await second.walk_to(State.PROFILE_SUBMITTED)
    await first.step3()
    with pytest.raises(InvalidArgument) as taken:
        await second.step3()
    assert taken.value.reason == "LOGIN_ID_TAKEN"
    late = bank.customer()
    await late.step1()
    with pytest.raises(InvalidArgument) as at_step_2:
        await late.step2()
    assert at_step_2.value.reason == "LOGIN_ID_TAKEN"


# -- step 4 ---------------------------------------------------------------------------------------------------


async def test_step_4_issues_one_certificate_and_retires_the_session(bank: Bank, customer: Customer) -> None:
    """The CA signs the CSR for the user; the certificate is indexed to its owner and its expiry, and from now
    on the certificate, not the session token, reads the enrollment."""
    enrollment = await customer.walk_to(State.CERTIFICATE_ISSUED)
    assert bank.ca.active_serials(enrollment.user_id) == [enrollment.certificate_serial]
    owner = await bank.repository.certificate_owner(enrollment.certificate_fingerprint)
    assert owner is not None
    assert (owner.user_id, owner.enrollment_id) == (enrollment.user_id, enrollment.enrollment_id)
    expiries = [e.record.serial_number async for e in bank.repository.certificate_expiries()]
    assert expiries == [enrollment.certificate_serial]
    with pytest.raises(UnauthenticatedError):
        await bank.service.get(customer.enrollment_id, session=customer.session)
    read = await bank.service.get(customer.enrollment_id, certificate=customer.certificate)
    assert read.state is State.CERTIFICATE_ISSUED


async def test_step_4_without_a_csr_is_refused_before_the_ca_is_called(bank: Bank, customer: Customer) -> None:
    """An empty CSR is named as missing and the CA never hears of it."""
    await customer.walk_to(State.REGISTERED)
    with pytest.raises(InvalidArgument) as refused:
        await customer.step4(csr="")
    assert refused.value.fields == {"csr_pem": "required"}
    assert bank.ca.count("issue_customer_certificate") == 0


# -- steps 5 and 6 --------------------------------------------------------------------------------------------


async def test_step_5_needs_the_certificate_issued_in_step_4_and_good_at_the_ca(bank: Bank, customer: Customer) -> None:
    """Another certificate is refused, a revoked one too; the one step 4 issued logs in."""
    await customer.walk_to(State.CERTIFICATE_ISSUED)
    with pytest.raises(PermissionDenied) as mismatch:
        await bank.service.certificate_login(customer.enrollment_id, A_STRANGERS_CERTIFICATE)
    assert mismatch.value.reason == "CERTIFICATE_MISMATCH"
    bank.ca.certificates[customer.certificate.serial_number].revoked = RevocationReason.KEY_COMPROMISE
    with pytest.raises(PermissionDenied) as revoked:
        await customer.step5()
    assert revoked.value.reason == "CERTIFICATE_NOT_GOOD"
    bank.ca.certificates[customer.certificate.serial_number].revoked = None
    assert (await customer.step5()).state is State.CERTIFICATE_LOGGED_IN


async def test_step_6_locks_after_five_wrong_passwords_until_the_operator_unlocks(
    bank: Bank, customer: Customer
) -> None:
    """Each wrong login password says how many tries are left; the fifth locks the enrollment; an operator's
    unlock resumes it where it stood."""
    await customer.walk_to(State.CERTIFICATE_LOGGED_IN)
    for left in (4, 3, 2, 1):
        with pytest.raises(UnauthenticatedError) as wrong:
            await customer.step6("Wrong1234")
        assert wrong.value.metadata == {"remaining_attempts": str(left)}
    with pytest.raises(ResourceExhausted) as locked:
        await customer.step6("Wrong1234")
    assert locked.value.reason == "USER_LOCKED"
    with pytest.raises(FailedPrecondition):
        await customer.step6()
    assert customer.notice is not None
    await bank.service.unlock_application(customer.notice.application.application_id)
    assert (await customer.step6()).state is State.PASSWORD_VERIFIED


# -- steps 7 to 10 --------------------------------------------------------------------------------------------


async def test_step_7_creates_a_pending_token_and_mails_its_ids(bank: Bank, customer: Customer) -> None:
    """The OTP service makes a pending token for the user, and the mail to the phone carries its two IDs (never
    the usage-start password)."""
    enrollment = await customer.walk_to(State.TOKEN_REQUESTED)
    assert await bank.otp.token_state(enrollment.token_id) is TokenState.PENDING
    [mail] = await bank.mails_to(customer.mobile_email)
    assert mailed_ids(mail) == (enrollment.service_id, enrollment.app_user_id)
    assert USAGE_START_PASSWORD not in mail


async def test_step_7_again_replaces_the_pending_token(bank: Bank, customer: Customer) -> None:
    """Asking for the token again revokes the pending one and mails the new one's IDs."""
    first = await customer.walk_to(State.TOKEN_REQUESTED)
    second = await customer.step7(request_id="token-2")
    assert second.state is State.TOKEN_REQUESTED
    assert second.token_id != first.token_id
    assert bank.otp.tokens[first.token_id].state == "REVOKED"
    mails = await bank.mails_to(customer.mobile_email)
    # Both were queued at the same instant of the stopped clock: their order is not the point.
    assert {mailed_ids(m) for m in mails} == {
        (first.service_id, first.app_user_id),
        (second.service_id, second.app_user_id),
    }


async def test_steps_8_and_9_deliver_the_seed_once_and_register_the_app(bank: Bank, customer: Customer) -> None:
    """Step 8 answers the seed and moves the enrollment on; a second activation is refused before the OTP
    service hears of it; step 9 registers the app."""
    await customer.walk_to(State.TOKEN_REQUESTED)
    activation = await customer.step8()
    assert activation.secret
    current = await bank.service.get(customer.enrollment_id, certificate=customer.certificate)
    assert current.state is State.APP_ACTIVATED
    with pytest.raises(FailedPrecondition) as again:
        await customer.step8(request_id="activate-2")
    assert again.value.reason == "WRONG_STEP"
    assert bank.otp.count("activate") == 1
    registered = await customer.step9()
    assert registered is not None
    assert registered.state is State.APP_REGISTERED


async def test_step_8_with_ids_nobody_was_mailed_gets_the_otp_services_refusal(bank: Bank) -> None:
    """Unknown app IDs reach no enrollment and are refused as the OTP service refuses a wrong entry."""
    with pytest.raises(UnauthenticatedError) as refused:
        await bank.service.activate_app(
            service_id="S000000000",
            app_user_id="U000000000",
            usage_start_password=USAGE_START_PASSWORD,
            agreed=True,
            request_id="a-1",
        )
    assert refused.value.reason == "ACTIVATION_FAILED"


async def test_step_10_completes_the_setup_and_mails_the_user(bank: Bank, customer: Customer) -> None:
    """A wrong code changes nothing; the app's code activates the token, completes the setup and the user, and
    the completion mail goes to the user's address."""
    registered = await customer.walk_to(State.APP_REGISTERED)
    shown = bank.otp.code(registered.token_id)
    with pytest.raises(UnauthenticatedError) as wrong:
        await customer.step10(f"{(int(shown) + 1) % 1_000_000:06d}")
    assert wrong.value.reason == "WRONG_CODE"
    current = await bank.service.get(customer.enrollment_id, certificate=customer.certificate)
    assert current.state is State.APP_REGISTERED
    completed = await customer.step10()
    assert completed.state is State.COMPLETED
    user = await bank.repository.user(completed.user_id)
    assert user.record.setup_complete
    assert user.record.token_id == completed.token_id
    assert await bank.otp.token_state(completed.token_id) is TokenState.ACTIVE
    [mail] = await bank.mails_to(customer.email)
    assert customer.login_id in mail


# -- reading, the replays' credential checks, cancelling ------------------------------------------------------


async def test_the_current_enrollment_is_found_by_its_certificate(bank: Bank, customer: Customer) -> None:
    """The certificate step 4 issued finds its enrollment; a stranger's finds none."""
    enrollment = await customer.walk_to(State.CERTIFICATE_ISSUED)
    found = await bank.service.current_for_certificate(customer.certificate)
    assert found.enrollment_id == enrollment.enrollment_id
    with pytest.raises(NotFound) as missing:
        await bank.service.current_for_certificate(A_STRANGERS_CERTIFICATE)
    assert missing.value.reason == "ENROLLMENT_NOT_FOUND"


async def test_the_credential_checks_before_a_replay_refuse_the_wrong_caller(bank: Bank, customer: Customer) -> None:
    """The session, the retired session (step 4's own replay), the certificate and the login password are each
    checked the way their step checks them."""
    await customer.walk_to(State.CERTIFICATE_LOGGED_IN)
    service, enrollment_id = bank.service, customer.enrollment_id
    await service.check_session(enrollment_id, customer.session, retired=True)
    with pytest.raises(UnauthenticatedError):
        await service.check_session(enrollment_id, customer.session)
    await service.check_certificate(enrollment_id, customer.certificate)
    with pytest.raises(PermissionDenied):
        await service.check_certificate(enrollment_id, A_STRANGERS_CERTIFICATE)
    await service.check_login_password(enrollment_id, customer.certificate, LOGIN_PASSWORD)
    with pytest.raises(UnauthenticatedError):
        await service.check_login_password(enrollment_id, customer.certificate, CONFIRMATION_PASSWORD)


async def test_cancelling_revokes_what_the_setup_made_and_frees_the_login_id(bank: Bank, customer: Customer) -> None:
    """A cancelled setup's certificate and token are revoked at once, its user and login ID released, and the
    record says the clean-up is done."""
    enrollment = await customer.walk_to(State.TOKEN_REQUESTED)
    cancelled = await bank.service.cancel(customer.enrollment_id, "", customer.certificate)
    assert cancelled.state is State.CANCELLED
    assert bank.ca.active_serials(enrollment.user_id) == []
    assert bank.otp.tokens[enrollment.token_id].state == "REVOKED"
    assert not await bank.repository.login_id_taken(customer.login_id)
    stored = await bank.repository.enrollment(customer.enrollment_id)
    assert stored.record.cleanup is Cleanup.DONE
    with pytest.raises(FailedPrecondition):
        await customer.step8()


async def test_an_idle_setup_expires_and_the_sweeper_cleans_it_up(bank: Bank, customer: Customer) -> None:
    """Past its idle timeout the enrollment reads EXPIRED at once; the sweeper's pass records it, revokes its
    certificate and releases the login ID."""
    enrollment = await customer.walk_to(State.CERTIFICATE_ISSUED)
    bank.clock.advance(EnrollmentPolicy().idle_seconds + 1)
    assert (await bank.service.get(customer.enrollment_id, certificate=customer.certificate)).state is State.EXPIRED
    report = await bank.service.setups.sweep()
    assert (report.expired, report.cleaned) == (1, 1)
    assert bank.ca.active_serials(enrollment.user_id) == []
    assert not await bank.repository.login_id_taken(customer.login_id)
    assert await bank.service.setups.sweep() == type(report)()


async def test_an_operator_reopens_an_expired_setup_where_it_stood(bank: Bank, customer: Customer) -> None:
    """Re-opened before its clean-up began, an expired setup resumes in its state with its certificate."""
    await customer.walk_to(State.CERTIFICATE_LOGGED_IN)
    bank.clock.advance(EnrollmentPolicy().idle_seconds + 1)
    assert await bank.service.setups.expire_due() == 1
    reopened = await bank.service.reopen(customer.enrollment_id)
    assert reopened.state is State.CERTIFICATE_LOGGED_IN
    assert (await customer.step6()).state is State.PASSWORD_VERIFIED


async def test_a_setup_reopened_after_its_clean_up_goes_back_to_step_4(bank: Bank, customer: Customer) -> None:
    """Once its certificate was revoked the re-opened setup stands at REGISTERED with its login ID reserved
    again, and step 4 issues a new certificate."""
    first = await customer.walk_to(State.CERTIFICATE_ISSUED)
    bank.clock.advance(EnrollmentPolicy().idle_seconds + 1)
    await bank.service.setups.sweep()
    assert not await bank.repository.login_id_taken(customer.login_id)
    reopened = await bank.service.reopen(customer.enrollment_id)
    assert (reopened.state, reopened.certificate_serial) == (State.REGISTERED, "")
    assert await bank.repository.login_id_taken(customer.login_id)
    again = await customer.step4(csr=csr_for(new_key()), request_id="cert-2")
    assert again.state is State.CERTIFICATE_ISSUED
    assert again.certificate_serial != first.certificate_serial
    assert bank.ca.active_serials(first.user_id) == [again.certificate_serial]


async def test_the_retention_erases_an_abandoned_setups_personal_data(bank: Bank, customer: Customer) -> None:
    """Ninety days after it expired the sweeper erases the setup's name, addresses and hashes; its ids stay,
    and an operator can no longer re-open it."""
    await customer.walk_to(State.PROFILE_SUBMITTED)
    bank.clock.advance(EnrollmentPolicy().idle_seconds + 1)
    assert (await bank.service.setups.sweep()).erased == 0
    bank.clock.advance(90 * DAY)
    assert (await bank.service.setups.sweep()).erased == 1
    stored = (await bank.repository.enrollment(customer.enrollment_id)).record
    assert (stored.user_name, stored.email, stored.login_password_hash) == ("", "", "")
    assert (stored.enrollment_id, stored.state) == (customer.enrollment_id, State.EXPIRED)
    with pytest.raises(FailedPrecondition) as refused:
        await bank.service.reopen(customer.enrollment_id)
    assert refused.value.reason == "PERSONAL_DATA_ERASED"


# -- a lost PC ------------------------------------------------------------------------------------------------


async def test_a_lost_pc_reissue_completes_with_the_same_login_id(bank: Bank, customer: Customer) -> None:
    """The reissue revokes the user's certificates and answers a notice; steps 1, 4, 5 and 6 with it issue a
    new certificate to the same user and complete."""
    completed = await customer.walk_to(State.COMPLETED)
    notice = await bank.service.reissue_certificate(completed.user_id, "keyCompromise")
    assert bank.ca.active_serials(completed.user_id) == []
    assert notice.application.kind is Kind.REISSUE
    again = bank.customer(account=customer.account)
    again.notice = notice
    opened = await again.step1()
    assert (opened.kind, opened.login_id, opened.user_id) == (Kind.REISSUE, customer.login_id, completed.user_id)
    await again.step4()
    await again.step5()
    done = await again.step6()
    assert done.state is State.COMPLETED
    assert bank.ca.active_serials(completed.user_id) == [again.certificate.serial_number]


async def test_a_reissue_needs_a_completed_setup(bank: Bank, customer: Customer) -> None:
    """A user whose setup is still under way is cancelled or left to expire, not reissued."""
    enrollment = await customer.walk_to(State.REGISTERED)
    with pytest.raises(FailedPrecondition) as refused:
        await bank.service.reissue_certificate(enrollment.user_id, "keyCompromise")
    assert refused.value.reason == "SETUP_INCOMPLETE"


async def test_a_step_out_of_order_is_refused_before_any_call_to_the_ca(bank: Bank, customer: Customer) -> None:
    """Step 4 before step 3 names the expected step and never reaches the CA."""
    await customer.walk_to(State.PROFILE_SUBMITTED)
    with pytest.raises(FailedPrecondition) as wrong_step:
        await customer.step4()
    assert wrong_step.value.reason == "WRONG_STEP"
    assert wrong_step.value.metadata["expected_step"] == "CONFIRM_REGISTRATION"
    assert bank.ca.count("issue_customer_certificate") == 0
    assert (await bank.repository.enrollment(customer.enrollment_id)).record.state is State.PROFILE_SUBMITTED
