"""UserService.ConfirmTransaction against the real services: a confirmation token joserfc verifies offline, one
code per transaction, retries that answer the first confirmation, and bad input refused without a trace."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import grpc

from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from tests.support.enrollment_flow import Customer, Stack
from tests.support.frontend import (
    b64url,
    completed,
    jwks,
    next_code,
    refused,
    verify_token,
    wrong_code,
    x5t_s256,
)

CONFIRMATION_PASSWORD = "Kakunin9"
SUMMARY = "振込先: 株式会社テスト 普通 1234567 / 金額: 1,000,000円"


class Confirmer:
    """Sends ConfirmTransaction as the gateway for one logged-in customer."""

    def __init__(self, customer: Customer, user_id: str, access_token: str) -> None:
        self.customer, self.user_id, self.access_token = customer, user_id, access_token

    def __call__(
        self, transaction_id: str, summary: str, code: str, *, password: str = CONFIRMATION_PASSWORD
    ) -> grpc.aio.UnaryUnaryCall:
        request = upb.ConfirmTransactionRequest(
            user_id=self.user_id,
            transaction_id=transaction_id,
            transaction_summary=summary,
            confirmation_password=password,
            otp=code,
            access_token=self.access_token,
        )
        return self.customer.users().ConfirmTransaction(request, metadata=self.customer.cert_metadata)


async def logged_in(stack: Stack, workdir: Path, clock: FakeClock) -> Confirmer:
    """Return a customer who completed the setup and logged in, ready to confirm."""
    customer = await completed(stack, workdir, clock)
    session = await customer.login()
    return Confirmer(customer, session.user.user_id, session.access_token)


def digest(summary: str) -> str:
    """Return SHA-256 of the summary's UTF-8 bytes, base64url without padding, computed here."""
    return b64url(hashlib.sha256(summary.encode("utf-8")).digest())


async def test_a_confirmation_binds_one_code_to_one_transaction_and_retries_answer_the_first(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """ConfirmTransaction answers a confirmation (methods pwd, otp; txn_digest the summary's SHA-256) and a
    token joserfc verifies: txn the transaction id, txn_digest base64url without padding, amr [pwd, otp], sub
    the user, bound to the certificate. The same code for another transaction id is refused REPLAYED (and
    writes nothing under that id); the same transaction again with the same password and code answers the same
    confirmation_id and claims; with another code or another summary it is FAILED_PRECONDITION
    TRANSACTION_MISMATCH."""
    confirm = await logged_in(stack, workdir, clock)
    customer = confirm.customer
    code = next_code(customer, clock)

    first = await confirm("txn-0001", SUMMARY, code)
    assert first.confirmation.transaction_id == "txn-0001"
    assert first.confirmation.txn_digest == digest(SUMMARY)
    assert "=" not in first.confirmation.txn_digest
    assert list(first.confirmation.methods) == ["pwd", "otp"]
    assert first.confirmation.confirmation_id
    key_set = await jwks(stack)
    claims = verify_token(first.confirmation_token, key_set, clock.now()).claims
    assert claims["txn"] == "txn-0001"
    assert claims["txn_digest"] == digest(SUMMARY)
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["sub"] == confirm.user_id
    assert claims["aud"] == "kagi"
    assert claims["jti"] == first.confirmation.confirmation_id
    assert claims["cnf"] == {"x5t#S256": x5t_s256(customer.certificate_pem)}

    replayed = await refused(confirm("txn-0002", SUMMARY, code))
    assert replayed.reason == "REPLAYED"

    again = await confirm("txn-0001", SUMMARY, code)
    assert again.confirmation == first.confirmation
    assert verify_token(again.confirmation_token, key_set, clock.now()).claims == claims

    other_code = next_code(customer, clock)
    for transaction_id, summary, with_code in (
        ("txn-0001", SUMMARY, other_code),
        ("txn-0001", SUMMARY + " (改ざん)", code),
    ):
        mismatch = await refused(confirm(transaction_id, summary, with_code))
        assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSACTION_MISMATCH")

    second = await confirm("txn-0002", SUMMARY, next_code(customer, clock))
    assert second.confirmation.confirmation_id != first.confirmation.confirmation_id


async def test_bad_confirmation_input_is_refused_naming_the_field_and_changes_nothing(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """A summary over 1 KiB of UTF-8 (342 kana: 1,026 bytes), a transaction id outside 1-128 of
    A-Z a-z 0-9 . _ : -, and (from the gateway) a missing access token are INVALID_ARGUMENT naming
    transaction_summary, transaction_id and access_token; nothing is written and the code is not spent: the
    same id then confirms with the same code and a summary of exactly 1,024 bytes."""
    confirm = await logged_in(stack, workdir, clock)
    code = next_code(confirm.customer, clock)
    transaction_id = f"order:{uuid.uuid4().hex}.v1_x-y"

    too_long = await refused(confirm(transaction_id, "あ" * 342, code))
    assert too_long.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(too_long.fields) == {"transaction_summary"}
    for bad_id in ("", "has space", "x" * 129, "取引1", "a/b"):
        refusal = await refused(confirm(bad_id, SUMMARY, code))
        assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT, bad_id
        assert set(refusal.fields) == {"transaction_id"}, bad_id
    tokenless = Confirmer(confirm.customer, confirm.user_id, "")
    missing = await refused(tokenless(transaction_id, SUMMARY, code))
    assert missing.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "access_token" in missing.fields

    exactly = "あ" * 341 + "a"
    assert len(exactly.encode()) == 1024
    confirmed = await confirm(transaction_id, exactly, code)
    assert confirmed.confirmation.transaction_id == transaction_id
    assert confirmed.confirmation.txn_digest == digest(exactly)


async def test_a_transaction_id_of_128_characters_confirms(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """A transaction id of 128 characters (the longest user.proto allows) confirms like a short one."""
    confirm = await logged_in(stack, workdir, clock)
    confirmed = await confirm("x" * 128, SUMMARY, next_code(confirm.customer, clock))
    assert confirmed.confirmation.transaction_id == "x" * 128


async def test_a_mistyped_code_does_not_block_the_transaction(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """After a confirmation refused WRONG_CODE (a mistyped code), the same transaction id confirms with the
    right code."""
    confirm = await logged_in(stack, workdir, clock)
    mistyped = await refused(confirm("txn-typo", SUMMARY, wrong_code(confirm.customer, clock)))
    assert mistyped.reason == "WRONG_CODE"
    confirmed = await confirm("txn-typo", SUMMARY, next_code(confirm.customer, clock))
    assert confirmed.confirmation.transaction_id == "txn-typo"
