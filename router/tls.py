"""TLS on the router's own listener, with certificate reloads that drop nothing.

The listening socket keeps one SSLContext for its whole life; a reload loads the new chain
into that same context, so new handshakes get the new certificate while open connections
keep theirs. A new chain is first loaded into a scratch context: a broken file is refused
with a log line and the old certificate stays.

Certificates by host name (`listen_tls.certificates`, `apps[].tls`) each have a context of
their own; the listener's context picks one in its SNI callback by switching the
connection's context (the only way the standard library offers), and serves its own
certificate to clients without SNI or with a name no other certificate covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from router.apps.certificates import ServedCertificate
from router.apps.hosts import HostTable, normalise_host, parse_route
from router.errors import ConfigError

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


class _CertificateFiles:
    """One certificate chain and key file pair, loaded into one SSLContext for its life."""

    def __init__(self, label: str, cert_file: Path, key_file: Path) -> None:
        self.label = label
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = new_server_context()
        try:
            self.context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{label}: cert_file {str(cert_file)!r} and key_file {str(key_file)!r} do not "
                f"load as a PEM certificate chain and its key ({exc})"
            ) from None
        self.stamp = self.mtimes()
        self.not_after = _not_after(cert_file)

    def mtimes(self) -> tuple[float, float]:
        try:
            return (os.stat(self.cert_file).st_mtime_ns, os.stat(self.key_file).st_mtime_ns)
        except OSError:
            return (0, 0)

    def reload(self) -> bool:
        """Load the files again into the same context; True when they loaded."""
        self.stamp = self.mtimes()
        try:
            new_server_context().load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "listen_tls: new certificate %s (%s) refused (%s); still serving the previous one",
                self.cert_file,
                self.label,
                exc,
            )
            return False
        self.context.load_cert_chain(str(self.cert_file), str(self.key_file))
        self.not_after = _not_after(self.cert_file)
        log.info("listen_tls: certificate reloaded from %s (%s)", self.cert_file, self.label)
        return True


class ServerTLS:
    """The listener's certificates: `cert_file` for clients without SNI or with a name no
    other certificate covers, and `by_host` (listen_tls.certificates, apps[].tls) chosen by
    the SNI the client sends (exact name first, then the longest wildcard)."""

    # Certificates chosen by SNI; none by default (and for DstackServerTLS).
    _by_host: tuple[_CertificateFiles, ...] = ()
    _first_hosts: tuple[str, ...] = ()  # each one's first host name: its metric label

    def __init__(
        self, cert_file: Path, key_file: Path, by_host: Sequence[ServedCertificate] = ()
    ) -> None:
        self._default = _CertificateFiles("listen_tls", cert_file, key_file)
        self.cert_file, self.key_file = cert_file, key_file
        self.context = self._default.context
        self.not_after = self._default.not_after
        self._by_host = tuple(_CertificateFiles(c.label, c.cert_file, c.key_file) for c in by_host)
        self._first_hosts = tuple(c.hosts[0] for c in by_host)
        routes = [
            (parse_route(host), files)
            for served, files in zip(by_host, self._by_host, strict=True)
            for host in served.hosts
        ]
        self._table: HostTable[_CertificateFiles] = HostTable(routes)
        if self._by_host:
            self.context.sni_callback = self._choose_certificate

    def _choose_certificate(
        self, ssl_object: ssl.SSLObject, name: str | None, context: ssl.SSLContext
    ) -> None:
        _remember_sni(ssl_object, name, context)
        if name is None:
            return
        try:
            chosen = self._table.lookup(normalise_host(name))
            if chosen is not None:
                ssl_object.context = chosen.context
        except Exception:  # never fail a handshake for a bug here: the default serves
            log.exception("listen_tls: choosing the certificate for %r failed", name)

    def expiry(self) -> dict[str, float]:
        """When each served certificate expires (Unix time), keyed by listener name ("tls",
        then "tls:HOST" by the first host name of each certificate chosen by SNI)."""
        out = {"tls": self.not_after} if self.not_after is not None else {}
        for files, host in zip(self._by_host, self._first_hosts, strict=True):
            if files.not_after is not None:
                out[f"tls:{host}"] = files.not_after
        return out

    def reload(self) -> bool:
        """Load every file again; True when the default certificate loaded."""
        for files in self._by_host:
            files.reload()
        loaded = self._default.reload()
        self.not_after = self._default.not_after
        return loaded

    async def watch(self, interval: float = 2.0) -> None:
        """Reload a certificate when either of its files changes (polling: works on every
        filesystem); the others are not touched."""
        while True:
            await asyncio.sleep(interval)
            for files in (self._default, *self._by_host):
                if files.mtimes() != files.stamp:
                    files.reload()
            self.not_after = self._default.not_after


def _not_after(cert_file: Path) -> float | None:
    """The expiry of the first (leaf) certificate in a PEM chain, as Unix time."""
    try:
        leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("listen_tls: cannot read the expiry of %s: %s", cert_file, exc)
        return None
    return leaf.not_valid_after_utc.timestamp()
