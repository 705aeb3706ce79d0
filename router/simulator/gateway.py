"""The simulated dstack-gateway: one listener that routes each connection by host name.

`<instance_id>-<port>.<base_domain>` goes to that replica's app (or, for the guest agent
port, to its guest agent); `<app_id>-<port>.<base_domain>` goes to any running replica,
per connection, as the real gateway does. With TLS the name is the SNI (the gateway holds
a wildcard certificate for `*.<base_domain>` and ends TLS); in plain HTTP it is the Host
header of the first request on the connection. After routing, bytes are piped both ways at
the protocol level, so streaming, chunked bodies and WebSockets pass untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
from typing import cast

from router.simulator.state import SimContext, SimReplica

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
HIGH_WATER = 256 * 1024


class Gateway:
    def __init__(self, ctx: SimContext, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.ctx = ctx
        self._host = host
        self._port = port
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Transport] = set()
        self._rotation = itertools.count()
        self.port = 0
        # Replicas listen on the simulator's host; dial them there (a wildcard binds loopback).
        self.replica_host = "127.0.0.1" if host in {"", "0.0.0.0"} else host
        if tls is not None:
            tls.sni_callback = _remember_sni

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ClientSide(self), self._host, self._port, ssl=self._tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._connections):
            transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def route(self, host: str) -> tuple[SimReplica, int | None] | None:
        """Host name -> (replica, local port or None when its process is down)."""
        name = host.lower().rstrip(".")
        if ":" in name:
            name = name.rsplit(":", 1)[0]
        label, dot, domain = name.partition(".")
        if not dot or domain != self.ctx.base_domain:
            return None
        ident, _, port_text = label.partition("-")
        port_text = port_text.rstrip("sg")  # s/g suffixes: TLS passthrough / gRPC; same app
        port = int(port_text) if port_text.isdigit() else 80
        replica = self.ctx.replicas.get(ident)
        if replica is None and ident in self.ctx.apps:
            replica = self._any_running(ident)
        if replica is None:
            return None
        if port == self.ctx.app_port:
            return replica, replica.app_port
        if port == self.ctx.guest_agent_port:
            return replica, replica.agent_port
        return None

    def _any_running(self, app_id: str) -> SimReplica | None:
        running = [r for r in self.ctx.replicas_of(app_id) if r.up and r.mode == "up"]
        return running[next(self._rotation) % len(running)] if running else None

    def track(self, transport: asyncio.Transport, alive: bool) -> None:
        if alive:
            self._connections.add(transport)
        else:
            self._connections.discard(transport)


def _remember_sni(
    sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
) -> None:
    sslobj.sim_sni = name  # type: ignore[union-attr]  # read back in connection_made


class _ClientSide(asyncio.Protocol):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._transport: asyncio.Transport | None = None
        self._upstream: _UpstreamSide | None = None
        self._buffer = bytearray()
        self._routed = False
        self._tls = False
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, don't assert.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._gateway.track(transport, True)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self._tls = True
            self._dispatch(getattr(sslobj, "sim_sni", None))

    def data_received(self, data: bytes) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.write(data)
            return
        self._buffer += data
        if len(self._buffer) > HIGH_WATER and self._transport is not None:
            self._transport.pause_reading()  # still connecting: hold the client
        if not self._routed:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                self._dispatch(_host_header(bytes(self._buffer[:end])))
            elif len(self._buffer) > MAX_HEAD:
                self._refuse(431, "request head too large")

    def _dispatch(self, host: str | None) -> None:
        self._routed = True
        target = self._gateway.route(host) if host else None
        if target is None:
            self._refuse(404, f"no replica for host {host!r}")
            return
        replica, port = target
        if replica.mode == "reset":
            assert self._transport is not None
            self._transport.abort()
        elif replica.mode == "hang":
            pass  # accept, never answer
        elif port is None:
            self._refuse(502, f"replica {replica.instance_id} is not running")
        else:
            self._connecting = asyncio.ensure_future(self._connect(port))

    async def _connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: _UpstreamSide(self), self._gateway.replica_host, port
            )
        except OSError:
            self._refuse(502, "the replica refused the connection")

    def upstream_ready(self, upstream: _UpstreamSide) -> None:
        assert upstream.transport is not None
        assert self._transport is not None
        if self._transport.is_closing():  # the client left while we were connecting
            upstream.transport.close()
            return
        self._upstream = upstream
        if self._buffer:
            upstream.transport.write(bytes(self._buffer))
            self._buffer.clear()
        self._transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def upstream_eof(self) -> bool:
        if self._transport is not None and self._transport.can_write_eof():
            self._transport.write_eof()
            return True
        self.close()
        return False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _refuse(self, status: int, reason: str) -> None:
        """TLS: close the connection; plain HTTP: an error answer, then close."""
        assert self._transport is not None
        if not self._tls and not self._transport.is_closing():
            body = json.dumps({"error": reason}).encode()
            phrase = {404: "Not Found", 431: "Request Header Fields Too Large"}.get(
                status, "Bad Gateway"
            )
            self._transport.write(
                f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        self._transport.close()

    def eof_received(self) -> bool:
        # HTTP servers (aiohttp among them) drop a connection on a half-close, so the EOF is
        # not passed on: the client waits for its answer and the replica closes when done.
        return self._routed and not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._gateway.track(self._transport, False)
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.close()

    def pause_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, client: _ClientSide) -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._client.upstream_ready(self)

    def data_received(self, data: bytes) -> None:
        self._client.write(data)

    def eof_received(self) -> bool:
        return self._client.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.close()

    def pause_writing(self) -> None:
        if self._client._transport is not None:
            self._client._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._client._transport is not None:
            self._client._transport.resume_reading()


def _host_header(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            return value.strip().decode("latin-1")
    return None
