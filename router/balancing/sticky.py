"""Sticky sessions on top of any policy (`routing.sticky`).

- `header` / `ip`: the key (a request header, or the effective client address) is hashed
  with a stable hash and placed by the group's prebuilt table (`routing.sticky.hash`:
  Maglev by default, ring hash or rendezvous; see tables.py) inside the group the policy
  would pick from (every member, or the client's region under `geo`). A key keeps its
  replica while that replica is routable; removing one of N replicas moves about 1/N of
  the keys; failover follows the table, so every router agrees on a key's fallback.
- `cookie`: the first response sets a cookie naming the replica that served it, signed
  with HMAC-SHA256 so clients can't steer to arbitrary replicas. A valid cookie naming a
  routable replica sends the request there; otherwise the policy picks afresh and the
  cookie is replaced. Valid cookie values are computed once per snapshot, so checking one
  is a dict lookup (no per-request HMAC; str hashing is randomised per process, so the
  lookup leaks nothing useful about the signature through timing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator, Sequence

from router.balancing.base import Member, RequestContext
from router.balancing.group import KeyedPicker
from router.balancing.keyhash import hash64
from router.balancing.settings import StickyConfig
from router.models import Replica

_SIGN_CONTEXT = b"phala-router sticky v1:"
# Explanations depend on the client's region plan, not the key: a few thousand at most.
_LABEL_LIMIT = 4096


def sign_replica(key: bytes, replica_id: str) -> str:
    """The cookie value naming a replica: `<id>.<22 chars of base64url HMAC-SHA256>`."""
    mac = hmac.new(key, _SIGN_CONTEXT + replica_id.encode(), hashlib.sha256).digest()[:16]
    return f"{replica_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, or None."""
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


class KeyedSticky:
    """`header` and `ip` modes: the policy's own group, placed by its table on the key."""

    __slots__ = ("_header", "_inner", "_labels", "_mode")

    def __init__(self, inner: KeyedPicker, cfg: StickyConfig) -> None:
        self._inner = inner
        self._mode = cfg.mode
        self._header = cfg.header_name
        # "sticky <mode>: <the policy's explanation>", made once per distinct explanation
        # (a few per region plan) rather than formatted on every request.
        self._labels: dict[str, str] = {}

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        # Not a generator: the inner picker returns its (lazy) failover order directly, so a
        # request pays for one generator, not a stack of them.
        raw = ctx.client_ip if self._mode == "ip" else ctx.headers.get(self._header)
        if not raw:
            return self._inner.candidates(ctx)
        attempts = self._inner.keyed_candidates(ctx, hash64(raw))
        label = self._labels.get(ctx.explanation)
        if label is None:
            label = f"sticky {self._mode}: {ctx.explanation}"
            if len(self._labels) < _LABEL_LIMIT:
                self._labels[ctx.explanation] = label
        ctx.explanation = label
        return attempts


class CookieSticky:
    """`cookie` mode."""

    __slots__ = ("_by_value", "_inner", "_name", "_set_cookie")

    def __init__(
        self, inner: KeyedPicker, members: Sequence[Member], cfg: StickyConfig, key: bytes
    ) -> None:
        self._inner = inner
        self._name = cfg.cookie_name
        attributes = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if cfg.cookie_secure else "")
        self._by_value: dict[str, Replica] = {}
        self._set_cookie: dict[str, tuple[str, str]] = {}
        for member in members:
            value = sign_replica(key, member.replica.id)
            self._by_value[value] = member.replica
            self._set_cookie[member.replica.id] = (value, f"{self._name}={value}{attributes}")

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        presented = cookie_value(ctx.headers.get("Cookie"), self._name)
        pinned = self._by_value.get(presented) if presented else None
        slot: int | None = None  # where our Set-Cookie sits in ctx.response_headers

        def remember(replica: Replica) -> None:
            # Called as each candidate is handed out: the engine reads the response headers
            # only after an attempt succeeds, so the cookie names the replica that served.
            nonlocal slot
            value, header = self._set_cookie[replica.id]
            if value == presented:
                if slot is not None:
                    ctx.response_headers.pop(slot)
                    slot = None
                return
            if slot is None:
                slot = len(ctx.response_headers)
                ctx.response_headers.append(("Set-Cookie", header))
            else:
                ctx.response_headers[slot] = ("Set-Cookie", header)

        if pinned is not None:
            ctx.explanation = f"sticky cookie -> {pinned.id}"
            remember(pinned)
            yield pinned
            # Only reached when the pinned replica failed: fail over by the policy.
            failed_over = False
            for replica in self._inner.candidates(ctx):
                if replica.id == pinned.id:
                    continue
                if not failed_over:
                    failed_over = True
                    ctx.explanation = f"sticky cookie -> {pinned.id} failed; {ctx.explanation}"
                remember(replica)
                yield replica
            return
        started = False
        for replica in self._inner.candidates(ctx):
            if not started:
                started = True
                reason = "invalid or stale" if presented else "none"
                ctx.explanation = f"sticky cookie ({reason}): {ctx.explanation}"
            remember(replica)
            yield replica
