"""The customer's pages on the gateway's HTTPS port: /app and /setup lead to their folders (the step-7 mail links
/app), every page and asset answers with its media type and a strict Content-Security-Policy (nothing from another
origin, no inline script or style, no framing, forms that post nowhere), revalidates with its ETag, and an unknown
page is the API's JSON 404; the plain-HTTP port serves no page."""

from __future__ import annotations

import re

import aiohttp

from gateway.web import CONTENT_SECURITY_POLICY
from tests.integration.gateway.gateway_support import GatewayStack

FOLDERS = ("/app/", "/setup/")
PAGES = {
    "/app/": "text/html; charset=utf-8",
    "/app/app.js": "text/javascript; charset=utf-8",
    "/app/sw.js": "text/javascript; charset=utf-8",
    "/app/manifest.webmanifest": "application/manifest+json",
    "/app/icon-192.png": "image/png",
    "/setup/": "text/html; charset=utf-8",
    "/setup/setup.js": "text/javascript; charset=utf-8",
    "/setup/certificate.js": "text/javascript; charset=utf-8",
    "/assets/kagi.css": "text/css; charset=utf-8",
    "/assets/api.js": "text/javascript; charset=utf-8",
    "/assets/vendor/pkijs.bundle.js": "text/javascript; charset=utf-8",
    "/assets/vendor/LICENSES.txt": "text/plain; charset=utf-8",
}


async def test_pages_answer_their_type_and_a_strict_content_security_policy(stack: GatewayStack) -> None:
    """Each page has its media type and the pages' headers; the policy allows this origin only, never inline."""
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == directives["style-src"] == directives["connect-src"] == "'self'"
    assert (directives["form-action"], directives["frame-ancestors"]) == ("'none'", "'none'")
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    async with stack.client() as client:
        for path, media_type in PAGES.items():
            answer = await client.request("GET", path)
            assert answer.status == 200, (path, answer.body)
            assert answer.headers["Content-Type"] == media_type, path
            assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["Referrer-Policy"] == "no-referrer"
            assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
            again = await client.request("GET", path, headers={"If-None-Match": answer.headers["ETag"]})
            assert (again.status, again.raw) == (304, b""), path
        for folder in FOLDERS:
            page = (await client.request("GET", folder)).raw.decode()
            scripts = re.findall(r"<script[^>]*>", page)
            assert scripts, folder
            assert all(" src=" in tag for tag in scripts), scripts  # no inline script
            assert not re.search(r"<style|\sstyle=|\son[a-z]+=", page), folder  # no inline style or handler
            assert not re.search(r"(src|href)=\"(https?:)?//", page), folder  # nothing from another origin


async def test_app_and_setup_lead_to_their_folders_and_unknown_pages_are_404(stack: GatewayStack) -> None:
    """GET /app (the mail's link) and /setup answer 308 to the folder; an unknown page is the JSON 404."""
    async with stack.client() as client:
        for folder in ("/app", "/setup"):
            async with client.session.get(client.base + folder, allow_redirects=False) as response:
                assert response.status == 308
                assert response.headers["Location"] == folder + "/"
        missing = await client.request("GET", "/app/nothing.js")
        assert missing.status == 404
        assert missing.body["error"]["reason"] == "NOT_FOUND"
        traversal = await client.request("GET", "/assets/../../app.py")
        assert traversal.status == 404
    async with aiohttp.ClientSession() as session, session.get(stack.http_url + "/app/") as response:
        assert response.status == 404
