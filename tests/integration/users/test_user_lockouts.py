"""Lockouts at the front-end boundary against the real services: five wrong login or confirmation passwords
lock the user (an operator unlocks), a certificate guessing at someone else's login ID is throttled without
ever locking its victim, five wrong codes lock the OTP token (the operator unlocks it at the OTP service), and
an operator's lock ends every live session for good."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc

from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.otp.v1 import otp_pb2
from tests.support.enrollment_flow import Customer, Stack
from tests.support.frontend import completed, next_code, refused, wrong_code

PASSWORD = "Passw0rd"
CONFIRMATION_PASSWORD = "Kakunin9"
SUMMARY = "振込 株式会社テスト 100,000円"


async def get_user(customer: Customer, user_id: str) -> upb.User:
    """Return the operator's view of a user."""
    reply = await customer.users("developer").GetUser(upb.GetUserRequest(user_id=user_id))
    user: upb.User = reply.user
    return user


async def unlock(customer: Customer, user_id: str) -> upb.User:
    """Return the operator's UnlockUser."""
    reply = await customer.users("developer").UnlockUser(
        upb.UnlockUserRequest(request_id=uuid.uuid4().hex, user_id=user_id)
    )
    user: upb.User = reply.user
    return user


def step_up(customer: Customer, user_id: str, code: str, access_token: str) -> grpc.aio.UnaryUnaryCall:
    """Return the gateway's VerifyOtp(STEP_UP) with the customer's certificate relayed."""
    request = upb.VerifyOtpRequest(
        request_id=uuid.uuid4().hex,
        user_id=user_id,
        otp=code,
        purpose=upb.OTP_PURPOSE_STEP_UP,
        access_token=access_token,
    )
    return customer.users().VerifyOtp(request, metadata=customer.cert_metadata)


def confirm(
    customer: Customer, user_id: str, code: str, access_token: str, *, password: str = CONFIRMATION_PASSWORD
) -> grpc.aio.UnaryUnaryCall:
    """Return the gateway's ConfirmTransaction of a new transaction with the customer's certificate."""
    request = upb.ConfirmTransactionRequest(
        user_id=user_id,
        transaction_id=f"txn-{uuid.uuid4().hex}",
        transaction_summary=SUMMARY,
        confirmation_password=password,
        otp=code,
        access_token=access_token,
    )
    return customer.users().ConfirmTransaction(request, metadata=customer.cert_metadata)


async def test_five_wrong_login_passwords_lock_the_user_until_an_operator_unlocks(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """Four wrong login passwords with the own certificate answer LOGIN_FAILED, the fifth in a row
    RESOURCE_EXHAUSTED USER_LOCKED, and then the right password is refused USER_LOCKED too; GetUser shows
    STATE_LOCKED / LOCK_REASON_LOGIN_PASSWORD. The operator's UnlockUser lifts it, the right password works,
    and the count starts again: four wrong, a right one, four wrong never lock."""
    customer = await completed(stack, workdir, clock)
    user_id = (await customer.login()).user.user_id

    for _ in range(4):
        refusal = await refused(customer.login("Wrong-pass-1"))
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED")
    fifth = await refused(customer.login("Wrong-pass-1"))
    assert (fifth.code, fifth.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "USER_LOCKED")
    right = await refused(customer.login(PASSWORD))
    assert (right.code, right.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "USER_LOCKED")
    user = await get_user(customer, user_id)
    assert user.state == upb.User.STATE_LOCKED
    assert user.lock_reason == upb.User.LOCK_REASON_LOGIN_PASSWORD

    unlocked = await unlock(customer, user_id)
    assert unlocked.state == upb.User.STATE_ACTIVE
    assert unlocked.lock_reason == upb.User.LOCK_REASON_UNSPECIFIED
    assert (await customer.login()).user.state == upb.User.STATE_ACTIVE

    for _ in range(2):
        for _ in range(4):
            refusal = await refused(customer.login("Wrong-pass-1"))
            assert refusal.reason == "LOGIN_FAILED"
        assert (await customer.login()).user.state == upb.User.STATE_ACTIVE


async def test_guessing_with_another_certificate_throttles_it_and_never_locks_the_victim(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """Twelve logins with another customer's certificate and the victim's login ID (wrong and right
    passwords): the first ten answer LOGIN_FAILED, then that certificate is throttled (RESOURCE_EXHAUSTED
    TOO_MANY_ATTEMPTS, even for its owner's own login) until the window passes; the victim is never locked
    (GetUser ACTIVE) and logs in all along."""
    victim = await completed(stack, workdir, clock)
    attacker = await completed(stack, workdir, clock)
    victim_id = (await victim.login()).user.user_id

    for attempt in range(12):
        password = PASSWORD if attempt % 3 == 0 else f"guess-{attempt}"
        request = upb.AuthenticateRequest(login_id=victim.login_id, login_password=password)
        refusal = await refused(attacker.users().Authenticate(request, metadata=attacker.cert_metadata))
        if attempt < 10:
            assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED"), attempt
        else:
            assert (refusal.code, refusal.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS")

    user = await get_user(victim, victim_id)
    assert user.state == upb.User.STATE_ACTIVE
    assert user.lock_reason == upb.User.LOCK_REASON_UNSPECIFIED
    assert (await victim.login()).user.state == upb.User.STATE_ACTIVE
    throttled = await refused(attacker.login())
    assert throttled.reason == "TOO_MANY_ATTEMPTS"

    clock.advance(15 * 60 + 1)
    assert (await attacker.login()).user.state == upb.User.STATE_ACTIVE


async def test_five_wrong_confirmation_passwords_lock_the_user_until_an_operator_unlocks(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """Four wrong confirmation passwords answer UNAUTHENTICATED WRONG_CONFIRMATION_PASSWORD, the fifth in a row
    RESOURCE_EXHAUSTED USER_LOCKED; GetUser shows LOCK_REASON_CONFIRMATION_PASSWORD and logins are refused
    USER_LOCKED. After UnlockUser a new login confirms with the right password and the code the refused
    attempts carried (a refused password does not spend the code)."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    user_id = session.user.user_id
    code = next_code(customer, clock)

    for _ in range(4):
        refusal = await refused(confirm(customer, user_id, code, session.access_token, password="Wrong-kakunin"))
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "WRONG_CONFIRMATION_PASSWORD")
    fifth = await refused(confirm(customer, user_id, code, session.access_token, password="Wrong-kakunin"))
    assert (fifth.code, fifth.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "USER_LOCKED")
    user = await get_user(customer, user_id)
    assert user.state == upb.User.STATE_LOCKED
    assert user.lock_reason == upb.User.LOCK_REASON_CONFIRMATION_PASSWORD
    assert (await refused(customer.login())).reason == "USER_LOCKED"

    assert (await unlock(customer, user_id)).state == upb.User.STATE_ACTIVE
    fresh = await customer.login()
    confirmed = await confirm(customer, user_id, code, fresh.access_token)
    assert list(confirmed.confirmation.methods) == ["pwd", "otp"]


async def test_five_wrong_codes_lock_the_token_until_the_operator_unlocks_it(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """Wrong codes on VerifyOtp answer WRONG_CODE four times and TOKEN_LOCKED (RESOURCE_EXHAUSTED) at the
    fifth; GetUser then shows token_state LOCKED (the user stays ACTIVE) and even the right code is refused
    TOKEN_LOCKED. The operator's UnlockToken at the OTP service lifts it (token PENDING: REGISTERED at the OTP
    service), and the next right code steps up and makes the token ACTIVE again."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    user_id = session.user.user_id

    for attempt in range(5):
        clock.advance(61)  # one failure per minute: the OTP service's rate limit is not what is tested here
        refusal = await refused(step_up(customer, user_id, wrong_code(customer, clock), session.access_token))
        if attempt < 4:
            assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "WRONG_CODE"), attempt
        else:
            assert (refusal.code, refusal.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOKEN_LOCKED")
    user = await get_user(customer, user_id)
    assert user.token_state == upb.User.TOKEN_STATE_LOCKED
    assert user.state == upb.User.STATE_ACTIVE
    locked = await refused(step_up(customer, user_id, next_code(customer, clock), session.access_token))
    assert locked.reason == "TOKEN_LOCKED"

    await stack.otp().UnlockToken(otp_pb2.UnlockTokenRequest(request_id=uuid.uuid4().hex, token_id=user.token_id))
    # The OTP service returns an unlocked token to REGISTERED: the next verified code makes it ACTIVE again.
    assert (await get_user(customer, user_id)).token_state == upb.User.TOKEN_STATE_PENDING
    stepped = await step_up(customer, user_id, next_code(customer, clock), session.access_token)
    assert stepped.access_token
    assert (await get_user(customer, user_id)).token_state == upb.User.TOKEN_STATE_ACTIVE


async def test_an_operators_lock_ends_live_sessions_for_good(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """After the operator's LockUser (STATE_LOCKED, LOCK_REASON_OPERATOR) the live access token is refused at
    its next use (VerifyOtp, ConfirmTransaction: USER_LOCKED or ACCESS_TOKEN_INVALID) and logins answer
    USER_LOCKED; after UnlockUser the old token stays refused ACCESS_TOKEN_INVALID (its session epoch is gone)
    while a new login's token steps up with the code the refused calls carried."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    user_id = session.user.user_id
    code = next_code(customer, clock)

    locked = await customer.users("developer").LockUser(
        upb.LockUserRequest(request_id=uuid.uuid4().hex, user_id=user_id)
    )
    assert locked.user.state == upb.User.STATE_LOCKED
    assert locked.user.lock_reason == upb.User.LOCK_REASON_OPERATOR
    for call in (
        step_up(customer, user_id, code, session.access_token),
        confirm(customer, user_id, code, session.access_token),
    ):
        refusal = await refused(call)
        assert refusal.reason in ("USER_LOCKED", "ACCESS_TOKEN_INVALID")
    assert (await refused(customer.login())).reason == "USER_LOCKED"

    await unlock(customer, user_id)
    stale = await refused(step_up(customer, user_id, code, session.access_token))
    assert (stale.code, stale.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ACCESS_TOKEN_INVALID")
    fresh = await customer.login()
    assert (await step_up(customer, user_id, code, fresh.access_token)).access_token
