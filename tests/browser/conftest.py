"""Fixtures for the browser tests: the whole stack behind the gateway, and Debian's headless Chromium.

The tests skip, naming the package to install, when Chromium, chromedriver, the NSS tools or selenium are missing;
scripts/test.sh installs them when CI=true, so they run in CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kagi.cli.stack import start_stack
from tests.browser import chromium
from tests.integration.gateway.gateway_support import GatewayStack
from tests.support.ports import stable_port
from tests.support.smtp import SmtpServer


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return CA, OTP and enrollment services with the gateway in front, its HTTPS port chosen beforehand so that
    the step-7 mail's link to the app is the real one, and a real SMTP server receiving the mail."""
    reason = chromium.missing()
    if reason is not None:
        pytest.skip(reason)
    smtp = SmtpServer().start()
    (tmp_path / "client").mkdir()
    try:
        dev = await start_stack(
            tmp_path / "state",
            ports={"gateway": stable_port(), "gateway_http": stable_port()},
            extra_env={**smtp.environment(), "KAGI_GATEWAY_RATE_LIMITS": "off"},
            management="each",
        )
    except BaseException:
        smtp.stop()
        raise
    running = GatewayStack(dev, smtp, tmp_path / "client")
    yield running
    await running.close()
