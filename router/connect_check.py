"""Attested upstream connections, as the data plane and the health checker see them.

With `attestation.connection: ra-tls` every new upstream TLS connection is checked before any
request byte is written: the engines' connect step and the health checker's connector call a
`PeerCheck` with the peer's leaf certificate (DER), and on a refusal close the connection,
send nothing, and fail the attempt as a TLS failure (retried elsewhere: nothing was sent).
The check itself is the RA-TLS gate (`router.attestation.ratls_gate`), handed in by the
composition root as a plain callable, so the data plane never imports the control plane.

Host name and CA checks are replaced by the quote (the gateway passthrough host is not in
the leaf's names and the leaf is signed by a per-app CA): the session is authenticated by the
attestation bound to its key. With `attestation.kms_root` pinned, OpenSSL also checks that
the chain leads to that KMS root.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from router.proxy.settings import UpstreamTLSConfig
from router.reach import client_ssl_context

# (replica host, port, leaf DER or None for plain TCP) -> None when attested, else a reason.
PeerCheck = Callable[[str, int, bytes | None], Awaitable[str | None]]


class PeerRefused(ssl.SSLError):
    """The TLS session does not end in the attested replica: a TLS failure before sending."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"RA-TLS refused: {reason}")
        self.reason = reason


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
    upstream_tls: UpstreamTLSConfig, ra_tls: bool = False, kms_root: Path | None = None
) -> ssl.SSLContext:
    """The TLS context of every connection to replicas (traffic and health checks)."""
    if ra_tls:
        return ra_tls_context(kms_root)
    return client_ssl_context(upstream_tls.verify, upstream_tls.ca_file)


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
