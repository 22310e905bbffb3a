"""What the customer reads, from running services: the notice `kagi admin register-application` prints shows its
expiry in Japan time and the bank's contact line (KAGI_CONTACT_TEXT); the mails a real SMTP server receives
are dated in Japan time, in Japanese with English, and end with the contact line."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.enrollment_service.domain.messages import DEFAULT_CONTACT_TEXT
from tests.support.enrollment_flow import Customer, Stack
from tests.support.tools import run, tool

CONTACT = "お問い合わせ: 都留信用組合 事務部 0555-24-2600 / Contact: Tsuru Shinkumi, 0555-24-2600"
VALID_UNTIL = re.compile(
    r"有効期限 / Valid until: +(\d{4})年(\d{1,2})月(\d{1,2})日 (\d\d):(\d\d) \(JST\) / "
    r"(\d{4}-\d\d-\d\d \d\d:\d\d) JST$"
)
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


@pytest.fixture(autouse=True)
def _targets(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca", "otp", "enrollment"):
        monkeypatch.setenv(f"KAGI_{name.upper()}_TARGET", stack.targets[name])


async def _notice(stack: Stack, contact: str | None) -> list[str]:
    assert stack.dev is not None
    env = {k: v for k, v in os.environ.items() if k != "KAGI_CONTACT_TEXT"}
    if contact is not None:
        env["KAGI_CONTACT_TEXT"] = contact
    out = await run(
        [tool("kagi"), "admin", "--state-dir", str(stack.dev.state_dir), "register-application", "--branch", "021",
         "--account-type", "ordinary", "--account-number", f"{time.time_ns() % 10**7:07d}", "--company",
         "株式会社テスト"],
        env=env,
    )  # fmt: skip
    return [line.strip() for line in out.splitlines()]


async def test_the_printed_notice_shows_its_expiry_in_jst_and_the_contact_line(stack: Stack) -> None:
    """register-application prints the notice's expiry as Japan time in Japanese and English (30 days from now,
    UTC+9, never UTC) and, last, the contact line taken from KAGI_CONTACT_TEXT."""
    issued = time.time()
    lines = await _notice(stack, CONTACT)
    [match] = [m for m in map(VALID_UNTIL.search, lines) if m]
    year, month, day, hour, minute = (int(g) for g in match.groups()[:5])
    japanese = datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert japanese.strftime("%Y-%m-%d %H:%M") == match.group(6)
    expected = datetime.fromtimestamp(issued, ZoneInfo("Asia/Tokyo")) + timedelta(days=30)
    assert abs((japanese - expected).total_seconds()) <= 120
    assert not any("UTC" in line or re.search(r"\d\dZ\b", line) for line in lines)
    assert lines[-1] == CONTACT


async def test_the_printed_notice_has_the_default_contact_line_without_kagi_contact_text(stack: Stack) -> None:
    """Without KAGI_CONTACT_TEXT the notice ends with the default contact line (Japanese and English)."""
    lines = await _notice(stack, None)
    assert lines[-1] == DEFAULT_CONTACT_TEXT


async def test_the_step7_and_completion_mails_are_dated_in_jst_bilingual_and_end_with_the_contact(
    stack: Stack, workdir: Path
) -> None:
    """After the ten steps, the step-7 mail and the completion mail the SMTP server received carry a Date in
    Japan time (+0900), Japanese and English subjects and bodies, no UTC time, and the contact line last."""
    customer = Customer(stack, workdir)
    await customer.complete(time.time())
    await stack.deliver_mail()
    messages = stack.smtp.inbox.messages
    step7 = next(m for m in messages if "Service ID:" in m.get_content())
    completion = next(m for m in messages if "初期設定が完了しました" in m.get_content())
    for message in (step7, completion):
        assert message["Date"].endswith("+0900"), message["Date"]
        subject_ja, _, subject_en = str(message["Subject"]).partition(" / ")
        assert JAPANESE.search(subject_ja)
        assert subject_en
        assert not JAPANESE.search(subject_en)
        body = message.get_content()
        assert any(JAPANESE.search(line) for line in body.splitlines())
        assert any(re.search(r"\b(the|your)\b", line) and not JAPANESE.search(line) for line in body.splitlines())
        assert "UTC" not in body
        assert body.rstrip().splitlines()[-1] == DEFAULT_CONTACT_TEXT
