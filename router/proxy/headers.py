"""Header rules shared by every engine: hop-by-hop removal, forwarding headers, trust.

Pure functions over header lists, so both engines apply exactly the same rules.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

# RFC 9110 section 7.6.1, plus the legacy names proxies still see in the wild.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
VIA = "1.1 phala-router"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Client-sent headers that only a trusted proxy may set.
FORWARDING = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)

# The request id: believed from a trusted peer (a load balancer in front that already
# assigned one), generated otherwise; sent upstream and back to the client by the engines,
# which drop any other X-Request-Id on the way in and out.
REQUEST_ID = "X-Request-Id"
_REQUEST_ID_SHAPE = re.compile(r"[\x21-\x7e]{1,128}")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def edge_names(*groups: Iterable[str | None]) -> frozenset[str]:
    """Lower-cased names of the headers only a trusted edge may set (`proxy.edge_headers`
    plus the geo routing headers): a client talking to the router directly could otherwise
    claim any address or country to the replica's app."""
    return frozenset(name.lower() for group in groups for name in group if name)


class TrustedProxies:
    """The peers whose forwarding headers are believed (`proxy.trusted_proxies`)."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in cidrs
        )
        # The same few peers call again and again: cache the verdict per address.
        self.contains = lru_cache(maxsize=4096)(self._contains)

    def _contains(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)

    def client_address(self, peer: str, xff_values: Sequence[str]) -> str:
        """The client as seen by the first untrusted hop: the peer itself unless the peer is
        trusted, then the right-most X-Forwarded-For entry that is not a trusted proxy."""
        if not self.contains(peer) or not xff_values:
            return peer
        hops = [h.strip() for value in xff_values for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.contains(hop):
                return hop
        return hops[0] if hops else peer


def _new_id_source() -> None:
    # A random prefix per process (again in every forked worker) and a counter: unique like
    # a random id, at a tenth of the cost of reading os.urandom for every request.
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count(1)


_id_prefix = ""
_id_counter = itertools.count(1)
_new_id_source()
os.register_at_fork(after_in_child=_new_id_source)


def request_id(given: str | None, trusted: bool) -> str:
    """This request's id: a trusted peer's well-formed X-Request-Id, else a new one (hex
    digits, unique across processes and restarts)."""
    if trusted and given and _REQUEST_ID_SHAPE.fullmatch(given):
        return given
    return f"{_id_prefix}{next(_id_counter):x}"


def connection_tokens(values: Iterable[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def forward_request_headers(
    headers: Iterable[tuple[str, str]],
    *,
    peer: str,
    peer_trusted: bool,
    scheme: str,
    host: str | None,
    edge: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """The headers to send upstream: hop-by-hop and Host removed (the client library sets
    Host from the replica URL), forwarding headers rewritten, Via appended; the `edge`
    headers (lower-case names) and forwarding headers are dropped unless the peer is trusted."""
    items = list(headers)
    named = connection_tokens(v for k, v in items if k.lower() == "connection")
    out: list[tuple[str, str]] = []
    xff: list[str] = []
    proto = fwd_host = None
    via: list[str] = []
    for key, value in items:
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in named or lower in ("host", "x-request-id"):
            continue
        if lower in edge and not peer_trusted:
            continue
        if lower in FORWARDING:
            if not peer_trusted:
                continue
            if lower == "x-forwarded-for":
                xff.append(value)
                continue
            if lower == "x-forwarded-proto":
                proto = value
                continue
            if lower == "x-forwarded-host":
                fwd_host = value
                continue
        if lower == "via":
            via.append(value)
            continue
        out.append((key, value))
    xff.append(peer)
    out.append(("X-Forwarded-For", ", ".join(xff)))
    out.append(("X-Forwarded-Proto", proto or scheme))
    if fwd_host or host:
        out.append(("X-Forwarded-Host", fwd_host or host or ""))
    via.append(VIA)
    out.append(("Via", ", ".join(via)))
    return out


def forward_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers for the client: hop-by-hop removed, Via appended."""
    items = list(headers)
    named = connection_tokens(v for k, v in items if k.lower() == "connection")
    out = []
    via = []
    for key, value in items:
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in named or lower in ("content-length", "x-request-id"):
            continue
        if lower == "via":
            via.append(value)
            continue
        out.append((key, value))
    via.append(VIA)
    out.append(("Via", ", ".join(via)))
    return out
