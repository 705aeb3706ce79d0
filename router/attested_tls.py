"""`phala-router attested-tls`: the replica side of `attestation.connection: ra-tls`.

Runs inside the CVM as a service of the app's compose (mounting `/var/run/dstack.sock`).
It asks the dstack guest agent for an RA-TLS key (`dstack-sdk` `get_tls_key(usage_ra_tls=True,
usage_server_auth=True)`: a fresh P-256 key, its certificate carrying a quote that binds it),
ends TLS with it on one port, and relays the plain bytes to the app (HTTP and WebSocket
pass unchanged: it is a byte relay after TLS). It asks for a new key every `renew` seconds;
new handshakes then use it. The key never leaves the process; it exposes nothing else.
Publish its port through the gateway's TLS passthrough (`<instance_id>-<port>s.<base>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from router.tls import ServerTLS, new_server_context

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:8443"
DEFAULT_RENEW = 12 * 3600.0


async def fetch_tls_key(endpoint: str | None, timeout: float = 10.0) -> tuple[str, list[str]]:
    """(key PEM, certificate chain PEMs leaf first) from the dstack guest agent."""
    try:
        from dstack_sdk import AsyncDstackClient
    except ImportError:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "attested-tls needs dstack-sdk: pip install 'phala-router[quote-server]'"
        ) from None
    async with AsyncDstackClient(endpoint, timeout=timeout) as client:
        answer = await client.get_tls_key(usage_ra_tls=True, usage_server_auth=True)
    return answer.key, list(answer.certificate_chain)


def load_key(context: ssl.SSLContext, key_pem: str, chain: list[str]) -> None:
    """Make `context` serve this key from its next handshake (files only for a moment,
    in a private temporary directory: `ssl` loads keys from files)."""
    with tempfile.TemporaryDirectory(prefix="attested-tls-") as folder:
        key_path, chain_path = Path(folder) / "key.pem", Path(folder) / "chain.pem"
        key_path.touch(mode=0o600)
        key_path.write_text(key_pem)
        chain_path.write_text("".join(c if c.endswith("\n") else c + "\n" for c in chain))
        context.load_cert_chain(chain_path, key_path)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class AttestedTls:
    """The TLS listener and its relay to `upstream` (host, port)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        endpoint: str | None = None,
        renew: float = DEFAULT_RENEW,
    ) -> None:
        self.upstream = upstream
        self.endpoint = endpoint
        self.renew = renew
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.renewals = 0
        self._server: asyncio.Server | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        key, chain = await fetch_tls_key(self.endpoint)
        load_key(self.context, key, chain)
        self.renewals += 1
        log.info("attested-tls: serving a new RA-TLS key (renewal %d)", self.renewals)

    async def start(self, host: str, port: int) -> int:
        await self.refresh()  # no key, no listener: fail at start, not on the first client
        self._server = await asyncio.start_server(self._relay, host, port, ssl=self.context)
        self._renewer = asyncio.create_task(self._renew_forever())
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew)
            try:
                await self.refresh()
            except Exception as exc:  # keep serving the current key; try again next time
                log.warning("attested-tls: key renewal failed (%s); keeping the current key", exc)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("attested-tls: the app at %s:%d is unreachable: %s", *self.upstream, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                with contextlib.suppress(OSError, RuntimeError):
                    side.close()

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._server is not None:
            self._server.close()


async def serve(listen: tuple[str, int], upstream: tuple[str, int], **options: Any) -> None:
    """Run until cancelled (the CLI's entry point)."""
    sidecar = AttestedTls(upstream, **options)
    port = await sidecar.start(*listen)
    log.info("attested-tls on %s:%d -> %s:%d", listen[0], port, *upstream)
    try:
        await asyncio.Event().wait()
    finally:
        await sidecar.stop()


class DstackServerTLS(ServerTLS):
    """`listen_tls.ra_tls`: the router's own listener serves an RA-TLS key from dstack, so a
    client can verify the router itself. Same interface as the file-based ServerTLS: one
    context for the listener's life, a renewed key loaded into it for new handshakes."""

    def __init__(self, endpoint: str | None, renew: float = DEFAULT_RENEW) -> None:
        # No files to read: the key comes from dstack in refresh(), before the listener opens.
        self.endpoint = endpoint
        self.renew = renew
        self.context = new_server_context()
        self.not_after = None
        self.spki_sha256: str | None = None

    async def refresh(self) -> None:
        key, chain = await fetch_tls_key(self.endpoint)
        load_key(self.context, key, chain)
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        self.not_after = leaf.not_valid_after_utc.timestamp()
        # Shown in /status: the key a client should find in the certificate it verifies.
        self.spki_sha256 = hashlib.sha256(
            leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ).hexdigest()
        log.info("listen_tls: serving a new RA-TLS key from dstack")

    def reload(self) -> bool:
        return False  # nothing to re-read: the key is renewed on its own schedule

    async def watch(self, interval: float = 0.0) -> None:
        while True:
            await asyncio.sleep(self.renew)
            try:
                await self.refresh()
            except Exception as exc:  # keep serving the current key; try again next time
                log.warning("listen_tls: RA-TLS key renewal failed (%s); keeping the key", exc)
