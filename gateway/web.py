"""The customer's pages, served by the gateway on its HTTPS port: the one-time-password app (`/app/`, the
procedure's screens 20-22) and the setup wizard (`/setup/`, screens 6-19 and 23-24), with their shared styles,
scripts and the vendored pkijs under `/assets/`.

The files are static (gateway/web/) and loaded once. Every page answers a strict Content-Security-Policy: scripts,
styles, images, fetches and the service worker from this origin only, no inline script or style, no framing,
forms that cannot submit anywhere (the pages send JSON with fetch), and no referrer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.errors import HttpError

WEB_ROOT = Path(__file__).with_name("web")
"""Where the pages live: app/, setup/ and assets/ (the shared styles, scripts and vendor/)."""

SECTIONS = ("app", "setup", "assets")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "worker-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
"""No `unsafe-inline`, no `unsafe-eval`, nothing from another origin."""

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    # Revalidated every time (ETag): a fixed page reaches every customer at once; the app's service worker
    # keeps its own copy for offline use.
    "Cache-Control": "no-cache",
}

MSG_PAGE_NOT_FOUND = "ページが見つかりません / no such page"


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One page or asset: its bytes, media type and entity tag."""

    body: bytes
    content_type: str
    etag: str


def load_files(root: Path = WEB_ROOT) -> dict[str, StaticFile]:
    """Return every servable file under `root`'s sections by URL path ("/app/index.html"), read once."""
    files: dict[str, StaticFile] = {}
    for section in SECTIONS:
        for path in sorted((root / section).rglob("*")):
            content_type = CONTENT_TYPES.get(path.suffix)
            if content_type is None or not path.is_file():
                continue
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            files["/" + path.relative_to(root).as_posix()] = StaticFile(body, content_type, etag)
    return files


class WebPages:
    """Serves the app, the wizard and their assets with the pages' security headers."""

    def __init__(self, root: Path = WEB_ROOT) -> None:
        self._files = load_files(root)

    def routes(self) -> list[web.RouteDef]:
        """Return the routes: /app and /setup redirect to their folders; each folder serves its files."""
        routes = [web.get(f"/{section}/{{name:.*}}", self.serve) for section in SECTIONS]
        routes += [web.get("/app", self.to_folder), web.get("/setup", self.to_folder)]
        return routes

    async def to_folder(self, request: web.Request) -> web.StreamResponse:
        """Send /app to /app/ (the step-7 mail's link), so the page's relative URLs resolve in its folder."""
        # Returned, not raised: the gateway's frame answers raised HTTP exceptions as JSON errors.
        return web.Response(status=308, headers={**PAGE_HEADERS, "Location": request.path + "/"})

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Answer one file (a folder's index.html for the folder), or 304 when the client has it."""
        path = request.path
        if path.endswith("/"):
            path += "index.html"
        found = self._files.get(path)
        if found is None:
            raise HttpError(404, "NOT_FOUND", MSG_PAGE_NOT_FOUND)
        headers = {**PAGE_HEADERS, "ETag": found.etag}
        if found.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})
