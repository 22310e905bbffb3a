"""`kagi admin` for users after the setup, as an operator runs it against running services: list-users (all, by
company, by account; a table and --json), show-user, lock-user / unlock-user (a locked user cannot log in,
and the lock and unlock are audit records verify-audit accepts), unlock-token, rotate-signing-key (the new key
is published in the JWKS, the old one still verifies)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import jwt
import pytest

from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from tests.support.enrollment_flow import Customer, Stack, code_for
from tests.support.tools import run, tool


def _admin(stack: Stack, *args: str) -> list[str]:
    assert stack.dev is not None
    return [tool("kagi"), "admin", "--state-dir", str(stack.dev.state_dir), *args]


async def test_list_show_lock_and_unlock_a_user(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """list-users finds the user in a table and as JSON, by company and by account; show-user shows it ACTIVE;
    after lock-user --yes the user's login answers USER_LOCKED and show-user says LOCKED (OPERATOR); after
    unlock-user --yes the login works; verify-audit accepts both trails, with the lock and unlock recorded."""
    customer = await Customer(stack, workdir).complete(clock.now())
    user_id = (await customer.login()).user.user_id

    table = await run(_admin(stack, "list-users"))
    assert table.splitlines()[0].split()[:3] == ["USER_ID", "LOGIN_ID", "USER_NAME"]
    assert customer.login_id in table
    by_company = json.loads(await run(_admin(stack, "list-users", "--company", "株式会社サンプル", "--json")))
    assert user_id in {u["user_id"] for u in by_company}
    account = f"{customer.branch}-ordinary-{customer.account}"
    by_account = json.loads(await run(_admin(stack, "list-users", "--account", account, "--json")))
    assert [u["user_id"] for u in by_account] == [user_id]
    assert json.loads(await run(_admin(stack, "list-users", "--account", "999-ordinary-0000000", "--json"))) == []

    shown = json.loads(await run(_admin(stack, "show-user", "--user", user_id, "--json")))
    assert (shown["state"], shown["token_state"], shown["login_id"]) == ("ACTIVE", "ACTIVE", customer.login_id)
    assert "password" not in json.dumps(shown)

    await run(_admin(stack, "lock-user", "--user", user_id, "--yes"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await customer.login()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    shown = json.loads(await run(_admin(stack, "show-user", "--user", user_id, "--json")))
    assert (shown["state"], shown["lock_reason"]) == ("LOCKED", "OPERATOR")

    await run(_admin(stack, "unlock-user", "--user", user_id, "--yes"))
    assert (await customer.login()).access_token
    audit = await run(_admin(stack, "verify-audit"))
    assert "ca: audit chain OK" in audit
    assert "enrollment: audit chain OK" in audit


async def test_unlock_token_after_five_wrong_codes(stack: Stack, clock: FakeClock, workdir: Path) -> None:
    """Five wrong codes lock the user's token (show-user: token_state LOCKED); unlock-token --user lifts it and
    the next right code steps the session up. (The OTP service throttles three failures a minute, so the
    clock moves a minute between tries.)"""
    customer = await Customer(stack, workdir).complete(clock.now())
    session = await customer.login()
    user_id = session.user.user_id
    for _ in range(5):
        clock.advance(61)
        with pytest.raises(grpc.aio.AioRpcError):
            await customer.users().VerifyOtp(
                upb.VerifyOtpRequest(user_id=user_id, otp="000000", purpose=upb.OTP_PURPOSE_CHECK),
                metadata=customer.cert_metadata,
            )
    shown = json.loads(await run(_admin(stack, "show-user", "--user", user_id, "--json")))
    assert shown["token_state"] == "LOCKED"
    out = await run(_admin(stack, "unlock-token", "--user", user_id, "--yes"))
    assert "REGISTERED" in out  # an unlock never claims a code was verified: the next right code reactivates
    clock.advance(60)
    raised = await customer.users().VerifyOtp(
        upb.VerifyOtpRequest(
            user_id=user_id,
            otp=code_for(customer.secret, clock.now()),
            purpose=upb.OTP_PURPOSE_STEP_UP,
            access_token=session.access_token,
        ),
        metadata=customer.cert_metadata,
    )
    assert raised.access_token
    shown = json.loads(await run(_admin(stack, "show-user", "--user", user_id, "--json")))
    assert shown["token_state"] == "ACTIVE"


async def test_rotate_signing_key_publishes_the_new_key_and_keeps_the_old(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """After rotate-signing-key the JWKS holds two keys (the service reloads the file); a token signed before
    the rotation still verifies against the JWKS, and the new key signs once its activation time has come."""
    customer = await Customer(stack, workdir).complete(clock.now())
    before = await customer.login()
    old_kid = jwt.get_unverified_header(before.access_token)["kid"]
    out = await run(_admin(stack, "rotate-signing-key", "--activate-in", "60"))
    assert "added key" in out
    jwks: dict[str, list[dict[str, str]]] = {"keys": []}
    for _ in range(100):  # the service checks the file every few seconds
        jwks = json.loads((await customer.users().GetJwks(upb.GetJwksRequest())).jwks_json)
        if len(jwks["keys"]) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(jwks["keys"]) == 2
    keys = jwt.PyJWKSet.from_dict(jwks)
    old = next(k for k in keys.keys if k.key_id == old_kid)
    assert jwt.decode(
        before.access_token, old.key, algorithms=["ES256"], audience="kagi", options={"verify_exp": False}
    )
    assert jwt.get_unverified_header((await customer.login()).access_token)["kid"] == old_kid
    clock.advance(120)  # past the activation time, which the command took from the real clock a moment ago
    new_kid = jwt.get_unverified_header((await customer.login()).access_token)["kid"]
    assert new_kid != old_kid
    assert new_kid in {k["kid"] for k in jwks["keys"]}
