"""The credentials' lifecycle after the setup, against the real services on a fake clock: password change (login
and confirmation) and the operator's reset notice, a new token for a new phone (with a session, or without one
once an operator allowed it) and a disabled token, certificate renewal with its reminders and the superseded
certificate's revocation, and the front-end role kept away from what mints or replaces a credential."""

from __future__ import annotations

import asyncio
import json
import uuid
from email.message import EmailMessage
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kagi.ca.v1 import ca_pb2
from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from services.enrollment_service.app.credentials import CredentialLifecycle
from tests.support.enrollment_flow import USAGE_START_PASSWORD, Customer, Stack, code_for, make_csr
from tests.support.frontend import FRONTEND, completed, issue_frontend, next_code, refused
from tests.support.tools import run, tool

PASSWORD = "Passw0rd"
CONFIRMATION_PASSWORD = "Kakunin9"
USER_EMAIL = "taro@example.co.jp"
DAY = 86400.0
LOGIN = upb.PASSWORD_KIND_LOGIN
CONFIRMATION = upb.PASSWORD_KIND_CONFIRMATION
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


# -- helpers ------------------------------------------------------------------------------------------------------


def _admin(stack: Stack, *args: str) -> list[str]:
    assert stack.dev is not None
    return [tool("kagi"), "admin", "--state-dir", str(stack.dev.state_dir), *args]


async def _signed_in(stack: Stack, workdir: Path, clock: FakeClock) -> tuple[Customer, str, str]:
    """A customer who completed the setup (its completion mail delivered), its user id and a live access token."""
    since = len(stack.smtp.inbox.messages)
    customer = await completed(stack, workdir, clock)
    await _mails(stack, USER_EMAIL, since, subject="Initial setup complete")
    session = await customer.login()
    return customer, session.user.user_id, session.access_token


async def _user(customer: Customer, user_id: str) -> upb.User:
    reply = await customer.users("developer").GetUser(upb.GetUserRequest(user_id=user_id))
    user: upb.User = reply.user
    return user


def _change(
    customer: Customer,
    user_id: str,
    token: str,
    current: str,
    new: str,
    again: str | None = None,
    *,
    kind: upb.PasswordKind.ValueType = LOGIN,
) -> grpc.aio.UnaryUnaryCall:
    request = upb.ChangePasswordRequest(
        user_id=user_id,
        access_token=token,
        kind=kind,
        current_password=current,
        new_password=new,
        new_password_confirmation=new if again is None else again,
    )
    return customer.users().ChangePassword(request, metadata=customer.cert_metadata)


def _reset(
    customer: Customer, temporary: str, new: str, *, kind: upb.PasswordKind.ValueType = LOGIN
) -> grpc.aio.UnaryUnaryCall:
    request = upb.ResetPasswordRequest(
        kind=kind, temporary_password=temporary, new_password=new, new_password_confirmation=new
    )
    return customer.users().ResetPassword(request, metadata=customer.cert_metadata)


def _step_up(customer: Customer, user_id: str, code: str, token: str) -> grpc.aio.UnaryUnaryCall:
    request = upb.VerifyOtpRequest(
        request_id=uuid.uuid4().hex, user_id=user_id, otp=code, purpose=upb.OTP_PURPOSE_STEP_UP, access_token=token
    )
    return customer.users().VerifyOtp(request, metadata=customer.cert_metadata)


def _check(customer: Customer, user_id: str, code: str) -> grpc.aio.UnaryUnaryCall:
    request = upb.VerifyOtpRequest(
        request_id=uuid.uuid4().hex, user_id=user_id, otp=code, purpose=upb.OTP_PURPOSE_CHECK
    )
    return customer.users().VerifyOtp(request, metadata=customer.cert_metadata)


def _confirm(customer: Customer, user_id: str, token: str, password: str, code: str) -> grpc.aio.UnaryUnaryCall:
    request = upb.ConfirmTransactionRequest(
        user_id=user_id,
        transaction_id=f"txn-{uuid.uuid4().hex}",
        transaction_summary="振込 株式会社テスト 50,000円",
        confirmation_password=password,
        otp=code,
        access_token=token,
    )
    return customer.users().ConfirmTransaction(request, metadata=customer.cert_metadata)


def _reissue(
    customer: Customer,
    *,
    access_token: str = "",
    confirmation_password: str = CONFIRMATION_PASSWORD,
    login_id: str = "",
    login_password: str = "",
) -> grpc.aio.UnaryUnaryCall:
    email = customer.mobile_email
    request = upb.ReissueTokenRequest(
        request_id=uuid.uuid4().hex,
        access_token=access_token,
        mobile_email=email,
        mobile_email_confirmation=email,
        usage_start_password=USAGE_START_PASSWORD,
        usage_start_password_confirmation=USAGE_START_PASSWORD,
        confirmation_password=confirmation_password,
        login_id=login_id,
        login_password=login_password,
    )
    return customer.users().ReissueToken(request, metadata=customer.cert_metadata)


def _renew(customer: Customer, token: str, csr: str, password: str = PASSWORD) -> grpc.aio.UnaryUnaryCall:
    request = upb.RenewCertificateRequest(
        request_id=uuid.uuid4().hex, access_token=token, csr_pem=csr, login_password=password
    )
    return customer.users().RenewCertificate(request, metadata=customer.cert_metadata)


async def _session_ended(customer: Customer, token: str) -> None:
    """The token's session is over: even ending it again is refused as an invalid token."""
    refusal = await refused(
        customer.users().EndSession(upb.EndSessionRequest(access_token=token), metadata=customer.cert_metadata)
    )
    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "ACCESS_TOKEN_INVALID")


async def _mails(stack: Stack, to: str, since: int, count: int = 1, *, subject: str = "") -> list[EmailMessage]:
    """The mails to `to` (with `subject` in the subject) after the first `since` of the inbox, once `count` of
    them arrived."""
    found: list[EmailMessage] = []
    for _ in range(60):
        await stack.deliver_mail()
        found = [m for m in stack.smtp.inbox.messages[since:] if m["To"] == to and subject in m["Subject"]]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} mail(s) to {to}, got {len(found)}")


async def _no_mail(stack: Stack, since: int) -> None:
    await stack.deliver_mail()
    await asyncio.sleep(0.2)
    await stack.deliver_mail()
    assert stack.smtp.inbox.messages[since:] == []


def _lifecycle(stack: Stack) -> CredentialLifecycle:
    """The running enrollment service's lifecycle use cases (maintain() is what its sweeper runs)."""
    assert stack.dev is not None
    lifecycle: CredentialLifecycle | None = stack.dev.components["enrollment"].lifecycle
    assert lifecycle is not None
    return lifecycle


def _serial(certificate_pem: str) -> str:
    return format(x509.load_pem_x509_certificate(certificate_pem.encode()).serial_number, "x")


async def _at_ca(stack: Stack, certificate_pem: str) -> ca_pb2.Certificate:
    reply = await stack.ca().GetCertificate(ca_pb2.GetCertificateRequest(serial_number=_serial(certificate_pem)))
    certificate: ca_pb2.Certificate = reply.certificate
    return certificate


async def _new_phone(customer: Customer, call: grpc.aio.UnaryUnaryCall) -> upb.ReissueTokenResponse:
    """Send a reissue (built with customer.mobile_email), read the new IDs from its mail, take steps 8 and 9."""
    reply: upb.ReissueTokenResponse = await call
    customer.service_id = customer.app_user_id = ""
    await customer.read_mail()
    await customer.step8()
    await customer.step9()
    return reply


def _expect_new_phone(customer: Customer) -> tuple[str, str, str]:
    """Point the customer at a new phone's address; return the old IDs and seed."""
    old = (customer.service_id, customer.app_user_id, customer.secret)
    customer.mobile_email = f"new-phone-{uuid.uuid4().hex[:8]}@example.jp"
    customer.mail_seen = len(customer.stack.smtp.inbox.messages)
    return old


# -- 1. password change -------------------------------------------------------------------------------------------


async def test_a_login_password_change_ends_every_session_and_mails_the_user(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """Breaking a rule (too short, no digit, equal to the login ID, a confirmation that differs, equal to the
    confirmation password) is INVALID_ARGUMENT naming new_password or new_password_confirmation and changes
    nothing (the session lives on, the old password still logs in, no mail); a wrong current password is
    UNAUTHENTICATED WRONG_PASSWORD; a right change refuses the old password, accepts the new one, ends every
    live session (ACCESS_TOKEN_INVALID) and sends the user a mail in Japanese and English."""
    customer, user_id, first = await _signed_in(stack, workdir, clock)
    second = (await customer.login()).access_token
    mails = len(stack.smtp.inbox.messages)

    broken = {
        "Ab1": "new_password",
        "Abcdefgh": "new_password",
        customer.login_id: "new_password",
        CONFIRMATION_PASSWORD: "new_password",
    }
    for new, field in broken.items():
        refusal = await refused(_change(customer, user_id, first, PASSWORD, new))
        assert (refusal.code, refusal.reason) == (INVALID_ARGUMENT, "INVALID_PASSWORD"), new
        assert field in refusal.fields, (new, refusal.fields)
    mismatch = await refused(_change(customer, user_id, first, PASSWORD, "Newpass12", "Newpass13"))
    assert mismatch.code == INVALID_ARGUMENT
    assert "new_password_confirmation" in mismatch.fields
    wrong = await refused(_change(customer, user_id, first, "Wrong-pass1", "Newpass12"))
    assert (wrong.code, wrong.reason) == (UNAUTHENTICATED, "WRONG_PASSWORD")
    assert "current_password" in wrong.fields
    assert (await customer.login(PASSWORD)).access_token  # nothing changed (and the failure count starts again)
    await _no_mail(stack, mails)

    changed = await _change(customer, user_id, first, PASSWORD, "Newpass12")
    assert changed.user.user_id == user_id
    old = await refused(customer.login(PASSWORD))
    assert (old.code, old.reason) == (UNAUTHENTICATED, "LOGIN_FAILED")
    assert (await customer.login("Newpass12")).access_token
    for token in (first, second):
        await _session_ended(customer, token)

    (mail,) = await _mails(stack, USER_EMAIL, mails)
    assert "ログインパスワード変更のお知らせ" in mail["Subject"]
    assert "Your login password was changed" in mail["Subject"]
    body = mail.get_content()
    assert "山田 太郎 様" in body
    assert "ログインパスワードが変更されました" in body
    assert "Dear 山田 太郎" in body
    assert "your login password was changed" in body
    assert "Newpass12" not in body
    assert PASSWORD not in body


async def test_five_wrong_current_passwords_lock_the_user(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """Wrong current login passwords in a password change count toward the login lock: the first four are
    WRONG_PASSWORD, the fifth RESOURCE_EXHAUSTED USER_LOCKED; the user is then LOCKED (LOGIN_PASSWORD), the right
    password is refused USER_LOCKED and the session is over."""
    customer, user_id, token = await _signed_in(stack, workdir, clock)
    for _ in range(4):
        refusal = await refused(_change(customer, user_id, token, "Wrong-pass1", "Newpass12"))
        assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "WRONG_PASSWORD")
    fifth = await refused(_change(customer, user_id, token, "Wrong-pass1", "Newpass12"))
    assert (fifth.code, fifth.reason) == (RESOURCE_EXHAUSTED, "USER_LOCKED")
    user = await _user(customer, user_id)
    assert (user.state, user.lock_reason) == (upb.User.STATE_LOCKED, upb.User.LOCK_REASON_LOGIN_PASSWORD)
    locked = await refused(customer.login(PASSWORD))
    assert (locked.code, locked.reason) == (RESOURCE_EXHAUSTED, "USER_LOCKED")
    await _session_ended(customer, token)


async def test_a_confirmation_password_change(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """The confirmation password changes with the current one: a wrong current one is WRONG_PASSWORD, the login
    password as the new one is INVALID_ARGUMENT on new_password; after the change the old confirmation password
    confirms nothing (WRONG_CONFIRMATION_PASSWORD) and the new one confirms a transaction in a new session (the
    old session ended); the mail names the confirmation password."""
    customer, user_id, token = await _signed_in(stack, workdir, clock)
    mails = len(stack.smtp.inbox.messages)
    wrong = await refused(_change(customer, user_id, token, "Wrong-pass1", "Kakunin10", kind=CONFIRMATION))
    assert (wrong.code, wrong.reason) == (UNAUTHENTICATED, "WRONG_PASSWORD")
    same = await refused(_change(customer, user_id, token, CONFIRMATION_PASSWORD, PASSWORD, kind=CONFIRMATION))
    assert same.code == INVALID_ARGUMENT
    assert "new_password" in same.fields

    await _change(customer, user_id, token, CONFIRMATION_PASSWORD, "Kakunin10", kind=CONFIRMATION)
    await _session_ended(customer, token)
    token = (await customer.login()).access_token
    old = await refused(_confirm(customer, user_id, token, CONFIRMATION_PASSWORD, next_code(customer, clock)))
    assert (old.code, old.reason) == (UNAUTHENTICATED, "WRONG_CONFIRMATION_PASSWORD")
    confirmed = await _confirm(customer, user_id, token, "Kakunin10", next_code(customer, clock))
    assert confirmed.confirmation_token
    (mail,) = await _mails(stack, USER_EMAIL, mails)
    assert "確認用パスワード変更のお知らせ" in mail["Subject"]
    assert "Your confirmation password was changed" in mail["Subject"]


# -- 2. the operator's reset -------------------------------------------------------------------------------------


async def _reset_notice(stack: Stack, user_id: str, kind: str = "login") -> dict[str, str]:
    notice: dict[str, str] = json.loads(
        await run(_admin(stack, "reset-password", "--user", user_id, "--kind", kind, "--yes", "--json"))
    )
    return notice


async def test_an_operators_reset_notice_sets_a_new_login_password(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """`kagi admin reset-password --kind login --yes --json` prints the notice with a temporary password and ends every
    live session at once; five wrong login passwords lock the user meanwhile; ResetPassword through the gateway
    (the relayed certificate, no session) with the temporary password sets a new password and lifts that lock:
    the old password is refused, the new one logs in, and the notice cannot be used twice."""
    customer, user_id, token = await _signed_in(stack, workdir, clock)
    notice = await _reset_notice(stack, user_id)
    assert (notice["user_id"], notice["login_id"], notice["kind"]) == (user_id, customer.login_id, "login")
    assert notice["temporary_password"]
    assert notice["expires_at"]
    await _session_ended(customer, token)

    for _ in range(5):
        await refused(customer.login("Wrong-pass1"))
    assert (await _user(customer, user_id)).lock_reason == upb.User.LOCK_REASON_LOGIN_PASSWORD
    bad = await refused(_reset(customer, notice["temporary_password"], "short"))
    assert (bad.code, set(bad.fields)) == (INVALID_ARGUMENT, {"new_password"})

    reply = await _reset(customer, notice["temporary_password"], "Resetpw88")
    assert reply.user.state == upb.User.STATE_ACTIVE
    old = await refused(customer.login(PASSWORD))
    assert (old.code, old.reason) == (UNAUTHENTICATED, "LOGIN_FAILED")
    assert (await customer.login("Resetpw88")).access_token
    again = await refused(_reset(customer, notice["temporary_password"], "Another99"))
    assert (again.code, again.reason) == (NOT_FOUND, "NO_RESET_NOTICE")


async def test_five_wrong_temporary_passwords_spend_the_notice(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """Four wrong temporary passwords are UNAUTHENTICATED WRONG_TEMPORARY_PASSWORD, the fifth RESOURCE_EXHAUSTED
    RESET_NOTICE_LOCKED; then even the right one is refused NO_RESET_NOTICE and the old password still works."""
    customer, user_id, _token = await _signed_in(stack, workdir, clock)
    notice = await _reset_notice(stack, user_id)
    for _ in range(4):
        refusal = await refused(_reset(customer, "Wrongtemp1", "Resetpw88"))
        assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "WRONG_TEMPORARY_PASSWORD")
    fifth = await refused(_reset(customer, "Wrongtemp1", "Resetpw88"))
    assert (fifth.code, fifth.reason) == (RESOURCE_EXHAUSTED, "RESET_NOTICE_LOCKED")
    right = await refused(_reset(customer, notice["temporary_password"], "Resetpw88"))
    assert (right.code, right.reason) == (NOT_FOUND, "NO_RESET_NOTICE")
    assert (await customer.login(PASSWORD)).access_token


async def test_a_reset_notice_serves_its_own_user_only_and_expires(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """Another customer's certificate cannot use a notice's temporary password (NO_RESET_NOTICE: that customer
    has none) and leaves the notice intact; fifteen days later the notice has expired (NO_RESET_NOTICE) and the
    old password still logs in."""
    customer, user_id, _token = await _signed_in(stack, workdir, clock)
    other = await completed(stack, workdir, clock)
    notice = await _reset_notice(stack, user_id)
    foreign = await refused(_reset(other, notice["temporary_password"], "Resetpw88"))
    assert (foreign.code, foreign.reason) == (NOT_FOUND, "NO_RESET_NOTICE")
    assert (await other.login(PASSWORD)).access_token

    clock.advance(15 * DAY)
    expired = await refused(_reset(customer, notice["temporary_password"], "Resetpw88"))
    assert (expired.code, expired.reason) == (NOT_FOUND, "NO_RESET_NOTICE")
    assert (await customer.login(PASSWORD)).access_token


# -- 3. a new phone --------------------------------------------------------------------------------------------


async def test_a_new_phone_with_the_session(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """ReissueToken with the session's token and the confirmation password sends a mail with a NEW service ID
    and user ID to the new phone's address; the app's steps 8-9 with them work and a step-up with the new
    seed's code works; the old token's codes are refused, before and after the new app is registered."""
    customer, user_id, token = await _signed_in(stack, workdir, clock)
    old_token_id = (await _user(customer, user_id)).token_id
    old_service_id, old_app_user_id, old_secret = _expect_new_phone(customer)

    reply: upb.ReissueTokenResponse = await _reissue(customer, access_token=token)
    assert reply.user.token_state == upb.User.TOKEN_STATE_PENDING
    assert reply.user.token_id
    assert reply.user.token_id != old_token_id
    refusal = await refused(_check(customer, user_id, next_code(customer, clock)))  # the old seed, new pending token
    assert (refusal.code, refusal.reason) == (FAILED_PRECONDITION, "TOKEN_NOT_ACTIVE"), refusal

    customer.service_id = customer.app_user_id = ""
    await customer.read_mail()
    assert customer.service_id
    assert customer.service_id != old_service_id
    assert customer.app_user_id
    assert customer.app_user_id != old_app_user_id
    await customer.step8()
    await customer.step9()
    assert customer.secret != old_secret

    clock.advance(60)
    old_code = code_for(old_secret, clock.now())
    stale = await refused(_step_up(customer, user_id, old_code, token))
    assert (stale.code, stale.reason) == (UNAUTHENTICATED, "WRONG_CODE"), stale
    raised = await _step_up(customer, user_id, code_for(customer.secret, clock.now()), token)
    assert raised.access_token
    assert (await _user(customer, user_id)).token_state == upb.User.TOKEN_STATE_ACTIVE


async def test_wrong_confirmation_passwords_in_a_reissue_count_toward_the_lock(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """A reissue with a wrong confirmation password is UNAUTHENTICATED WRONG_CONFIRMATION_PASSWORD and replaces
    nothing; four of them and one wrong confirmation of a transaction make five in a row: USER_LOCKED
    (CONFIRMATION_PASSWORD), and the token is still the old one."""
    customer, user_id, token = await _signed_in(stack, workdir, clock)
    token_id = (await _user(customer, user_id)).token_id
    _expect_new_phone(customer)
    for _ in range(4):
        refusal = await refused(_reissue(customer, access_token=token, confirmation_password="Wrong-pass1"))
        assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "WRONG_CONFIRMATION_PASSWORD")
    fifth = await refused(_confirm(customer, user_id, token, "Wrong-pass1", next_code(customer, clock)))
    assert (fifth.code, fifth.reason) == (RESOURCE_EXHAUSTED, "USER_LOCKED")
    user = await _user(customer, user_id)
    assert (user.lock_reason, user.token_id) == (upb.User.LOCK_REASON_CONFIRMATION_PASSWORD, token_id)
    assert user.token_state == upb.User.TOKEN_STATE_ACTIVE


async def test_a_reissue_without_a_session_needs_the_operators_permission(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """Without a session (login ID and login password in the request) a reissue is FAILED_PRECONDITION
    REISSUE_NOT_ALLOWED until `kagi admin reissue-token --user ID --yes`, which revokes the old token (its codes are
    refused, the user's token is DISABLED); then a wrong login password is LOGIN_FAILED, the right one reissues,
    the app's steps 8-9 and a step-up with the new seed work, and the permission is spent."""
    customer, user_id, _token = await _signed_in(stack, workdir, clock)
    _expect_new_phone(customer)
    no_session = {"login_id": customer.login_id, "login_password": PASSWORD}
    refusal = await refused(_reissue(customer, **no_session))
    assert (refusal.code, refusal.reason) == (FAILED_PRECONDITION, "REISSUE_NOT_ALLOWED")

    out = await run(_admin(stack, "reissue-token", "--user", user_id, "--yes"))
    assert customer.login_id in out
    assert (await _user(customer, user_id)).token_state == upb.User.TOKEN_STATE_DISABLED
    revoked = await refused(_check(customer, user_id, next_code(customer, clock)))
    assert (revoked.code, revoked.reason) == (FAILED_PRECONDITION, "TOKEN_NOT_ACTIVE"), revoked
    wrong = await refused(_reissue(customer, login_id=customer.login_id, login_password="Wrong-pass1"))
    assert (wrong.code, wrong.reason) == (UNAUTHENTICATED, "LOGIN_FAILED")

    reply = await _new_phone(customer, _reissue(customer, **no_session))
    assert reply.user.token_state == upb.User.TOKEN_STATE_PENDING
    token = (await customer.login()).access_token
    assert (await _step_up(customer, user_id, next_code(customer, clock), token)).access_token
    spent = await refused(_reissue(customer, **no_session))
    assert (spent.code, spent.reason) == (FAILED_PRECONDITION, "REISSUE_NOT_ALLOWED")


async def test_wrong_login_passwords_in_a_reissue_without_a_session_count_toward_the_lock(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """Once an operator allowed a reissue without a session, the login password in it is guessed no more freely
    than at a login: the first four wrong ones are LOGIN_FAILED, the fifth locks the user (USER_LOCKED)."""
    customer, user_id, _token = await _signed_in(stack, workdir, clock)
    await run(_admin(stack, "reissue-token", "--user", user_id, "--yes"))
    for _ in range(4):
        refusal = await refused(_reissue(customer, login_id=customer.login_id, login_password="Wrong-pass1"))
        assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "LOGIN_FAILED")
    fifth = await refused(_reissue(customer, login_id=customer.login_id, login_password="Wrong-pass1"))
    assert (fifth.code, fifth.reason) == (RESOURCE_EXHAUSTED, "USER_LOCKED")
    assert (await _user(customer, user_id)).lock_reason == upb.User.LOCK_REASON_LOGIN_PASSWORD


async def test_an_operator_disables_a_lost_phones_token(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """`kagi admin disable-token --user ID --reason 'lost phone' --yes` disables the token: GetUser shows
    TOKEN_STATE_DISABLED, and the app's codes are refused for a step-up and a check."""
    customer, user_id, token = await _signed_in(stack, workdir, clock)
    out = await run(_admin(stack, "disable-token", "--user", user_id, "--reason", "lost phone", "--yes"))
    assert "disabled" in out
    assert (await _user(customer, user_id)).token_state == upb.User.TOKEN_STATE_DISABLED
    step_up = await refused(_step_up(customer, user_id, next_code(customer, clock), token))
    check = await refused(_check(customer, user_id, next_code(customer, clock)))
    for refusal in (step_up, check):
        assert (refusal.code, refusal.reason) == (FAILED_PRECONDITION, "TOKEN_NOT_ACTIVE"), refusal


# -- 4. renewal ------------------------------------------------------------------------------------------------


async def test_renewal_window_and_the_reminders(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """A fresh certificate is outside the renewal window (FAILED_PRECONDITION OUTSIDE_RENEWAL_WINDOW); 340 days
    later the sweeper's pass (which runs maintain()) sends the 30-day reminder once (a second pass sends nothing),
    and 24 days after that the 7-day reminder, each in Japanese and English to the user's address."""
    customer, _user_id, token = await _signed_in(stack, workdir, clock)
    csr, _key = make_csr(customer.workdir)
    early = await refused(_renew(customer, token, csr))
    assert (early.code, early.reason) == (FAILED_PRECONDITION, "OUTSIDE_RENEWAL_WINDOW")
    assert early.metadata.get("renewable_from_days_before_expiry") == "30"

    lifecycle = _lifecycle(stack)
    mails = len(stack.smtp.inbox.messages)
    assert await lifecycle.maintain() == 0  # nothing due yet
    clock.advance(340 * DAY)
    assert stack.dev is not None
    assert (await stack.dev.components["enrollment"].sweep_now()).maintained == 1
    (reminder,) = await _mails(stack, USER_EMAIL, mails)
    body = reminder.get_content()
    assert "電子証明書の有効期限のお知らせ" in reminder["Subject"]
    assert "残り30日以内" in body
    assert "within 30 days" in body
    mails = len(stack.smtp.inbox.messages)
    assert await lifecycle.maintain() == 0
    await _no_mail(stack, mails)

    clock.advance(24 * DAY)
    await lifecycle.maintain()
    (reminder,) = await _mails(stack, USER_EMAIL, mails)
    body = reminder.get_content()
    assert "残り7日以内" in body
    assert "within 7 days" in body
    mails = len(stack.smtp.inbox.messages)
    assert await lifecycle.maintain() == 0
    await _no_mail(stack, mails)


async def test_renewal_supersedes_the_old_certificate_at_the_new_ones_first_session(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """Inside the window a CSR for the current key is INVALID_ARGUMENT KEY_REUSED naming csr_pem and a wrong
    login password is LOGIN_FAILED; a renewal answers a new certificate (same subject, new key); the old one
    stays ACTIVE (and still logs in) until the new one's first session, after which the CA shows it REVOKED,
    superseded; the revoked old certificate cannot be renewed again."""
    customer, _user_id, _token = await _signed_in(stack, workdir, clock)
    clock.advance(340 * DAY)
    token = (await customer.login()).access_token
    reused = await refused(_renew(customer, token, customer.csr))
    assert (reused.code, reused.reason) == (INVALID_ARGUMENT, "KEY_REUSED")
    assert "csr_pem" in reused.fields
    csr, _key = make_csr(customer.workdir)
    wrong = await refused(_renew(customer, token, csr, "Wrong-pass1"))
    assert (wrong.code, wrong.reason) == (UNAUTHENTICATED, "LOGIN_FAILED")

    renewed = await _renew(customer, token, csr)
    old_pem, new_pem = customer.certificate_pem, renewed.certificate_pem
    old_cert = x509.load_pem_x509_certificate(old_pem.encode())
    new_cert = x509.load_pem_x509_certificate(new_pem.encode())
    assert renewed.serial_number == _serial(new_pem) != _serial(old_pem)
    assert new_cert.subject == old_cert.subject
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert new_cert.public_key().public_bytes(*der) != old_cert.public_key().public_bytes(*der)
    assert new_cert.not_valid_after_utc > old_cert.not_valid_after_utc
    assert renewed.chain_pem
    assert (await _at_ca(stack, old_pem)).state == ca_pb2.Certificate.STATE_ACTIVE
    assert (await customer.login()).access_token  # the old certificate still works meanwhile
    assert (await _at_ca(stack, old_pem)).state == ca_pb2.Certificate.STATE_ACTIVE

    customer.certificate_pem = new_pem
    assert (await customer.login()).access_token
    old = await _at_ca(stack, old_pem)
    assert (old.state, old.revocation_reason) == (
        ca_pb2.Certificate.STATE_REVOKED,
        ca_pb2.REVOCATION_REASON_SUPERSEDED,
    )
    assert (await _at_ca(stack, new_pem)).state == ca_pb2.Certificate.STATE_ACTIVE

    customer.certificate_pem = old_pem  # the gateway would refuse it; the service refuses it all the same
    csr, _key = make_csr(customer.workdir)
    again = await refused(_renew(customer, token, csr))
    assert (again.code, again.reason) == (FAILED_PRECONDITION, "CERTIFICATE_NOT_ACTIVE"), again


async def test_a_retried_renewal_answers_the_same_certificate(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """A renewal retried with the same request_id (a lost answer) returns the first certificate again and issues
    no second one."""
    customer, _user_id, _token = await _signed_in(stack, workdir, clock)
    clock.advance(340 * DAY)
    token = (await customer.login()).access_token
    csr, _key = make_csr(customer.workdir)
    request = upb.RenewCertificateRequest(
        request_id=uuid.uuid4().hex, access_token=token, csr_pem=csr, login_password=PASSWORD
    )
    first = await customer.users().RenewCertificate(request, metadata=customer.cert_metadata)
    again = await customer.users().RenewCertificate(request, metadata=customer.cert_metadata)
    assert again.serial_number == first.serial_number


async def test_an_unused_renewal_supersedes_the_old_certificate_after_seven_days(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """A renewal whose certificate is never used leaves the old one ACTIVE through maintain() within seven days;
    after seven days maintain() revokes it (superseded)."""
    customer, _user_id, _token = await _signed_in(stack, workdir, clock)
    clock.advance(340 * DAY)
    token = (await customer.login()).access_token
    csr, _key = make_csr(customer.workdir)
    await _renew(customer, token, csr)
    lifecycle = _lifecycle(stack)
    clock.advance(6 * DAY)
    await lifecycle.maintain()
    assert (await _at_ca(stack, customer.certificate_pem)).state == ca_pb2.Certificate.STATE_ACTIVE
    clock.advance(1 * DAY + 1)
    await lifecycle.maintain()
    old = await _at_ca(stack, customer.certificate_pem)
    assert (old.state, old.revocation_reason) == (
        ca_pb2.Certificate.STATE_REVOKED,
        ca_pb2.REVOCATION_REASON_SUPERSEDED,
    )
    assert await lifecycle.maintain() == 0


async def test_a_revoked_certificate_cannot_be_renewed(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """After the operator revokes the certificate (a lost PC), a renewal with it is refused
    (FAILED_PRECONDITION CERTIFICATE_NOT_ACTIVE) and no new certificate is issued."""
    customer, user_id, _token = await _signed_in(stack, workdir, clock)
    clock.advance(340 * DAY)
    token = (await customer.login()).access_token
    await stack.ca().RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            request_id=uuid.uuid4().hex,
            serial_number=_serial(customer.certificate_pem),
            reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
        )
    )
    csr, _key = make_csr(customer.workdir)
    refusal = await refused(_renew(customer, token, csr))
    assert (refusal.code, refusal.reason) == (FAILED_PRECONDITION, "CERTIFICATE_NOT_ACTIVE"), refusal
    listed = await stack.ca().ListCertificates(ca_pb2.ListCertificatesRequest(subject_id=user_id))
    assert [c.serial_number for c in listed.certificates] == [_serial(customer.certificate_pem)]


# -- 5. the front-end role -------------------------------------------------------------------------------------


async def test_a_front_end_cannot_reset_renew_or_reissue(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """A bank front-end's identity (role frontend) is PERMISSION_DENIED for ResetPassword, RenewCertificate and
    ReissueToken (what mints or replaces a credential), and for the operator's IssuePasswordReset,
    AllowTokenReissue and DisableUserToken; it may change a password with the session's token."""
    customer, user_id, token = await _signed_in(stack, workdir, clock)
    await issue_frontend(stack, workdir / "frontend")
    users = customer.users(FRONTEND)
    csr, _key = make_csr(customer.workdir)
    email = customer.mobile_email
    calls = {
        "ResetPassword": users.ResetPassword(
            upb.ResetPasswordRequest(
                kind=LOGIN,
                temporary_password="Temp1234",
                new_password="Newpass12",
                new_password_confirmation="Newpass12",
            )
        ),
        "RenewCertificate": users.RenewCertificate(
            upb.RenewCertificateRequest(
                request_id=uuid.uuid4().hex, access_token=token, csr_pem=csr, login_password=PASSWORD
            )
        ),
        "ReissueToken": users.ReissueToken(
            upb.ReissueTokenRequest(
                request_id=uuid.uuid4().hex,
                access_token=token,
                mobile_email=email,
                mobile_email_confirmation=email,
                usage_start_password=USAGE_START_PASSWORD,
                usage_start_password_confirmation=USAGE_START_PASSWORD,
                confirmation_password=CONFIRMATION_PASSWORD,
            )
        ),
        "IssuePasswordReset": users.IssuePasswordReset(
            upb.IssuePasswordResetRequest(request_id=uuid.uuid4().hex, user_id=user_id, kind=LOGIN)
        ),
        "AllowTokenReissue": users.AllowTokenReissue(
            upb.AllowTokenReissueRequest(request_id=uuid.uuid4().hex, user_id=user_id)
        ),
        "DisableUserToken": users.DisableUserToken(
            upb.DisableUserTokenRequest(request_id=uuid.uuid4().hex, user_id=user_id, reason="lost phone")
        ),
    }
    for name, call in calls.items():
        refusal = await refused(call)
        assert refusal.code == grpc.StatusCode.PERMISSION_DENIED, (name, refusal)
    user = await _user(customer, user_id)
    assert (user.token_state, user.state) == (upb.User.TOKEN_STATE_ACTIVE, upb.User.STATE_ACTIVE)

    changed = await users.ChangePassword(
        upb.ChangePasswordRequest(
            user_id=user_id,
            access_token=token,
            kind=LOGIN,
            current_password=PASSWORD,
            new_password="Newpass12",
            new_password_confirmation="Newpass12",
        )
    )
    assert changed.user.user_id == user_id
    assert (await customer.login("Newpass12")).access_token
