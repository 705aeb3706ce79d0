"""Who may talk to the admin listener when it has no token: the browser-borne attacks.

Without `admin.token_env` the listener is on loopback (the config refuses anything else), so
the only way in from outside is through a browser on the operator's machine:

- a cross-site page can POST to `http://127.0.0.1:9090/admin/...` (a `text/plain` body needs
  no CORS preflight), and the browser adds an `Origin` header naming that page;
- DNS rebinding points a name the attacker owns at 127.0.0.1, so the page's scripts can
  read `/status` "same-origin", but the browser still sends `Host: evil.example:9090`.

So every request must name the listener by a loopback name or address in `Host`, and a
state-changing request may carry an `Origin` only when it is the listener's own loopback
origin (the status page's drain buttons send that). Pure functions: the admin server asks
`refusal()` and answers what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from router.settings_types import is_loopback

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    error: str
    hint: str

    def body(self) -> dict[str, str]:
        return {"error": self.error, "hint": self.hint}


FOREIGN_HOST = Refusal(
    403,
    "forbidden_host",
    "the admin listener without a token answers only Host: localhost or a loopback address "
    "(set admin.token_env to reach it by another name)",
)
CROSS_ORIGIN = Refusal(
    403,
    "cross_origin",
    "state-changing admin requests are refused from another origin; send them without an "
    "Origin header (curl) or from the listener's own page",
)


def host_name(host_header: str) -> str:
    """The name part of a Host value: `[::1]:9090` -> `::1`, `LocalHost.:80` -> `localhost`."""
    value = host_header.strip().lower()
    if value.startswith("["):
        name = value[1:].partition("]")[0]
    else:
        name = value.rpartition(":")[0] if value.count(":") == 1 else value
    return name.rstrip(".")


def loopback_host(host_header: str) -> bool:
    return is_loopback(host_name(host_header))


def own_origin(origin: str, port: int) -> bool:
    """Whether an Origin is the listener itself reached by a loopback name."""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and parts.hostname is not None
        and is_loopback(parts.hostname.rstrip("."))
        and origin_port == port
    )


def refusal(method: str, host: str | None, origin: str | None, port: int) -> Refusal | None:
    """Why a request to the token-less admin listener on `port` is refused, or None.

    A missing Host (HTTP/1.0 from a local script) is allowed: browsers always send one."""
    if host is not None and not loopback_host(host):
        return FOREIGN_HOST
    if method not in SAFE_METHODS and origin is not None and not own_origin(origin, port):
        return CROSS_ORIGIN
    return None
