"""The app's screens as the customer takes them in the browser (⑳ activate, ㉑ register, ㉒ the code), and
oathtool's code for a seed to check the page's against."""

from __future__ import annotations

from typing import Any

from tests.browser.chromium import Browser
from tests.support.tools import run, tool

# The OTP service's token parameters (services/otp_service: SHA-1, 6 digits, 60-second windows).
DIGITS, PERIOD = 6, 60


def activate_app(
    phone: Browser, service_id: str, user_id: str, password: str, shots: str = "app", *, show_refusal: bool = False
) -> None:
    """Take the app's screens ⑳ and ㉑ as the customer does, with a screenshot of each; with `show_refusal`,
    first send ⑳ without agreeing to the terms."""
    phone.open("/app")
    phone.screen("screen-activate")
    phone.shot(f"{shots}-20-activate")
    phone.fill({"service_id": service_id, "user_id": user_id, "usage_start_password": password})
    if show_refusal:
        # Sent without ticking 「上記の内容に同意する」: the service's message appears beside the checkbox.
        phone.click("#send")
        message = phone.wait(
            lambda d: d.execute_script("return document.querySelector('[data-error-for=\"agreed\"]').textContent"),
            "the message beside the checkbox",
        )
        assert "上記の内容に同意する" in message, message
        phone.shot(f"{shots}-20-activate-not-agreed")
    phone.click("#agreed")
    phone.shot(f"{shots}-20-activate-filled")
    phone.click("#send")
    phone.screen("screen-register")
    phone.shot(f"{shots}-21-register")
    phone.click("#register")
    phone.screen("screen-code")
    shown_code(phone)
    phone.shot(f"{shots}-22-code")


def shown_code(phone: Browser, *, at_least: int = 0) -> tuple[str, int, int]:
    """Return the code the app shows, the start of its window (Unix seconds) and the seconds it says are left,
    once at least `at_least` seconds are left (waiting for the next window otherwise)."""

    def read(driver: Any) -> tuple[str, int, int] | None:
        code, start, left = driver.execute_script(
            "const c = document.getElementById('code');"
            "return [c.textContent, c.dataset.windowStart, document.getElementById('seconds').textContent];"
        )
        if not (code.isdigit() and len(code) == DIGITS and start and left.isdigit()) or int(left) < at_least:
            return None
        return code, int(start), int(left)

    found: tuple[str, int, int] = phone.wait(read, f"a code with at least {at_least} seconds left", timeout=PERIOD + 30)
    return found


async def oathtool(seed: str, window_start: int) -> str:
    """Return oathtool's code for the base32 `seed` in the window starting at `window_start`."""
    argv = [tool("oathtool"), "--totp", "-b", "-s", str(PERIOD), "-d", str(DIGITS), "-N", f"@{window_start}", seed]
    return (await run(argv)).strip()
