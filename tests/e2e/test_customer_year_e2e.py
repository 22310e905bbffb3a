"""A customer's year with curl, openssl and oathtool, through the gateway: a password change, the renewal
reminder, a certificate renewal (the old certificate is refused once the new one logged in), a new phone, and a
forgotten confirmation password set again with the bank's reset notice (`kagi admin reset-password`).

Time: the OTP and enrollment services run on a fake clock that the test moves 340 days ahead. The gateway checks
client certificates against the real time, so the CA keeps the real time too: a certificate it issues at the
renewal must be valid now for the gateway (one signed at the fake time would not be valid yet).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from kagi.runtime.settings import TlsFiles
from tests.integration.gateway.gateway_support import (
    USAGE_START_PASSWORD,
    Answer,
    GatewayCustomer,
    GatewayStack,
    complete_with_curl,
    curl,
    oathtool_code,
    open_gateway_stack,
)
from tests.support.enrollment_flow import make_csr
from tests.support.tools import run, tool

DAY = 86400.0
USER_EMAIL = "taro@example.co.jp"
NEW_MOBILE = "new-phone@example.jp"


@pytest.fixture
async def year(tmp_path: Path) -> AsyncIterator[tuple[GatewayStack, FakeClock]]:
    """The gateway stack with the OTP and enrollment services on a FakeClock and the CA on the real time."""
    clock = FakeClock(time.time())
    stack = await open_gateway_stack(tmp_path, clock=clock, ca_on_real_time=True)
    yield stack, clock
    await stack.close()


async def _mail(stack: GatewayStack, since: int, subject: str) -> EmailMessage:
    """The one mail to the user with `subject` in its subject, after the first `since` of the inbox."""
    for _ in range(60):
        await stack.components["enrollment"].deliver_mail_now()
        found = [m for m in stack.smtp.inbox.messages[since:] if m["To"] == USER_EMAIL and subject in str(m["Subject"])]
        if found:
            assert len(found) == 1, [m["Subject"] for m in found]
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no mail {subject!r} to {USER_EMAIL}")


async def _log_in(stack: GatewayStack, customer: GatewayCustomer, cert: TlsFiles, password: str) -> Answer:
    answer = await curl(
        stack, "POST", "/v1/sessions", {"login_id": customer.login_id, "login_password": password}, cert=cert
    )
    return answer


async def _admin(stack: GatewayStack, *args: str) -> str:
    env = dict(os.environ)
    for name in ("ca", "otp", "enrollment"):
        env[f"KAGI_{name.upper()}_TARGET"] = stack.target(name)
    return await run([tool("kagi"), "admin", "--state-dir", str(stack.pki.state_dir), *args], env=env)


async def test_a_customers_year_with_curl_openssl_and_oathtool(year: tuple[GatewayStack, FakeClock]) -> None:
    """After the setup the customer changes the login password (the old session and password are refused, a
    mail tells them); 340 days later the 30-day renewal reminder arrives; a renewal with an openssl CSR answers
    a new certificate, whose first login revokes the old one (the gateway refuses it within two seconds); a
    reissue for a new phone mails new IDs, the app's steps 8-9 with curl work, oathtool's code for the new seed
    steps up and the old seed's code is refused; a forgotten confirmation password is set again with the
    operator's reset notice, and the new one confirms a transaction while the old one is refused."""
    stack, clock = year
    customer, old_secret = await complete_with_curl(stack, clock)
    old_cert = customer.certificate
    assert old_cert is not None
    old_ids = await stack.mail_ids()
    await stack.components["enrollment"].deliver_mail_now()

    # Log in, change the login password.
    answer = await _log_in(stack, customer, old_cert, "Passw0rd")
    assert answer.status == 201, answer.body
    access, user_id = answer.body["access_token"], answer.body["user"]["user_id"]
    since = len(stack.smtp.inbox.messages)
    change = {
        "kind": "login",
        "current_password": "Passw0rd",
        "new_password": "Newpass12",
        "new_password_confirmation": "Newpass12",
    }
    answer = await curl(stack, "PUT", "/v1/users/me/password", change, cert=old_cert, bearer=access)
    assert answer.status == 200, answer.body
    assert answer.body["user"]["user_id"] == user_id
    ended = await curl(stack, "DELETE", "/v1/sessions/current", cert=old_cert, bearer=access)
    assert (ended.status, ended.reason) == (401, "ACCESS_TOKEN_INVALID")
    refused = await _log_in(stack, customer, old_cert, "Passw0rd")
    assert (refused.status, refused.reason) == (401, "LOGIN_FAILED")
    changed = await _mail(stack, since, "Your login password was changed")
    assert "ログインパスワード変更のお知らせ" in changed["Subject"]

    # 340 days on: the 30-day reminder.
    clock.advance(340 * DAY)
    since = len(stack.smtp.inbox.messages)
    await stack.components["enrollment"].lifecycle.maintain()
    reminder = await _mail(stack, since, "Your certificate expires soon")
    assert "残り30日以内" in reminder.get_content()
    assert "within 30 days" in reminder.get_content()

    # Renew with a CSR for a new key made by openssl.
    answer = await _log_in(stack, customer, old_cert, "Newpass12")
    assert answer.status == 201, answer.body
    csr, key = make_csr(stack.workdir)
    renewal = {"csr_pem": csr, "login_password": "Newpass12"}
    answer = await curl(
        stack, "POST", "/v1/users/me/certificate/renewal", renewal, cert=old_cert, bearer=answer.body["access_token"]
    )
    assert answer.status == 201, answer.body
    assert answer.body["serial_number"] != customer.serial_hex
    new_file = key.with_name("renewed.pem")
    new_file.write_text(answer.body["certificate_pem"] + answer.body["chain_pem"])
    new_cert = TlsFiles(new_file, key, stack.root_file)
    subject = await run([tool("openssl"), "x509", "-in", str(new_file), "-noout", "-subject"])
    old_subject = await run([tool("openssl"), "x509", "-in", str(old_cert.cert_file), "-noout", "-subject"])
    assert subject == old_subject

    # The new certificate's first session; the old one is revoked (superseded) and the gateway refuses it.
    answer = await _log_in(stack, customer, new_cert, "Newpass12")
    assert answer.status == 201, answer.body
    access = answer.body["access_token"]
    for _ in range(40):
        gone = await _log_in(stack, customer, old_cert, "Newpass12")
        if gone.status == 401:
            break
        await asyncio.sleep(0.05)
    assert (gone.status, gone.reason) == (401, "CLIENT_CERT_REVOKED"), gone.body

    # A new phone: the new IDs by mail, the app's steps 8-9, a step-up with the new seed.
    reissue = {
        "mobile_email": NEW_MOBILE,
        "mobile_email_confirmation": NEW_MOBILE,
        "usage_start_password": USAGE_START_PASSWORD,
        "usage_start_password_confirmation": USAGE_START_PASSWORD,
        "confirmation_password": "Kakunin9",
    }
    answer = await curl(stack, "POST", "/v1/users/me/token/reissue", reissue, cert=new_cert, bearer=access)
    assert answer.status == 202, answer.body
    assert answer.body["user"]["token_state"] == "PENDING"
    service_id, app_user_id = await stack.mail_ids(to=NEW_MOBILE)
    assert service_id != old_ids[0]
    assert app_user_id != old_ids[1]
    activation = {"service_id": service_id, "user_id": app_user_id, "usage_start_password": USAGE_START_PASSWORD}
    seed = await curl(stack, "POST", "/v1/app/activation", {**activation, "agreed": True})
    assert seed.status == 200, seed.body
    assert seed.body["secret"] != old_secret
    registration = {"service_id": service_id, "user_id": app_user_id, "activation_id": seed.body["activation_id"]}
    assert (await curl(stack, "POST", "/v1/app/registration", registration)).status == 200
    clock.advance(60)
    stale = await curl(
        stack, "POST", "/v1/sessions/current/otp", {"otp": await oathtool_code(old_secret, clock.now())},
        cert=new_cert, bearer=access,
    )  # fmt: skip
    assert (stale.status, stale.reason) == (401, "WRONG_CODE"), stale.body
    raised = await curl(
        stack, "POST", "/v1/sessions/current/otp", {"otp": await oathtool_code(seed.body["secret"], clock.now())},
        cert=new_cert, bearer=access,
    )  # fmt: skip
    assert raised.status == 200, raised.body
    new_secret = seed.body["secret"]

    # A forgotten confirmation password: the operator's reset notice, then the customer's reset.
    notice = json.loads(
        await _admin(stack, "reset-password", "--user", user_id, "--kind", "confirmation", "--yes", "--json")
    )
    assert (notice["user_id"], notice["kind"]) == (user_id, "confirmation")
    reset = {
        "kind": "confirmation",
        "temporary_password": notice["temporary_password"],
        "new_password": "Kakunin77",
        "new_password_confirmation": "Kakunin77",
    }
    answer = await curl(stack, "POST", "/v1/users/me/password/reset", reset, cert=new_cert)
    assert answer.status == 200, answer.body
    answer = await _log_in(stack, customer, new_cert, "Newpass12")
    assert answer.status == 201, answer.body
    access = answer.body["access_token"]
    clock.advance(60)
    confirm = {
        "transaction_id": "txn-year-0001",
        "transaction_summary": "振込 株式会社サンプル → 001-7654321 120,000円",
        "confirmation_password": "Kakunin9",
        "otp": await oathtool_code(new_secret, clock.now()),
    }
    old = await curl(stack, "POST", "/v1/confirmations", confirm, cert=new_cert, bearer=access)
    assert (old.status, old.reason) == (401, "WRONG_CONFIRMATION_PASSWORD"), old.body
    confirmed = await curl(
        stack, "POST", "/v1/confirmations", {**confirm, "confirmation_password": "Kakunin77"}, cert=new_cert,
        bearer=access,
    )  # fmt: skip
    assert confirmed.status == 201, confirmed.body
    assert confirmed.body["methods"] == ["pwd", "otp"]
