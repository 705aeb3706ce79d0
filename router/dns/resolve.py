"""Replica host name -> addresses, with dnspython's async resolver.

The nameservers are configurable (`dns.nameservers`) so tests, and operators with a split
horizon, point it at a server of their choice. A host whose lookup fails keeps its last
known addresses (the caller merges), so a resolver hiccup never removes records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from router.dns.records import ip_literal
from router.dns.settings import parse_nameserver

log = logging.getLogger(__name__)

# `discovery.connect_to` lookup: host -> (ip, port) the router dials instead, or None.
Pinned = Callable[[str], tuple[str, int] | None]


@dataclass(slots=True)
class Resolution:
    addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # host -> why its lookup failed


def make_resolver(nameservers: Iterable[str], timeout: float) -> dns.asyncresolver.Resolver:
    servers = [parse_nameserver(n) for n in nameservers]
    resolver = dns.asyncresolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None  # the router re-resolves on purpose; honour the TTL upstream
    return resolver


async def _lookup(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[str, ...]:
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        found += [rdata.to_text() for rdata in answer]
    return tuple(found)


async def resolve_addresses(
    hosts: Iterable[str],
    resolver: dns.asyncresolver.Resolver,
    *,
    pinned: Pinned | None = None,
) -> Resolution:
    """Addresses of each host: IP literals as they are, `connect_to` targets when pinned,
    else A and AAAA from the resolver."""
    result = Resolution()
    pending: list[tuple[str, str]] = []  # (host, the name to look up for it)
    for host in sorted(set(hosts)):
        target = pinned(host) if pinned is not None else None
        name = target[0] if target is not None else host
        literal = ip_literal(name)
        if literal is not None:
            result.addresses[host] = (str(literal),)
        elif name == "localhost":
            result.addresses[host] = ("127.0.0.1",)
        else:
            pending.append((host, name))
    outcomes = await asyncio.gather(
        *(_lookup(resolver, name) for _, name in pending), return_exceptions=True
    )
    for (host, _), outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, dns.exception.DNSException | OSError):
                raise outcome
            result.errors[host] = f"{type(outcome).__name__}: {outcome}"
        else:
            result.addresses[host] = outcome
    return result


def merge(previous: Mapping[str, tuple[str, ...]], fresh: Resolution) -> dict[str, tuple[str, ...]]:
    """Fresh answers win; a failed host keeps what it had."""
    merged = dict(fresh.addresses)
    for host in fresh.errors:
        if host in previous:
            merged[host] = previous[host]
    return merged
