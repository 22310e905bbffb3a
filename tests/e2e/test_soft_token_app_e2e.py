"""The terminal soft-token app does steps 8 and 9 against the gateway, and the code it shows completes step 10:
`kagi token activate` (the usage-start password on stdin), `kagi token show --once`, `kagi token qr`."""

from __future__ import annotations

import stat

import pytest

from tests.integration.gateway.gateway_support import USAGE_START_PASSWORD, GatewayCustomer, GatewayStack, curl
from tests.support.tools import run, tool


async def test_kagi_token_activates_registers_and_shows_the_code_that_completes(stack: GatewayStack) -> None:
    """After step 7 the app activates with the IDs from the mail, stores the seed in a 0600 file encrypted
    under the usage-start password, registers (APP_REGISTERED), and its code makes the enrollment COMPLETED."""
    customer = GatewayCustomer(stack)
    service_id, app_user_id = await customer.through_step7()
    assert customer.certificate is not None
    path = f"/v1/enrollments/{customer.enrollment_id}"

    token_file = stack.workdir / "app" / "token.json"
    kagi = tool("kagi")
    out = await run(
        [kagi, "token", "activate", "--gateway", stack.https_url, "--cacert", str(stack.root_file),
         "--service-id", service_id, "--user-id", app_user_id, "--agree", "--password-stdin",
         "--file", str(token_file)],
        stdin=f"{USAGE_START_PASSWORD}\n".encode(),
    )  # fmt: skip
    assert "registered" in out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    answer = await curl(stack, "GET", path, cert=customer.certificate)
    assert answer.body["state"] == "APP_REGISTERED"

    shown = await run(
        [kagi, "token", "show", "--once", "--file", str(token_file), "--password-stdin"],
        stdin=f"{USAGE_START_PASSWORD}\n".encode(),
    )
    code, remaining = shown.split()
    assert len(code) == 6
    assert code.isdigit()
    assert 1 <= int(remaining.rstrip("s")) <= 60
    answer = await curl(stack, "POST", path + "/otp", {"otp": code}, cert=customer.certificate)
    if answer.status != 200:  # the step turned between reading and sending: the next code is the app's now
        shown = await run(
            [kagi, "token", "show", "--once", "--file", str(token_file), "--password-stdin"],
            stdin=f"{USAGE_START_PASSWORD}\n".encode(),
        )
        answer = await curl(stack, "POST", path + "/otp", {"otp": shown.split()[0]}, cert=customer.certificate)
    assert answer.status == 200, answer.body
    assert answer.body["state"] == "COMPLETED"

    uri = await run(
        [kagi, "token", "qr", "--file", str(token_file), "--password-stdin"],
        stdin=f"{USAGE_START_PASSWORD}\n".encode(),
    )
    assert uri.splitlines()[0].startswith("otpauth://totp/")


async def test_wrong_usage_start_password_is_refused_and_stores_nothing(stack: GatewayStack) -> None:
    """A usage-start password that is not 4-8 digits is refused by the app itself; unknown IDs are refused by
    the gateway; no token file is written either way."""
    token_file = stack.workdir / "app" / "token.json"
    kagi = tool("kagi")
    base = [kagi, "token", "activate", "--gateway", stack.https_url, "--cacert", str(stack.root_file),
            "--service-id", "ABCDEFGHJK", "--user-id", "ABCDEFGHJK", "--agree", "--password-stdin",
            "--file", str(token_file)]  # fmt: skip
    for password in ("123", "１２３４"):
        with pytest.raises(AssertionError, match=r"usage|利用開始"):
            await run(base, stdin=f"{password}\n".encode())
    with pytest.raises(AssertionError, match="exited"):
        await run(base, stdin=b"4831\n")
    assert not token_file.exists()
