"""The bank's ten steps through the gateway with real clients: curl over HTTPS (the client certificate from step 5
on), a CSR from `openssl req`, the service and user IDs read from the mail a real SMTP server received, the
first code from `oathtool`; real CA, OTP and enrollment services behind, over mTLS; ends COMPLETED."""

from __future__ import annotations

import json
import re
import uuid

import structlog

from kagi.runtime.settings import TlsFiles
from services.enrollment_service.domain.messages import CARRIER_FILTER_NOTE
from tests.integration.gateway.gateway_support import MOBILE, PROFILE, USAGE_START_PASSWORD, GatewayStack, curl
from tests.support.tools import run, tool


async def test_ten_steps_through_the_gateway_with_curl_openssl_and_oathtool(stack: GatewayStack) -> None:
    """Each step answers the state the design names and the next step by name; the IDs travel by mail only,
    and step 7 answers the procedure's note on phones that filter mail; the seed is delivered once; oathtool's
    code completes the enrollment, read back as COMPLETED; and none of the secrets that crossed the gateway
    (temporary passwords, session token, passwords, seed, code) appears in any log event of the gateway or the
    services."""
    with structlog.testing.capture_logs() as events:
        secrets = await _walk(stack)
    logged = json.dumps(events, default=str, ensure_ascii=False)
    assert len(events) > 20, "the services and the gateway should have logged the steps"
    for name, value in secrets.items():
        # Bounded, so that a 6-digit code is not "found" inside a hex request id or a number.
        assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", logged), f"the {name} was logged"


async def _walk(stack: GatewayStack) -> dict[str, str]:
    """The ten steps; returns the secrets that went through the gateway, by name."""
    entries, _notice = await stack.register_application()
    work = stack.workdir

    # ⑦ step 1: no credential; the answer carries the session token for steps 2-4.
    answer = await curl(stack, "POST", "/v1/enrollments", entries, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert answer.status == 201, answer.body
    assert answer.body["state"] == "NOTICE_VERIFIED"
    assert answer.body["next_step"] == "SUBMIT_PROFILE"
    enrollment_id, session = answer.body["enrollment_id"], answer.body["session_token"]
    assert answer.headers["location"] == f"/v1/enrollments/{enrollment_id}"
    assert answer.headers["cache-control"] == "no-store"
    path = f"/v1/enrollments/{enrollment_id}"

    # ⑧ step 2: the profile; the summary shows no password.
    login_id = f"user{uuid.uuid4().hex[:6]}1"
    profile = {**PROFILE, "login_id": login_id, "login_id_confirmation": login_id}
    answer = await curl(stack, "PUT", path + "/profile", profile, bearer=session)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("PROFILE_SUBMITTED", "CONFIRM_REGISTRATION")
    assert answer.body["summary"] == {
        "user_name": PROFILE["user_name"],
        "email": PROFILE["email"],
        "login_id": login_id,
        "company_name": "株式会社サンプル",
    }
    assert PROFILE["login_password"] not in answer.raw.decode()

    # ⑨ step 3: register.
    answer = await curl(stack, "POST", path + "/registration", {}, bearer=session)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("REGISTERED", "ISSUE_CERTIFICATE")
    assert answer.body["user_id"]

    # ⑩-⑬ step 4: the key is made on the client (openssl req), the CA signs the CSR.
    key = work / "customer-key.pem"
    csr = work / "customer.csr"
    await run(
        [tool("openssl"), "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=browser"]
    )  # fmt: skip
    answer = await curl(stack, "POST", path + "/certificate", {"csr_pem": csr.read_text()}, bearer=session)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("CERTIFICATE_ISSUED", "CERTIFICATE_LOGIN")
    cert_file = work / "customer.pem"
    cert_file.write_text(answer.body["certificate_pem"])
    certificate = TlsFiles(cert_file, key, stack.root_file)
    (work / "chain.pem").write_text(answer.body["chain_pem"])
    verified = await run(
        [tool("openssl"), "verify", "-CAfile", str(stack.root_file), "-untrusted", str(work / "chain.pem"),
         "-purpose", "sslclient", str(cert_file)]
    )  # fmt: skip
    assert verified.strip().endswith("OK")

    # ⑭-⑯ step 5: certificate login, the certificate presented by curl.
    answer = await curl(stack, "POST", path + "/certificate-login", {}, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("CERTIFICATE_LOGGED_IN", "PASSWORD_LOGIN")

    # ⑰ step 6: the login password.
    answer = await curl(stack, "POST", path + "/password-login", {"login_password": "Passw0rd"}, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("PASSWORD_VERIFIED", "REQUEST_TOKEN")

    # ⑱ step 7: the phone's address and the usage-start password; the IDs go by mail only.
    token_request = {
        "mobile_email": MOBILE,
        "mobile_email_confirmation": MOBILE,
        "usage_start_password": USAGE_START_PASSWORD,
        "usage_start_password_confirmation": USAGE_START_PASSWORD,
    }
    answer = await curl(stack, "POST", path + "/token", token_request, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("TOKEN_REQUESTED", "ACTIVATE_APP")
    assert set(answer.body) == {"enrollment_id", "kind", "state", "next_step", "expires_at", "mail_note"}
    assert answer.body["mail_note"] == CARRIER_FILTER_NOTE  # the procedure's warning about phones filtering mail
    service_id, app_user_id = await stack.mail_ids()
    assert service_id not in answer.raw.decode()

    # ⑳ step 8: the app, with no credential but what the user types; the seed comes back once.
    activation = {
        "service_id": service_id,
        "user_id": app_user_id,
        "usage_start_password": USAGE_START_PASSWORD,
        "agreed": True,
    }
    answer = await curl(stack, "POST", "/v1/app/activation", activation, headers={"Idempotency-Key": "act-1"})
    assert answer.status == 200, answer.body
    seed = answer.body
    assert seed["otpauth_uri"].startswith("otpauth://totp/")
    assert (seed["algorithm"], seed["period"]) == ("SHA1", 60)
    replay = await curl(stack, "POST", "/v1/app/activation", activation, headers={"Idempotency-Key": "act-1"})
    assert replay.status == 200
    assert replay.body["secret"] == "", "a retried activation must not deliver the seed again"

    # ㉑ step 9: the app registers.
    registration = {"service_id": service_id, "user_id": app_user_id, "activation_id": seed["activation_id"]}
    answer = await curl(stack, "POST", "/v1/app/registration", registration)
    assert answer.status == 200, answer.body
    assert answer.body == {"state": "APP_REGISTERED"}

    # ㉓ step 10: the code the app shows, from oathtool, within its 60 seconds.
    code = (
        await run([tool("oathtool"), "--totp", "-b", "-s", "60", "-d", str(seed["digits"]), seed["secret"]])
    ).strip()
    answer = await curl(stack, "POST", path + "/otp", {"otp": code}, cert=certificate)
    assert answer.status == 200, answer.body
    assert (answer.body["state"], answer.body["next_step"]) == ("COMPLETED", None)

    answer = await curl(stack, "GET", path, cert=certificate)
    assert answer.status == 200
    assert (answer.body["state"], answer.body["next_step"]) == ("COMPLETED", None)
    return {
        "temporary login password": entries["temporary_login_password"],
        "temporary confirmation password": entries["temporary_confirmation_password"],
        "session token": session,
        "login password": PROFILE["login_password"],
        "confirmation password": PROFILE["confirmation_password"],
        "seed": seed["secret"],
        "one-time code": code,
    }
