"""A lost PC, end to end: the operator's `kagi admin reissue-certificate` revokes the user's certificate (the
gateway refuses it within two seconds) and prints a reissue notice; the customer takes steps 1, 4, 5 and 6 of a
new enrollment of kind REISSUE with curl and openssl, and ends COMPLETED with a new certificate and the same
login ID, profile and one-time-password app."""

from __future__ import annotations

import asyncio
import json
import os
import time

from kagi.clock import FakeClock
from kagi.runtime.settings import TlsFiles
from tests.integration.gateway.gateway_support import (
    GatewayStack,
    complete_with_curl,
    curl,
    oathtool_code,
)
from tests.support.tools import run, tool


async def _admin(stack: GatewayStack, *args: str) -> str:
    env = {**os.environ, **{f"KAGI_{n.upper()}_TARGET": stack.target(n) for n in ("ca", "otp", "enrollment")}}
    return await run([tool("kagi"), "admin", "--state-dir", str(stack.pki.state_dir), *args], env=env)


async def test_a_lost_pc_is_replaced_through_a_reissue_enrollment(timed: tuple[GatewayStack, FakeClock]) -> None:
    """After reissue-certificate the old certificate is refused at the gateway within 2 s (and its session's
    token with it); step 1 with the reissue notice opens a REISSUE enrollment whose next step is the
    certificate (4), then certificate login (5) and the login password (6) complete it; the same login ID logs
    in with the new certificate and the same app's next code steps the session up."""
    stack, clock = timed
    customer, secret = await complete_with_curl(stack, clock)
    assert customer.certificate is not None
    login = {"login_id": customer.login_id, "login_password": "Passw0rd"}
    session = await curl(stack, "POST", "/v1/sessions", login, cert=customer.certificate)
    assert session.status == 201, session.body
    user_id = session.body["user"]["user_id"]

    notice = json.loads(await _admin(stack, "reissue-certificate", "--user", user_id, "--yes", "--json"))
    assert notice["user_id"] == user_id
    started = time.monotonic()
    while True:
        shown = await curl(stack, "GET", "/v1/client-certificate", cert=customer.certificate)
        if shown.status == 401:
            break
        assert time.monotonic() - started < 2.0, "the revoked certificate was still accepted after 2 s"
        await asyncio.sleep(0.1)
    assert shown.body["error"]["reason"] == "CLIENT_CERT_REVOKED"

    entries = {k: notice[k] for k in ("branch_code", "account_type", "account_number")}
    entries |= {k: notice[k] for k in ("temporary_login_password", "temporary_confirmation_password")}
    step1 = await curl(stack, "POST", "/v1/enrollments", entries)
    assert step1.status == 201, step1.body
    assert (step1.body["kind"], step1.body["state"], step1.body["next_step"]) == (
        "REISSUE",
        "NOTICE_VERIFIED",
        "ISSUE_CERTIFICATE",
    )
    path = f"/v1/enrollments/{step1.body['enrollment_id']}"
    work = stack.workdir
    key, csr = work / "new-pc-key.pem", work / "new-pc.csr"
    await run(
        [tool("openssl"), "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=new pc"]
    )  # fmt: skip
    issued = await curl(
        stack, "POST", path + "/certificate", {"csr_pem": csr.read_text()}, bearer=step1.body["session_token"]
    )
    assert issued.status == 200, issued.body
    assert (issued.body["state"], issued.body["next_step"]) == ("CERTIFICATE_ISSUED", "CERTIFICATE_LOGIN")
    cert_file = work / "new-pc.pem"
    cert_file.write_text(issued.body["certificate_pem"])
    new = TlsFiles(cert_file, key, stack.root_file)
    answer = await curl(stack, "POST", path + "/certificate-login", {}, cert=new)
    assert (answer.body["state"], answer.body["next_step"]) == ("CERTIFICATE_LOGGED_IN", "PASSWORD_LOGIN")
    answer = await curl(stack, "POST", path + "/password-login", {"login_password": "Passw0rd"}, cert=new)
    assert (answer.body["state"], answer.body["next_step"]) == ("COMPLETED", None), answer.body

    again = await curl(stack, "POST", "/v1/sessions", login, cert=new)
    assert again.status == 201, again.body
    assert (again.body["user"]["user_id"], again.body["user"]["login_id"]) == (user_id, customer.login_id)
    clock.advance(60)
    code = await oathtool_code(secret, clock.now())
    raised = await curl(
        stack, "POST", "/v1/sessions/current/otp", {"otp": code}, cert=new, bearer=again.body["access_token"]
    )
    assert raised.status == 200, raised.body
    spent = await curl(stack, "POST", "/v1/enrollments", entries)
    assert spent.status in (401, 409, 412), spent.body  # the reissue notice was spent by its certificate
