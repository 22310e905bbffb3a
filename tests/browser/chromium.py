"""A real browser for the tests: Debian's Chromium, headless, driven by selenium through chromedriver.

Each browser runs under its own temporary HOME, whose NSS database (~/.pki/nssdb) trusts the stack's root CA
and holds the client certificates the customer imported (pk12util); a new empty profile per start. A browser that
must present a client certificate gets the `AutoSelectCertificateForUrls` policy: Chromium reads policies only
from /etc/chromium/policies, so chromedriver (and the Chromium it starts) runs in a private mount namespace in
which the test's own folder is mounted over /etc/chromium; the machine's files are never touched.

Every request a page makes is read from Chromium's performance log, so a test can check that no page reached
another origin; the console log shows Content-Security-Policy violations.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
ETC_CHROMIUM = Path("/etc/chromium")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
PHONE = (390, 844)
"""A phone-sized window (CSS pixels)."""
DESKTOP = (1100, 1000)
WAIT_SECONDS = 60.0


def missing() -> str | None:
    """Return why the browser tests cannot run here, or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    for program, package in (
        (CHROMIUM, "chromium"),
        ("chromedriver", "chromium-driver"),
        ("certutil", "libnss3-tools"),
        ("pk12util", "libnss3-tools"),
    ):
        if shutil.which(program) is None:
            return f"{program} is missing: apt-get install -y {package} (scripts/test.sh does when CI=true)"
    return None


def private_mounts() -> str | None:
    """Return why a private mount namespace (for Chromium's policy folder) cannot be made here, or None."""
    if not ETC_CHROMIUM.is_dir():
        return f"{ETC_CHROMIUM} does not exist: the chromium package makes it"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "--bind", str(ETC_CHROMIUM), str(ETC_CHROMIUM)],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return (
            "Chromium reads the AutoSelectCertificateForUrls policy only from /etc/chromium/policies, and this "
            f"machine refuses the private mount namespace that gives the test its own copy: {probe.stderr.strip()}"
        )
    return None


def new_home(parent: Path, name: str, root_ca: Path) -> Path:
    """Make a temporary HOME whose NSS database trusts `root_ca` (the gateway's root) and holds nothing else."""
    home = parent / name
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    subprocess.run(
        ["certutil", "-A", "-n", "kagi-root", "-t", "C,,", "-i", str(root_ca), "-d", f"sql:{nssdb}"],
        check=True,
        capture_output=True,
    )
    return home


def import_pkcs12(home: Path, pkcs12: Path, password: str) -> str:
    """Import a PKCS#12 file into HOME's NSS database with pk12util; return the database's listing."""
    nssdb = f"sql:{home / '.pki' / 'nssdb'}"
    subprocess.run(["pk12util", "-i", str(pkcs12), "-d", nssdb, "-W", password], check=True, capture_output=True)
    return subprocess.run(["certutil", "-L", "-d", nssdb], check=True, capture_output=True, text=True).stdout


def _policy_wrapper(folder: Path, origin: str) -> Path:
    """Write a chromedriver wrapper that sees `folder` as /etc/chromium, holding the certificate policy."""
    etc = folder / "etc-chromium"
    managed = etc / "policies" / "managed"
    managed.mkdir(parents=True, exist_ok=True)
    for kept in ETC_CHROMIUM.iterdir():
        if kept.is_file():
            shutil.copy(kept, etc / kept.name)
    pattern = json.dumps({"pattern": origin, "filter": {}})
    (managed / "kagi.json").write_text(json.dumps({"AutoSelectCertificateForUrls": [pattern]}))
    chromedriver = shutil.which("chromedriver")
    wrapper = folder / "chromedriver-with-policy"
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec unshare --mount --propagation private "
        f'sh -c \'mount --bind "$0" {ETC_CHROMIUM} && exec {chromedriver} "$@"\' "{etc}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@dataclass
class Browser:
    """One running Chromium: its driver, where its screenshots and downloads go, and every URL it requested."""

    driver: Any
    origin: str
    screenshots: Path
    downloads: Path
    requested: list[str] = field(default_factory=list)
    console: list[dict[str, Any]] = field(default_factory=list)
    responses: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def open(self, path: str) -> None:
        """Navigate to a path of the gateway."""
        self.driver.get(self.origin + path)

    def wait(self, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
        """Poll `condition(driver)` until it answers something true; fail naming `what` and the page's state."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = condition(self.driver)
            except Exception:  # the page may be between two states (stale or missing elements): poll again
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                screen = self.driver.execute_script("return document.body && document.body.dataset.screen")
                raise AssertionError(f"timed out waiting for {what} (screen {screen!r}, url {self.driver.current_url})")
            time.sleep(0.1)

    def screen(self, screen_id: str) -> None:
        """Wait until the page shows the screen `screen_id` (a section.screen) and nothing else."""
        self.wait(
            lambda d: d.execute_script(
                "const s = document.getElementById(arguments[0]); return s && !s.hidden && "
                "document.body.dataset.screen === arguments[0];",
                screen_id,
            ),
            f"the screen {screen_id}",
        )

    def element(self, css: str) -> Any:
        """Return the element `css` selects, once it is displayed."""
        from selenium.webdriver.common.by import By

        return self.wait(
            lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None), css
        )

    def fill(self, values: dict[str, str]) -> None:
        """Type each value into the visible input of that name (or choose it in the select of that name)."""
        from selenium.webdriver.support.select import Select

        for name, value in values.items():
            element = self.element(f'section.screen:not([hidden]) [name="{name}"]')
            if element.tag_name == "select":
                Select(element).select_by_value(value)
                continue
            element.clear()
            element.send_keys(value)

    def click(self, css: str) -> None:
        """Click the visible element `css` selects (dispatched to the element itself: a full-page screenshot
        resizes the viewport for a moment, and a click by coordinates could land beside it)."""
        self.driver.execute_script("arguments[0].click();", self.element(css))

    def text(self, css: str) -> str:
        """Return the visible text of the element `css` selects."""
        return str(self.element(css).text)

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole page (beyond the window too) as NAME.png in the screenshots folder."""
        path = self.screenshots / f"{name}.png"
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def collect_logs(self) -> None:
        """Read the performance log (every request sent) and the console log since the last read."""
        if self.closed:
            return
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])
            elif message.get("method") == "Network.responseReceived":
                self.responses[urlsplit(message["params"]["response"]["url"]).path] = message["params"]["requestId"]
        self.console.extend(self.driver.get_log("browser"))

    def response_json(self, path: str) -> Any:
        """Return the JSON body of the last answer to `path` the current page received, as the network saw it."""
        self.collect_logs()
        reply = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": self.responses[path]})
        return json.loads(reply["body"])

    def foreign_requests(self) -> list[str]:
        """Return every requested URL not on the gateway's origin (data: and blob: URLs are the page's own; the
        browser's own chrome: pages, such as the new-tab page it starts on, are not the gateway's pages)."""
        self.collect_logs()
        own = urlsplit(self.origin)
        foreign = []
        for url in self.requested:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about", "chrome", "chrome-untrusted", "devtools"):
                continue
            if (parts.scheme, parts.netloc) != (own.scheme, own.netloc):
                foreign.append(url)
        return foreign

    def csp_violations(self) -> list[str]:
        """Return the console's Content-Security-Policy complaints."""
        self.collect_logs()
        return [str(entry["message"]) for entry in self.console if "Content Security Policy" in entry["message"]]

    def quit(self) -> None:
        """Read the logs a last time and stop the browser (once)."""
        if self.closed:
            return
        try:
            self.collect_logs()
        finally:
            self.closed = True
            self.driver.quit()


def start(
    home: Path,
    origin: str,
    folder: Path,
    *,
    window: tuple[int, int] = DESKTOP,
    present_certificate: bool = False,
) -> Browser:
    """Start a headless Chromium under `home` with a new empty profile in `folder`; with `present_certificate`
    it presents the certificate in home's NSS database to `origin` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder.mkdir(parents=True, exist_ok=True)
    screenshots, downloads = folder.parent / "screenshots", folder / "downloads"
    screenshots.mkdir(exist_ok=True)
    downloads.mkdir(exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={folder / 'profile'}")
    if window == PHONE:
        options.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": {"width": window[0], "height": window[1], "pixelRatio": 2.0}}
        )
    else:
        options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.add_argument("--lang=ja")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    executable = _policy_wrapper(folder, origin) if present_certificate else shutil.which("chromedriver")
    service = Service(executable_path=str(executable), env={**os.environ, "HOME": str(home)})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_SECONDS)
    browser = Browser(driver, origin, screenshots, downloads)
    # Headless Chromium saves downloads only where it is told to.
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return browser
