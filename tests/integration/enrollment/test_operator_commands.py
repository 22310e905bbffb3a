"""`kagi admin` against running services: the notice printed by register-application (text and JSON), the
list of applications, and an unlock, each as the operator over mTLS."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.support.enrollment_flow import Customer, Stack
from tests.support.tools import run, tool

NOTICE_FIELDS = {
    "application_id",
    "branch_code",
    "account_type",
    "account_number",
    "company_name",
    "temporary_login_password",
    "temporary_confirmation_password",
    "expires_at",
}


def _admin(stack: Stack, *args: str) -> list[str]:
    assert stack.dev is not None
    return [tool("kagi"), "admin", "--state-dir", str(stack.dev.state_dir), *args]


@pytest.fixture(autouse=True)
def _targets(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca", "otp", "enrollment"):
        monkeypatch.setenv(f"KAGI_{name.upper()}_TARGET", stack.targets[name])


async def test_register_application_prints_the_notice_and_it_works(stack: Stack, tmp_path: Path) -> None:
    """The JSON notice has the documented fields; its temporary passwords pass step 1; the text form names
    them in Japanese and English."""
    out = await run(
        _admin(stack, "register-application", "--branch", "012", "--account-type", "current",
               "--account-number", "7654321", "--company", "株式会社テスト", "--json")
    )  # fmt: skip
    notice = json.loads(out)
    assert set(notice) == NOTICE_FIELDS
    assert (notice["branch_code"], notice["account_type"], notice["account_number"]) == ("012", "current", "7654321")
    assert len(notice["temporary_login_password"]) >= 10

    text = await run(
        _admin(stack, "register-application", "--branch", "013", "--account-type", "ordinary",
               "--account-number", "7654321", "--company", "株式会社テスト")
    )  # fmt: skip
    assert "仮ログインパスワード / Temporary login password" in text
    assert "申込受付完了通知書" in text

    listed = json.loads(await run(_admin(stack, "list-applications", "--json")))
    assert notice["application_id"] in {a["application_id"] for a in listed}


async def test_bad_application_is_refused_naming_the_field(stack: Stack) -> None:
    """A 2-digit branch code is refused with the rule, and the command fails."""
    with pytest.raises(AssertionError, match="branch"):
        await run(
            _admin(stack, "register-application", "--branch", "01", "--account-type", "ordinary",
                   "--account-number", "1234567", "--company", "株式会社テスト")
        )  # fmt: skip


async def test_unlock_application_after_five_wrong_notices(stack: Stack, tmp_path: Path) -> None:
    """After five wrong temporary passwords the operator's `unlock-application` lets the customer in."""
    customer = Customer(stack, tmp_path)
    await customer.register_application()
    assert customer.notice is not None
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError):
            await customer.step1(login_password="WRONGwrong99")
    await run(_admin(stack, "unlock-application", customer.notice.application.application_id, "--yes"))
    await customer.step1()
