"""TLS on the router's own listener, with certificate reloads that drop nothing.

The listening socket keeps one SSLContext for its whole life; a reload loads the new chain
into that same context, so new handshakes get the new certificate while open connections
keep theirs. A new chain is first loaded into a scratch context: a broken file is refused
with a log line and the old certificate stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509

log = logging.getLogger(__name__)


# The server name a client sent (SNI), kept on its ssl.SSLObject by the context's callback:
# the standard library offers no other way to read it on the server side.
SNI_ATTRIBUTE = "phala_router_sni"


def _remember_sni(ssl_object: object, name: str | None, _context: ssl.SSLContext) -> None:
    with contextlib.suppress(AttributeError):
        setattr(ssl_object, SNI_ATTRIBUTE, name)


def server_name(ssl_object: object) -> str | None:
    """The SNI a TLS client sent on this connection; None on plain HTTP or without SNI."""
    name = getattr(ssl_object, SNI_ATTRIBUTE, None)
    return name if isinstance(name, str) else None


def new_server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.sni_callback = _remember_sni
    return context


class ServerTLS:
    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = new_server_context()
        self.context.load_cert_chain(str(cert_file), str(key_file))
        self._stamp = self._mtimes()
        self.not_after = _not_after(cert_file)

    def expiry(self) -> dict[str, float]:
        """When the served certificate expires (Unix time), keyed by "tls", for metrics."""
        return {"tls": self.not_after} if self.not_after is not None else {}

    def _mtimes(self) -> tuple[float, float]:
        try:
            return (os.stat(self.cert_file).st_mtime_ns, os.stat(self.key_file).st_mtime_ns)
        except OSError:
            return (0, 0)

    def reload(self) -> bool:
        """Load the files again; True when the served certificate changed."""
        self._stamp = self._mtimes()
        try:
            new_server_context().load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "listen_tls: new certificate %s refused (%s); still serving the previous one",
                self.cert_file,
                exc,
            )
            return False
        self.context.load_cert_chain(str(self.cert_file), str(self.key_file))
        self.not_after = _not_after(self.cert_file)
        log.info("listen_tls: certificate reloaded from %s", self.cert_file)
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Reload when either file changes (polling: works on every filesystem)."""
        while True:
            await asyncio.sleep(interval)
            if self._mtimes() != self._stamp:
                self.reload()


def _not_after(cert_file: Path) -> float | None:
    """The expiry of the first (leaf) certificate in a PEM chain, as Unix time."""
    try:
        leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("listen_tls: cannot read the expiry of %s: %s", cert_file, exc)
        return None
    return leaf.not_valid_after_utc.timestamp()
