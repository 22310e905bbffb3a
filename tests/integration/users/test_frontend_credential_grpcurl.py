"""A bank front-end's integration, as its developers would do it: the operator issues a `frontend` credential
with `kagi admin issue-credential`, and grpcurl (a real third-party client, through server reflection) calls
UserService/Authenticate with the certificate the customer presented to the front-end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from kagi.clock import FakeClock
from tests.support.enrollment_flow import Customer, Stack
from tests.support.tools import run, tool


async def _refused(argv: list[str]) -> str:
    """Run grpcurl expecting an error status; return what it printed (it reports the status on stderr)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode != 0, out.decode()
    return out.decode() + err.decode()


async def test_grpcurl_authenticates_a_customer_with_an_issued_frontend_credential(
    stack: Stack, clock: FakeClock, workdir: Path
) -> None:
    """issue-credential writes the front-end's certificate, key and root; with them grpcurl lists UserService,
    Authenticate answers the user and an access token for the customer's certificate, a wrong password is
    UNAUTHENTICATED LOGIN_FAILED, and the same credential may not call a setup step (PERMISSION_DENIED)."""
    assert stack.dev is not None
    customer = await Customer(stack, workdir).complete(clock.now())
    out = workdir / "frontend-team"
    await run(
        [tool("kagi"), "admin", "--state-dir", str(stack.dev.state_dir), "issue-credential", "--role", "frontend",
         "--name", "web-banking", "--dns", "web-banking.bank.example", "--out", str(out)]
    )  # fmt: skip
    grpcurl = [
        tool("grpcurl"), "-cacert", str(out / "ca.pem"), "-cert", str(out / "web-banking.pem"),
        "-key", str(out / "web-banking-key.pem"), "-authority", "localhost",
    ]  # fmt: skip
    target = stack.targets["enrollment"]
    assert "kagi.enrollment.v1.UserService" in await run([*grpcurl, target, "list"])

    request = {
        "client_certificate_pem": customer.certificate_pem,
        "login_id": customer.login_id,
        "login_password": "Passw0rd",
    }
    answer = json.loads(
        await run([*grpcurl, "-d", json.dumps(request), target, "kagi.enrollment.v1.UserService/Authenticate"])
    )
    assert answer["token_type"] == "Bearer"
    assert answer["access_token"].count(".") == 2
    assert answer["user"]["login_id"] == customer.login_id
    assert answer["user"]["state"] == "STATE_ACTIVE"

    wrong = await _refused(
        [*grpcurl, "-d", json.dumps({**request, "login_password": "Wrong000"}), target,
         "kagi.enrollment.v1.UserService/Authenticate"]
    )  # fmt: skip
    assert "Unauthenticated" in wrong
    assert "LOGIN_FAILED" in wrong

    step = await _refused(
        [*grpcurl, "-d", json.dumps({"enrollment_id": customer.enrollment_id}), target,
         "kagi.enrollment.v1.EnrollmentService/CertificateLogin"]
    )  # fmt: skip
    assert "PermissionDenied" in step
