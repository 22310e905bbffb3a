"""Sessions at the front-end boundary against the real services: a one-time password steps a session up, a
token works only with its own certificate, EndSession ends every token of a session, and the enrollment's
hash-chained audit trail records logins, confirmations, locks and unlocks without a secret in it."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import grpc

from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.journal import audit_records, verify_stored_chain
from kagi.store import open_store
from tests.support.enrollment_flow import Customer, Stack
from tests.support.frontend import completed, jwks, next_code, refused, spiffe_id, verify_token
from tests.support.tools import run, tool

CONFIRMATION_PASSWORD = "Kakunin9"
SUMMARY = "振込 株式会社テスト 50,000円"


def verify_otp(
    customer: Customer,
    user_id: str,
    code: str,
    access_token: str,
    *,
    certificate_of: Customer | None = None,
    request_id: str = "",
) -> grpc.aio.UnaryUnaryCall:
    """Return the gateway's VerifyOtp: STEP_UP with a token, with a certificate relayed (the customer's
    own unless another is named)."""
    request = upb.VerifyOtpRequest(
        request_id=request_id or uuid.uuid4().hex,
        user_id=user_id,
        otp=code,
        purpose=upb.OTP_PURPOSE_STEP_UP,
        access_token=access_token,
    )
    return customer.users().VerifyOtp(request, metadata=(certificate_of or customer).cert_metadata)


def confirm(
    customer: Customer, user_id: str, code: str, access_token: str, *, certificate_of: Customer | None = None
) -> grpc.aio.UnaryUnaryCall:
    """Return the gateway's ConfirmTransaction of a new transaction id."""
    request = upb.ConfirmTransactionRequest(
        user_id=user_id,
        transaction_id=f"txn-{uuid.uuid4().hex}",
        transaction_summary=SUMMARY,
        confirmation_password=CONFIRMATION_PASSWORD,
        otp=code,
        access_token=access_token,
    )
    return customer.users().ConfirmTransaction(request, metadata=(certificate_of or customer).cert_metadata)


async def test_a_code_steps_the_session_up_once(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """VerifyOtp(STEP_UP) with the access token answers a token (joserfc-verified) whose amr is swk, pwd, otp,
    mfa, with the same sid, sub and certificate binding, living at most 15 minutes; stepping that token up
    again adds nothing twice. The same code again is refused REPLAYED (the OTP service's reason), and STEP_UP
    without an access token is INVALID_ARGUMENT naming access_token."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    user_id = session.user.user_id
    code = next_code(customer, clock)

    stepped = await verify_otp(customer, user_id, code, session.access_token)
    key_set = await jwks(stack)
    before = verify_token(session.access_token, key_set, clock.now()).claims
    after = verify_token(stepped.access_token, key_set, clock.now()).claims
    assert after["amr"] == ["swk", "pwd", "otp", "mfa"]
    assert (after["sid"], after["sub"], after["cnf"]) == (before["sid"], before["sub"], before["cnf"])
    assert after["jti"] != before["jti"]
    assert 0 < stepped.expires_in == after["exp"] - after["iat"] <= 900

    replayed = await refused(verify_otp(customer, user_id, code, session.access_token))
    assert replayed.reason == "REPLAYED"
    missing = await refused(verify_otp(customer, user_id, next_code(customer, clock), ""))
    assert missing.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "access_token" in missing.fields

    again = await verify_otp(customer, user_id, next_code(customer, clock), stepped.access_token)
    claims = verify_token(again.access_token, key_set, clock.now()).claims
    assert claims["amr"] == ["swk", "pwd", "otp", "mfa"]
    assert claims["sid"] == before["sid"]


async def test_end_session_refuses_every_token_of_that_session_only(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """After EndSession with a login's access token, that token and the token it was stepped up to are refused
    ACCESS_TOKEN_INVALID (VerifyOtp, ConfirmTransaction, EndSession); another session of the same user keeps
    working."""
    customer = await completed(stack, workdir, clock)
    ended, other = await customer.login(), await customer.login()
    user_id = ended.user.user_id
    stepped = await verify_otp(customer, user_id, next_code(customer, clock), ended.access_token)

    await customer.users().EndSession(
        upb.EndSessionRequest(access_token=ended.access_token), metadata=customer.cert_metadata
    )
    code = next_code(customer, clock)
    for token in (ended.access_token, stepped.access_token):
        for call in (
            verify_otp(customer, user_id, code, token),
            confirm(customer, user_id, code, token),
            customer.users().EndSession(upb.EndSessionRequest(access_token=token), metadata=customer.cert_metadata),
        ):
            refusal = await refused(call)
            assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ACCESS_TOKEN_INVALID")
    assert (await verify_otp(customer, user_id, code, other.access_token)).access_token


async def test_a_token_is_refused_with_another_customers_certificate(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """Customer A's access token with customer B's certificate relayed is ACCESS_TOKEN_INVALID for VerifyOtp
    and ConfirmTransaction (for A's user id or B's); the refusals spend nothing: A's code then steps A up with
    A's own certificate."""
    alice = await completed(stack, workdir, clock)
    bob = await completed(stack, workdir, clock)
    a, b = await alice.login(), await bob.login()
    code = next_code(alice, clock)

    for user_id in (a.user.user_id, b.user.user_id):
        for call in (
            verify_otp(alice, user_id, code, a.access_token, certificate_of=bob),
            confirm(alice, user_id, code, a.access_token, certificate_of=bob),
        ):
            refusal = await refused(call)
            assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ACCESS_TOKEN_INVALID")
    mixed = await refused(verify_otp(bob, b.user.user_id, code, a.access_token))  # A's token for B, B's cert
    assert mixed.reason == "ACCESS_TOKEN_INVALID"
    assert (await verify_otp(alice, a.user.user_id, code, a.access_token)).access_token


def _searchable(record_json: bytes) -> str:
    """The record without its timestamp and hashes (hex and digits there could match a 6-digit code)."""
    body = json.loads(record_json)
    for name in ("at", "hash", "previous_hash"):
        body.pop(name, None)
    return json.dumps(body, ensure_ascii=False)


async def test_the_audit_chain_records_logins_confirmations_locks_and_no_secret(
    stack: Stack, workdir: Path, clock: FakeClock, state_dir: Path
) -> None:
    """After a login, a refused login, a confirmation, an operator's lock and unlock, the enrollment's audit
    chain verifies (read from the store, and by `kagi admin verify-audit`) and holds login, login.refused,
    confirmation, user.lock and user.unlock records about the user, each with the caller's SPIFFE ID as actor
    (gateway for the customer's calls, operator for the lock); no record holds a password, a code, the seed, an
    access token or a confirmation token, not even a password typed into the login ID field."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    user_id = session.user.user_id
    wrong = await refused(customer.login("Wrong-pass-1"))
    assert wrong.reason == "LOGIN_FAILED"
    # A password typed into the login ID field: the trail keeps a digest of what was typed, never the text.
    typed = await refused(customer.login(login_id="Passw0rd"))
    assert typed.reason == "LOGIN_FAILED"
    code = next_code(customer, clock)
    confirmed = await confirm(customer, user_id, code, session.access_token)
    operator = customer.users("developer")
    await operator.LockUser(upb.LockUserRequest(request_id=uuid.uuid4().hex, user_id=user_id))
    await operator.UnlockUser(upb.UnlockUserRequest(request_id=uuid.uuid4().hex, user_id=user_id))

    store = open_store("sqlite:", namespace="enrollment", state_dir=state_dir)
    try:
        report = await verify_stored_chain(store)
        records = [record async for record in audit_records(store)]
    finally:
        await store.close()
    assert report.ok, report.problem
    assert report.checked == len(records)
    verdict = await run(
        [tool("kagi"), "admin", "--state-dir", str(state_dir), "verify-audit", "--service", "enrollment"]
    )
    assert verdict.strip() == f"enrollment: audit chain OK: {len(records)} records"

    gateway, operator_id = spiffe_id(stack.tls_dir / "gateway.pem"), spiffe_id(stack.tls_dir / "developer.pem")
    expected_actor = {
        "login": gateway,
        "login.refused": gateway,
        "confirmation": gateway,
        "user.lock": operator_id,
        "user.unlock": operator_id,
    }
    about_user = [record for record in records if record.subject == user_id]
    for action, actor in expected_actor.items():
        found = [record for record in about_user if record.action == action]
        assert found, f"no {action} record"
        assert {record.actor for record in found} == {actor}, action
    (confirmation,) = [record for record in about_user if record.action == "confirmation"]
    assert ("confirmation", confirmed.confirmation.confirmation_id) in confirmation.details

    secrets = {
        "Passw0rd",
        "Wrong-pass-1",
        CONFIRMATION_PASSWORD,
        code,
        customer.secret,
        session.access_token,
        session.access_token.rsplit(".", 1)[1],
        confirmed.confirmation_token,
        confirmed.confirmation_token.rsplit(".", 1)[1],
    }
    for record in records:
        text = _searchable(record.to_json())
        for secret in secrets:
            assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", text), record.action


async def test_a_step_up_retried_with_its_request_id_answers_a_token_of_the_same_session(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """VerifyOtp retried with the same request_id and code (a lost answer) succeeds again with a stepped-up token
    of the same session (user.proto), while the code stays spent for any other request."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    code, request_id = next_code(customer, clock), uuid.uuid4().hex
    first = await verify_otp(customer, session.user.user_id, code, session.access_token, request_id=request_id)
    assert first.access_token
    retried = await verify_otp(customer, session.user.user_id, code, session.access_token, request_id=request_id)
    assert retried.access_token
    other = await refused(
        verify_otp(customer, session.user.user_id, code, session.access_token, request_id=uuid.uuid4().hex)
    )
    assert other.reason == "REPLAYED"


async def test_a_step_up_with_a_request_id_of_128_characters_works(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """A request_id of 128 printable characters (the limit kagi's request ids have) is accepted by VerifyOtp."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    code = next_code(customer, clock)
    stepped = await verify_otp(customer, session.user.user_id, code, session.access_token, request_id="r" * 128)
    assert stepped.access_token
