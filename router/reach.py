"""How to reach a replica: shared by the data plane and the control plane's probes.

The URL keeps the replica's host name, so aiohttp sends it as Host and TLS SNI and keys its
connection pool by it (replicas behind one gateway address never share connections). Only
the dial address changes: `discovery.connect_to` maps host patterns to `IP:PORT`, like
curl's --connect-to; everything else resolves normally.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    peer_check: PeerCheck | None = None,
    **extra: Any,
) -> aiohttp.TCPConnector:
    """`peer_check` checks every new connection
    before a request is written on it (RA-TLS)."""
    if peer_check is not None:
        extra["peer_check"] = peer_check
        connector_class: type[aiohttp.TCPConnector] = CheckedConnector
    else:
        connector_class = aiohttp.TCPConnector
    return connector_class(
        resolver=ConnectToResolver(ConnectTo(connect_to)),
        ssl=tls,
        limit=limit,
        limit_per_host=limit_per_host,
        keepalive_timeout=keepalive_timeout,
        ttl_dns_cache=10,
        **extra,
    )


# (replica host, port, leaf DER or None for plain TCP) -> None when attested, else a reason.
# -- attested connections (attestation.connection: ra-tls) ---------------------------------
#
# Every new upstream TLS connection is checked before any request byte is written: the
# engines' connect step and the health checker's connector call a `PeerCheck` with the
# peer's leaf certificate (DER); a refusal closes the connection, sends nothing, and fails the
# attempt as a TLS failure (retried elsewhere). The check is the RA-TLS gate
# (`router.attestation.ratls_gate`), handed in by the composition root as a plain callable,
# so the data plane never imports the control plane. Host name and CA checks are replaced by
# the quote; with `attestation.kms_root` pinned, OpenSSL also checks the chain to that root.


class UpstreamTLS(Protocol):
    """upstream_tls settings (`router.proxy.settings.UpstreamTLSConfig`)."""

    @property
    def verify(self) -> bool: ...
    @property
    def ca_file(self) -> Path | None: ...


PeerCheck = Callable[[str, int, bytes | None], Awaitable[str | None]]


@dataclass(frozen=True, eq=False)
class AttestedReach:
    """How one app's replicas are reached under `attestation.connection: ra-tls` when
    several apps share the engine: that app's gate checks each new connection, with a TLS
    context that checks no host name (the quote does). The engines key the app's upstream
    connections by this object (identity), so a connection checked for one app, or made for
    an app without RA-TLS, is never handed to another app's requests."""

    app: str
    check: PeerCheck
    tls: ssl.SSLContext


class PeerRefused(ssl.SSLError):
    """The TLS session does not end in the attested replica: a TLS failure before sending."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"RA-TLS refused: {reason}")
        self.reason = reason


def peer_leaf(transport: asyncio.BaseTransport | None) -> bytes | None:
    """The DER leaf the peer proved it holds the key of, or None (no TLS)."""
    if transport is None:
        return None
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der: bytes | None = sslobj.getpeercert(binary_form=True)
    return der


class CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector with the RA-TLS check on every new connection, before aiohttp
    writes the request on it. A refusal surfaces as ClientConnectorSSLError (kind `tls`)."""

    def __init__(self, peer_check: PeerCheck, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._peer_check = peer_check

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        proto = await super()._create_connection(req, traces, timeout)
        host, port = req.url.raw_host or "", req.url.port or 0
        try:
            reason = await self._peer_check(host, port, peer_leaf(proto.transport))
        except BaseException:
            proto.close()
            raise
        if reason is not None:
            proto.close()
            raise aiohttp.ClientConnectorSSLError(req.connection_key, PeerRefused(reason))
        return proto


def ra_tls_context(kms_root: Path | None = None) -> ssl.SSLContext:
    """No host-name check; the chain is checked only against a pinned KMS root."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if kms_root is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=str(kms_root))
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


def upstream_context(
    upstream_tls: UpstreamTLS, ra_tls: bool = False, kms_root: Path | None = None
) -> ssl.SSLContext:
    """The TLS context of every connection to replicas (traffic and health checks)."""
    if ra_tls:
        return ra_tls_context(kms_root)
    return client_ssl_context(upstream_tls.verify, upstream_tls.ca_file)
