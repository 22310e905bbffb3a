"""A customer's day through the gateway with real clients: the setup with curl, openssl and oathtool; then
log in with the certificate and the login password, step up with a one-time password, confirm a transaction
and log out. The tokens are checked as a bank front-end would: with another JOSE library (joserfc) and the
gateway's /.well-known/jwks.json, their certificate binding recomputed with openssl."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet

from kagi.clock import FakeClock
from kagi.runtime.settings import TlsFiles
from tests.integration.gateway.gateway_support import (
    GatewayCustomer,
    GatewayStack,
    complete_with_curl,
    curl,
    oathtool_code,
)
from tests.support.tools import run, tool


async def _thumbprint(certificate: TlsFiles) -> str:
    """RFC 8705's x5t#S256 of the certificate, computed with openssl from its DER."""
    der = certificate.cert_file.with_suffix(".der")
    await run([tool("openssl"), "x509", "-in", str(certificate.cert_file), "-outform", "DER", "-out", str(der)])
    return base64.urlsafe_b64encode(hashlib.sha256(der.read_bytes()).digest()).rstrip(b"=").decode()


async def _verified(stack: GatewayStack, token: str, now: float) -> dict[str, Any]:
    """Verify a token with joserfc against the gateway's JWKS, as a front-end would, at the services' time."""
    jwks = await curl(stack, "GET", "/.well-known/jwks.json")
    assert jwks.status == 200
    decoded = jwt.decode(token, KeySet.import_key_set(jwks.body), algorithms=["ES256"])
    assert decoded.header["alg"] == "ES256"
    assert decoded.header["kid"]
    jwt.JWTClaimsRegistry(now=int(now), aud={"essential": True, "value": "kagi"}, sub={"essential": True}).validate(
        decoded.claims
    )
    return dict(decoded.claims)


async def test_a_customers_day_log_in_step_up_confirm_log_out(timed: tuple[GatewayStack, FakeClock]) -> None:
    """The access token verifies against the JWKS with joserfc, is bound to the certificate (cnf.x5t#S256 as
    openssl computes it) and refused with any other certificate; a step-up adds otp and mfa to amr; a
    confirmation token carries the transaction and the summary's digest; the same code cannot confirm a second
    transaction; the same transaction id returns the first confirmation; after logout the token is refused."""
    stack, clock = timed
    customer, secret = await complete_with_curl(stack, clock)
    other = await GatewayCustomer(stack).through_step4()
    assert customer.certificate is not None
    assert other.certificate is not None

    # Log in: certificate + login ID + login password.
    login = {"login_id": customer.login_id, "login_password": "Passw0rd"}
    answer = await curl(stack, "POST", "/v1/sessions", login, cert=customer.certificate)
    assert answer.status == 201, answer.body
    assert answer.body["token_type"] == "Bearer"
    assert 0 < answer.body["expires_in"] <= 900
    assert answer.body["user"]["state"] == "ACTIVE"
    assert answer.body["user"]["token_state"] == "ACTIVE"
    access = answer.body["access_token"]
    claims = await _verified(stack, access, clock.now())
    assert claims["amr"] == ["swk", "pwd"]
    assert claims["cnf"] == {"x5t#S256": await _thumbprint(customer.certificate)}
    assert claims["exp"] - claims["iat"] <= 900

    # The same token with another customer's certificate is refused.
    clock.advance(60)
    code = await oathtool_code(secret, clock.now())
    stolen = await curl(stack, "POST", "/v1/sessions/current/otp", {"otp": code}, cert=other.certificate, bearer=access)
    assert (stolen.status, stolen.body["error"]["reason"]) == (401, "ACCESS_TOKEN_INVALID")

    # Step up with the app's code.
    answer = await curl(
        stack, "POST", "/v1/sessions/current/otp", {"otp": code}, cert=customer.certificate, bearer=access
    )
    assert answer.status == 200, answer.body
    raised = await _verified(stack, answer.body["access_token"], clock.now())
    assert raised["amr"] == ["swk", "pwd", "otp", "mfa"]
    assert raised["sid"] == claims["sid"]
    access = answer.body["access_token"]

    # Confirm a transaction: confirmation password + the next code.
    clock.advance(60)
    code = await oathtool_code(secret, clock.now())
    summary = "振込 株式会社サンプル → 001-1234567 10,000円"
    confirm = {
        "transaction_id": "txn-0001",
        "transaction_summary": summary,
        "confirmation_password": "Kakunin9",
        "otp": code,
    }
    first = await curl(stack, "POST", "/v1/confirmations", confirm, cert=customer.certificate, bearer=access)
    assert first.status == 201, first.body
    token = await _verified(stack, first.body["confirmation_token"], clock.now())
    digest = base64.urlsafe_b64encode(hashlib.sha256(summary.encode()).digest()).rstrip(b"=").decode()
    assert (token["txn"], token["txn_digest"], token["amr"]) == ("txn-0001", digest, ["pwd", "otp"])
    assert first.body["txn_digest"] == digest
    assert first.body["methods"] == ["pwd", "otp"]

    # The same code cannot confirm a second transaction.
    second = await curl(
        stack, "POST", "/v1/confirmations", {**confirm, "transaction_id": "txn-0002"}, cert=customer.certificate,
        bearer=access,
    )  # fmt: skip
    assert (second.status, second.body["error"]["reason"]) == (401, "REPLAYED"), second.body

    # The same transaction id again returns the first confirmation.
    again = await curl(stack, "POST", "/v1/confirmations", confirm, cert=customer.certificate, bearer=access)
    assert again.status == 201, again.body
    assert again.body["confirmation_id"] == first.body["confirmation_id"]
    assert (await _verified(stack, again.body["confirmation_token"], clock.now()))["jti"] == token["jti"]

    # Log out: the session's tokens are refused from now on.
    bye = await curl(stack, "DELETE", "/v1/sessions/current", cert=customer.certificate, bearer=access)
    assert bye.status == 204
    clock.advance(60)
    code = await oathtool_code(secret, clock.now())
    after = await curl(
        stack, "POST", "/v1/sessions/current/otp", {"otp": code}, cert=customer.certificate, bearer=access
    )
    assert (after.status, after.body["error"]["reason"]) == (401, "ACCESS_TOKEN_INVALID")


async def test_the_current_enrollment_is_found_from_the_certificate_alone(
    timed: tuple[GatewayStack, FakeClock],
) -> None:
    """After step 4 the customer closes the browser (procedure ⑭): with the certificate alone,
    GET /v1/enrollments/current finds the half-done setup and its next step."""
    stack, _clock = timed
    customer = await GatewayCustomer(stack).through_step4()
    answer = await curl(stack, "GET", "/v1/enrollments/current", cert=customer.certificate)
    assert answer.status == 200, answer.body
    assert answer.body["enrollment_id"] == customer.enrollment_id
    assert (answer.body["state"], answer.body["next_step"]) == ("CERTIFICATE_ISSUED", "CERTIFICATE_LOGIN")
    anonymous = await curl(stack, "GET", "/v1/enrollments/current")
    assert anonymous.status == 401, anonymous.body
    assert uuid.UUID(hex=customer.enrollment_id)
