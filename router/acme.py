"""ACME HTTP-01 challenges answered on the plain listener from a webroot directory.

certbot (or any ACME client) in `--webroot -w DIR` mode writes the token file to
`DIR/.well-known/acme-challenge/<token>`; the CA then fetches it over plain HTTP on port 80,
which the router holds. With `acme_webroot: DIR` the router answers those requests itself,
before routing and before the https redirect, so certificates renew with no downtime.
Only GET/HEAD, only tokens of the ACME alphabet (base64url), only files inside DIR.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_MAX_BYTES = 64 * 1024  # a key authorization is ~90 bytes


@dataclass(frozen=True, slots=True)
class AcmeAnswer:
    status: int  # 200 with the file, 404 when there is no such token
    body: bytes
    head_only: bool

    def wire(self) -> bytes:
        """The HTTP/1.1 response bytes (for the fast engine)."""
        reason = b"OK" if self.status == 200 else b"Not Found"
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n\r\n" % (self.status, reason, len(self.body))
        )
        return head if self.head_only else head + self.body


def answer(webroot: Path, method: str, target: str) -> AcmeAnswer | None:
    """The answer to a challenge request, or None when `target` is not one (route it)."""
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD") or not path.startswith(CHALLENGE_PREFIX):
        return None
    token = path[len(CHALLENGE_PREFIX) :]
    if not _TOKEN.fullmatch(token):
        return AcmeAnswer(404, b"not an ACME token\n", method == "HEAD")
    file = webroot / ".well-known" / "acme-challenge" / token
    try:
        with file.open("rb") as handle:
            body = handle.read(_MAX_BYTES)
    except OSError:
        return AcmeAnswer(404, b"no such ACME token\n", method == "HEAD")
    return AcmeAnswer(200, body, method == "HEAD")
