"""The one-time-password app at /app/ in a real browser (headless Chromium on a phone-sized screen): it activates
with the mailed IDs and the usage-start password (⑳), registers (㉑), and shows the code oathtool computes for the
delivered seed with the seconds left in its 60-second window (㉒); that code completes the enrollment; the key in
IndexedDB cannot be exported; once installed the app opens and shows codes with the gateway gone; no page reaches
another origin, and the pages answer a strict Content-Security-Policy that Chromium reports no violation of."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium
from tests.browser.app_screens import DIGITS, PERIOD, activate_app, oathtool, shown_code
from tests.browser.chromium import Browser
from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack, curl
from tests.support.enrollment_flow import USAGE_START_PASSWORD


def wait_offline_ready(phone: Browser) -> None:
    """Wait until the service worker controls the page and has kept the app's files."""
    phone.wait(
        lambda d: d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "if (!navigator.serviceWorker.controller) { done(false); return; }"
            "caches.open('kagi-app-v1').then((c) => c.keys()).then((k) => done(k.length >= 7));"
        ),
        "the service worker to control the page with the app's files kept",
    )


def key_facts(phone: Browser) -> dict[str, Any]:
    """Return what the page can learn of the stored key: its algorithm, whether it is extractable, and what
    exporting it answers."""
    facts: dict[str, Any] = phone.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const open = indexedDB.open("kagi-otp");
        open.onsuccess = () => {
          const get = open.result.transaction("tokens").objectStore("tokens").get("current");
          get.onsuccess = async () => {
            const key = get.result.key;
            let exported = "exported";
            try { await crypto.subtle.exportKey("raw", key); } catch (e) { exported = e.name; }
            done({type: key.type, algorithm: key.algorithm.name, hash: key.algorithm.hash.name,
                  extractable: key.extractable, usages: key.usages, exported,
                  fields: Object.keys(get.result).sort()});
          };
        };
        open.onerror = () => done({error: String(open.error)});
        """
    )
    return facts


# Browsers start slowly on a loaded machine, and the code is read with time to spare in its window.
@pytest.mark.timeout(300)
async def test_the_app_shows_the_code_oathtool_computes_and_it_completes_the_setup(
    stack: GatewayStack, tmp_path: Path
) -> None:
    """The customer takes steps 1-7, opens the mail's link on the phone and activates the app (sent first without
    agreeing to the terms, the service's message appears beside the checkbox): the page's code
    is oathtool's for the seed the activation delivered, its seconds count down in a 60-second window, and step 10
    with it answers COMPLETED. The stored HMAC key is not extractable and the stored record holds no seed. Once
    installed, the app opens and shows the right code with the gateway stopped."""
    customer = GatewayCustomer(stack)
    service_id, user_id = await customer.through_step7()
    mail = stack.smtp.inbox.messages[-1].get_content()
    link = re.search(r"Get the app: (https://\S+)", mail)
    assert link is not None, mail
    assert link.group(1) == stack.https_url + "/app"
    home = await asyncio.to_thread(chromium.new_home, tmp_path, "phone-home", stack.root_file)
    phone = await asyncio.to_thread(chromium.start, home, stack.https_url, tmp_path / "phone", window=chromium.PHONE)
    try:
        await asyncio.to_thread(activate_app, phone, service_id, user_id, USAGE_START_PASSWORD, show_refusal=True)
        # The network saw the seed go by once; the test reads it there to check the page's codes.
        delivered = await asyncio.to_thread(phone.response_json, "/v1/app/activation")
        assert (delivered["algorithm"], delivered["digits"], delivered["period"]) == ("SHA1", DIGITS, PERIOD)
        seed = delivered["secret"]

        code, window_start, left = await asyncio.to_thread(shown_code, phone, at_least=10)
        assert window_start % PERIOD == 0
        assert 10 <= left <= PERIOD
        assert code == await oathtool(seed, window_start)

        facts = await asyncio.to_thread(key_facts, phone)
        assert (facts["type"], facts["algorithm"], facts["hash"]) == ("secret", "HMAC", "SHA-1")
        assert facts["extractable"] is False
        assert facts["usages"] == ["sign"]
        assert facts["exported"] == "InvalidAccessError"
        assert not {"secret", "seed", "otpauth_uri"} & set(facts["fields"]), facts["fields"]

        path = f"/v1/enrollments/{customer.enrollment_id}"
        answer = await curl(stack, "POST", path + "/otp", {"otp": code}, cert=customer.certificate)
        assert answer.status == 200, answer.body
        assert answer.body["state"] == "COMPLETED"

        # Offline: the installed app opens from its service worker and still computes the codes.
        await asyncio.to_thread(wait_offline_ready, phone)
        installability = await asyncio.to_thread(phone.driver.execute_cdp_cmd, "Page.getInstallabilityErrors", {})
        assert installability["installabilityErrors"] == [], installability
        await stack.stop("gateway")
        await asyncio.to_thread(phone.open, "/app/")
        await asyncio.to_thread(phone.screen, "screen-code")
        code, window_start, _left = await asyncio.to_thread(shown_code, phone)
        assert code == await oathtool(seed, window_start)
        await asyncio.to_thread(phone.shot, "app-22-code-offline")

        assert await asyncio.to_thread(phone.foreign_requests) == []
        assert await asyncio.to_thread(phone.csp_violations) == []
    finally:
        await asyncio.to_thread(phone.quit)
