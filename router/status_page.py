"""/status.html: one self-contained page (inline CSS and script, no CDN, no build step).

The page is a static shell: it holds no data, so it is served without the admin token. Its
script fetches `/status` every 2 seconds with `Authorization: Bearer <token>` (the token
comes from the URL fragment `#token=...`, never sent to a server, or from a form) and writes
every value with `textContent`, so nothing the router reports is ever parsed as HTML. A
Content-Security-Policy that admits only this page's own script and style (by hash) is a
second line of defence.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from aiohttp import web

TEMPLATE = "status_page.html"


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


@cache
def page() -> tuple[bytes, str]:
    """The page body and its Content-Security-Policy."""
    html = resources.files("router").joinpath(TEMPLATE).read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_hash(s) for s in scripts),
            "style-src " + " ".join(_hash(s) for s in styles),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html.encode(), policy


async def handle(request: web.Request) -> web.Response:
    body, policy = page()
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def redirect(request: web.Request) -> web.Response:
    """The admin listener's root opens the page (a relative target keeps any path prefix)."""
    raise web.HTTPFound("status.html")
