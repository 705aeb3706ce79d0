"""Which app a request belongs to, from its host name and path: the router's virtual hosts.

A route is a host name, exact (`api.example.com`) or a wildcard (`*.example.com`, any depth
below `example.com`, never `example.com` itself), with an optional path prefix
(`api.example.com/v2`). Precedence, most specific first, as nginx and Envoy order them:

1. an exact host, its longest matching prefix;
2. the longest matching wildcard suffix, its longest matching prefix;
3. the default app, if one is set; otherwise no app (the engines answer 421).

Pure (no I/O), built once per config. A lookup is one dict get on the host, plus one dict get
per label of the host when that misses, so its cost is flat in the number of apps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_LABEL = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
ROUTE_HELP = (
    "a host name (api.example.com), a wildcard (*.example.com), "
    "optionally followed by a path prefix (api.example.com/v2)"
)


@dataclass(frozen=True, order=True)
class HostRoute:
    """One entry of an app's `hosts:` list, normalised."""

    host: str  # lower case, no trailing dot; `*.suffix` for a wildcard
    prefix: str = ""  # "" (every path) or `/a/b` without a trailing slash

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def __str__(self) -> str:
        return self.host + self.prefix


def parse_route(text: str) -> HostRoute:
    """`API.example.com/v2/` -> HostRoute("api.example.com", "/v2"); ValueError otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a host route is required: {ROUTE_HELP}")
    raw = text.strip()
    host, slash, path = raw.partition("/")
    host = host.lower().rstrip(".")
    name = host[2:] if host.startswith("*.") else host
    if "://" in raw or ":" in host or not _NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not {ROUTE_HELP}")
    prefix = ("/" + path).rstrip("/") if slash else ""
    if prefix and not _PATH.fullmatch(prefix):
        raise ValueError(f"{text!r} has a path prefix that is not a plain URL path, e.g. /v2")
    return HostRoute(host, prefix)


def normalise_host(value: str) -> str:
    """A Host header or SNI name -> the name routes are keyed by (no port, lower case)."""
    host = value.lower()
    if ":" in host:
        if host.startswith("["):  # an IPv6 literal, maybe with a port
            return host[: host.find("]") + 1] if "]" in host else host
        if host.count(":") == 1:
            host = host.partition(":")[0]
    if host.endswith(".") or " " in host:
        host = host.strip().rstrip(".")
    return host


def _prefix_matches(prefix: str, path: str) -> bool:
    if not prefix:
        return True
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] in "/?")


def _best(entries: tuple[tuple[str, T], ...], path: str) -> T | None:
    for prefix, value in entries:  # longest prefix first
        if _prefix_matches(prefix, path):
            return value
    return None


class RouteConflict(ValueError):
    """Two apps claim the same host and prefix."""


class HostTable(Generic[T]):
    """Maps (host, path) to a value (an app). Built once; lookups never allocate a table."""

    def __init__(self, routes: Iterable[tuple[HostRoute, T]], default: T | None = None) -> None:
        owners: dict[HostRoute, T] = {}
        for route, value in routes:
            if route in owners and owners[route] != value:
                raise RouteConflict(
                    f"{route} is claimed by both {owners[route]} and {value}; "
                    "a host and prefix may belong to one app only"
                )
            owners[route] = value
        self.default = default
        # Hosts served whole by one app (no prefixes): the common case, one dict get.
        prefixed = {r.host for r in owners if r.prefix}
        self._whole = {
            r.host: v
            for r, v in owners.items()
            if not r.wildcard and not r.prefix and r.host not in prefixed
        }
        self._exact = _group((r.host, r.prefix, v) for r, v in owners.items() if not r.wildcard)
        self._wild = _group((r.host[2:], r.prefix, v) for r, v in owners.items() if r.wildcard)

    def items(self) -> Iterable[tuple[HostRoute, T]]:
        """Every route and its value, then the default (under an empty route)."""
        for host, entries in self._exact.items():
            yield from ((HostRoute(host, prefix), value) for prefix, value in entries)
        for suffix, entries in self._wild.items():
            yield from ((HostRoute("*." + suffix, prefix), value) for prefix, value in entries)
        if self.default is not None:
            yield HostRoute(""), self.default

    def lookup(self, host: str, path: str = "/") -> T | None:
        """The app for a normalised host name and a request path; None: no app, no default."""
        whole = self._whole.get(host)
        if whole is not None:
            return whole
        entries = self._exact.get(host)
        if entries is not None:
            found = _best(entries, path)
            if found is not None:
                return found
        if self._wild:
            dot = host.find(".")
            while dot != -1:
                entries = self._wild.get(host[dot + 1 :])
                if entries is not None:
                    found = _best(entries, path)
                    if found is not None:
                        return found
                dot = host.find(".", dot + 1)
        return self.default

    def reachable(self, host: str) -> frozenset[T]:
        """Every app some path under `host` may reach: what a TLS connection whose SNI is
        `host` may be used for (a Host naming any other app is misdirected)."""
        levels = [self._exact.get(host, ())]
        dot = host.find(".")
        while dot != -1:
            levels.append(self._wild.get(host[dot + 1 :], ()))
            dot = host.find(".", dot + 1)
        found: set[T] = set()
        for entries in levels:
            found.update(value for _, value in entries)
            if any(not prefix for prefix, _ in entries):
                return frozenset(found)  # a catch-all: nothing less specific is reachable
        if self.default is not None:
            found.add(self.default)
        return frozenset(found)


def _group(items: Iterable[tuple[str, str, T]]) -> dict[str, tuple[tuple[str, T], ...]]:
    """host -> its (prefix, value) pairs, longest prefix first."""
    grouped: dict[str, list[tuple[str, T]]] = {}
    for name, prefix, value in items:
        grouped.setdefault(name, []).append((prefix, value))
    return {
        name: tuple(sorted(entries, key=lambda e: len(e[0]), reverse=True))
        for name, entries in grouped.items()
    }
