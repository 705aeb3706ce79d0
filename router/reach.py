"""How to reach a replica: shared by the data plane and the control plane's probes.

The URL keeps the replica's host name, so aiohttp sends it as Host and TLS SNI and keys its
connection pool by it (replicas behind one gateway address never share connections). Only
the dial address changes: `discovery.connect_to` maps host patterns to `IP:PORT`, like
curl's --connect-to; everything else resolves normally.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from router.settings_types import split_host_port


class ConnectTo:
    """Host pattern -> (ip, port). Exact names win over `*.suffix` wildcards; among
    wildcards the longest suffix wins."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._exact: dict[str, tuple[str, int]] = {}
        self._suffixes: list[tuple[str, tuple[str, int]]] = []
        for pattern, target in mapping.items():
            address = split_host_port(target)
            if pattern.startswith("*."):
                self._suffixes.append((pattern[1:].lower(), address))
            else:
                self._exact[pattern.lower()] = address
        self._suffixes.sort(key=lambda item: -len(item[0]))

    def lookup(self, host: str) -> tuple[str, int] | None:
        name = host.lower().rstrip(".")
        if name in self._exact:
            return self._exact[name]
        for suffix, address in self._suffixes:
            if name.endswith(suffix):
                return address
        return None

    def __bool__(self) -> bool:
        return bool(self._exact or self._suffixes)


class ConnectToResolver(AbstractResolver):
    """aiohttp resolver that dials `connect_to` targets and resolves everything else."""

    def __init__(self, connect_to: ConnectTo, fallback: AbstractResolver | None = None) -> None:
        self._connect_to = connect_to
        self._fallback = fallback or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        target = self._connect_to.lookup(host)
        if target is None:
            return await self._fallback.resolve(host, port, family)
        ip, target_port = target
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [
            ResolveResult(
                hostname=host,
                host=ip,
                port=target_port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        await self._fallback.close()


def client_ssl_context(verify: bool = True, ca_file: Path | None = None) -> ssl.SSLContext:
    """TLS to replicas: verification on unless explicitly disabled; `ca_file` adds a CA."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def make_connector(
    connect_to: Mapping[str, str],
    tls: ssl.SSLContext,
    *,
    limit: int = 0,
    limit_per_host: int = 0,
    keepalive_timeout: float = 60.0,
    **extra: Any,
) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(
        resolver=ConnectToResolver(ConnectTo(connect_to)),
        ssl=tls,
        limit=limit,
        limit_per_host=limit_per_host,
        keepalive_timeout=keepalive_timeout,
        ttl_dns_cache=10,
        **extra,
    )
