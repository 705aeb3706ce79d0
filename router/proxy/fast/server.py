"""The client side: one asyncio.Protocol per client connection, parsing with httptools.

Requests are queued in arrival order and served one at a time, so pipelined requests are
answered in order. A request head that breaks a rule (see `strict`) is answered with its
4xx after the requests before it, and the connection is closed: after a framing error the
router can no longer know where the next request starts. One timer per connection
(`timer.ConnectionTimer`, checked by the engine's one deadline sweep) enforces the
keep-alive idle timeout, the header timeout (slowloris), the gap allowed between body
chunks and the idle timeout of an upgraded tunnel.

The head limits hold on bytes received, not on completed lines: a head (or, inside a body,
trailers and chunk extensions that move it no further) past `MAX_HEAD_BYTES` gets 431
at once. Body bytes are handed to the request once per read, whatever the chunking. Bytes
sent after an Upgrade head wait, bounded, for the upstream's answer (the client is no
longer read meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from router.errors import ProxyError
from router.proxy.fast import wire
from router.proxy.fast.core import EngineCore
from router.proxy.fast.exchange import Exchange
from router.proxy.fast.outbox import Writer
from router.proxy.fast.strict import RequestHead, method_name, validate
from router.proxy.fast.timer import BODY, HEADER, IDLE, TUNNEL, ConnectionTimer
from router.proxy.fast.upstream import UpstreamConnection
from router.proxy.request_rules import (
    MAX_HEAD_BYTES,
    MAX_HEADER_BLOCK,
    MAX_HEADER_COUNT,
    MAX_REQUEST_LINE,
    bad_request,
    body_too_slow,
    check_declared_length,
    head_too_slow,
    headers_too_large,
    uri_too_long,
)
from router.tls import server_name

log = logging.getLogger(__name__)

# Reasons the client's socket is not being read (a bit each).
_UPSTREAM_FULL = 1
_BACKLOG = 2
_MAX_QUEUE = 16  # pipelined requests parsed ahead of the one being served


class ClientConnection(asyncio.Protocol, Writer):
    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.loop = core.pool.loop
        self.transport: asyncio.Transport | None = None
        self.outbox = core.pool.outbox
        self._pending = None
        self._pending_size = 0
        self._close_pending = False
        self.peer = ""
        self.trusted = False
        self.scheme = "http"
        self.sni: str | None = None  # the TLS server name the client sent
        self._body_parts: list[bytes] = []  # body bytes parsed in this read, not yet passed on
        # llhttp's body callback is the list's own append: a body of 1-byte chunks costs one
        # C call per chunk, and the request gets the read's bytes at once (_flush_body).
        self.on_body: Callable[[bytes], None] = self._body_parts.append
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.reading: Exchange | None = None  # the request whose body is being parsed
        self.upgrading: Exchange | None = None  # bytes after an Upgrade request go here
        self.tunnel: UpstreamConnection | None = None
        self.ignore_input = False  # after Connection: close or an error nothing more is read
        self.draining = False  # the engine is stopping: close after the response in progress
        self.write_paused = False
        self._paused = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._in_head = False
        self._heads_begun = 0  # messages begun on this connection
        self._head_method = False  # the request being read is a HEAD (its refusal has no body)
        self._head_received = 0  # bytes received into the head being parsed (upper bound)
        self._read_body = 0  # body bytes passed on during this read
        self._last_key: object = None
        self._last_head: RequestHead | None = None
        self.timer = ConnectionTimer(core.sweep, self._timed_out)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.trusted = self.core.trusted.contains(self.peer)
        self.scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        if self.scheme == "https":
            self.sni = server_name(transport.get_extra_info("ssl_object"))
        self.core.connections.add(self)
        self.core.all_closed.clear()
        self.timer.arm(IDLE, self.core.client_idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.timer.push_back(TUNNEL, self.core.idle_timeout)
            self.tunnel.send([data])
            return
        if self.upgrading is not None:
            self.upgrading.tunnel_data(data)
            return
        if self.ignore_input:
            return
        begun = self._heads_begun
        self._read_body = 0
        try:
            self.parser.feed_data(data)
            if self._body_parts:
                self._flush_body()
            if self._in_head or self.reading is not None or self._head_received:
                self._count_head_bytes(data, begun)
        except httptools.HttpParserUpgrade as upgrade:
            exchange = self.queue[-1] if self.queue else None
            if exchange is not None and exchange.head is not None and exchange.head.upgrade:
                self.upgrading = exchange
                rest = data[upgrade.args[0] :]
                if rest:
                    exchange.tunnel_data(rest)
            else:
                self.reject(bad_request("unexpected protocol upgrade", "bad_upgrade"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProxyError):
                self.reject(cause)
            else:
                log.error("request parsing failed", exc_info=cause)
                self.reject(bad_request("request could not be parsed"))
        except httptools.HttpParserError as exc:
            self.reject(bad_request(str(exc) or "malformed request"))

    def _count_head_bytes(self, data: bytes, begun: int) -> None:
        """Enforce the head limit on bytes received, not on completed lines (one endless
        header line would otherwise be buffered, and re-copied, until its CRLF). Inside a
        body, reads that move it no further (an endless trailer line or chunk extension)
        count against the same limit."""
        fresh = self._heads_begun != begun or self._read_body
        if self._in_head:
            if fresh:  # the head began in this read
                self._head_received = wire.partial_head_bytes(data, self._read_body)
            else:
                self._head_received += len(data)
        elif self.reading is not None:
            if fresh:  # the body moved: what follows its last byte is stalled
                self._head_received = wire.partial_head_bytes(data, self._read_body, b"\r\n")
            else:
                self._head_received += len(data)
        else:
            self._head_received = 0
            return
        if self._head_received > MAX_HEAD_BYTES:
            what = "request head" if self._in_head else "trailers or chunk extensions"
            self.reject(headers_too_large(f"{what} over {MAX_HEAD_BYTES} bytes"))

    def _flush_body(self) -> None:
        """Pass the body bytes parsed so far to the request as one piece: a body of 1-byte
        chunks costs one list append per chunk, not one upstream write."""
        parts = self._body_parts
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self._read_body += len(data)
        exchange = self.reading
        if exchange is not None:
            self.timer.push_back(BODY, self.core.body_timeout)
            exchange.body_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        core = self.core
        core.connections.discard(self)
        if not core.connections:
            core.all_closed.set()
        self.timer.cancel()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.close()
        for exchange in self.queue:
            exchange.client_gone()
        self.queue.clear()
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._upstream_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._upstream_reading(True)

    def _upstream_reading(self, on: bool) -> None:
        conn = self.tunnel
        if conn is None and self.queue:
            conn = self.queue[0].conn
        if conn is not None:
            if on:
                conn.resume_reading()
            else:
                conn.pause_reading()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._heads_begun += 1
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_head = True
        self._head_method = False
        if not self.queue:
            self.timer.arm(HEADER, self.core.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_method = self.parser.get_method() == b"HEAD"  # known once the URL is
        if len(self._url) > MAX_REQUEST_LINE:
            raise uri_too_long()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self.reading is not None:
            return  # a trailer after a chunked body: dropped, never forwarded
        if self._header_bytes > MAX_HEADER_BLOCK or len(self._headers) >= MAX_HEADER_COUNT:
            raise headers_too_large()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        keep_alive = parser.should_keep_alive()
        upgrade = parser.should_upgrade()
        key = (method, self._url, version, keep_alive, upgrade, self._headers)
        if key == self._last_key and self._last_head is not None:
            # Keep-alive clients repeat the same head (wrk, health checkers, SDK loops):
            # validation and header rules are pure functions of it, so reuse the result.
            head = self._last_head
        else:
            head = validate(
                method_name(method), self._url, version, self._headers, keep_alive, upgrade
            )
            self._last_key, self._last_head = key, head
        check_declared_length(head.content_length, self.core.max_body)
        exchange = Exchange(self, head)
        if head.has_body:
            self.reading = exchange
            self.timer.arm(BODY, self.core.body_timeout)
        else:
            self.timer.stop(HEADER)
        self.queue.append(exchange)
        if len(self.queue) == 1:
            exchange.start()
        elif len(self.queue) > _MAX_QUEUE:
            self.backlog(True)

    def on_message_complete(self) -> None:
        self._flush_body()
        exchange, self.reading = self.reading, None
        if exchange is None and self.queue:
            exchange = self.queue[-1]
            if exchange.close_after:
                self.ignore_input = True
            return
        if exchange is not None:
            if exchange.close_after:
                self.ignore_input = True
            self.timer.stop(BODY)
            exchange.body_done()
            if exchange.finished and exchange.close_after:
                self._close_when_done()

    # -- used by exchanges ---------------------------------------------------------------------

    def is_active(self, exchange: object) -> bool:
        return bool(self.queue) and self.queue[0] is exchange

    def cut(self) -> None:
        """End the connection after what was queued (a response that cannot be finished:
        the client sees it short of its length or last chunk)."""
        self.ignore_input = True
        self.close_transport()

    def backlog(self, on: bool) -> None:
        self._pause(_BACKLOG, on)

    def upstream_full(self, on: bool) -> None:
        self._pause(_UPSTREAM_FULL, on)

    def _pause(self, reason: int, on: bool) -> None:
        before = self._paused
        self._paused = before | reason if on else before & ~reason
        if self.transport is None or bool(before) == bool(self._paused):
            return
        if self._paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def reject(self, error: ProxyError) -> None:
        """A request broke the rules: answer it in turn, then close."""
        if self.ignore_input:
            return  # e.g. bytes after a Connection: close request
        self.ignore_input = True
        self.timer.stop()
        self._body_parts.clear()
        if self.reading is not None:
            exchange, self.reading = self.reading, None
            exchange.client_failed(error)
            self._close_when_done()
            return
        exchange = Exchange(self, None, error, head_only=self._head_method)
        self.queue.append(exchange)
        if len(self.queue) == 1:
            exchange.start()

    def exchange_finished(self, exchange: object, close_after: bool) -> None:
        if self.queue and self.queue[0] is exchange:
            self.queue.popleft()
        if close_after or self.draining:
            self.ignore_input = True
            if self.reading is exchange:
                return  # keep reading the rest of the body; close when it ends
            # Pipelined requests behind an answer that ends the connection are never served:
            # drop them and close, rather than leave the connection hanging with no timer.
            for queued in self.queue:
                queued.client_gone()
            self.queue.clear()
            self.reading = None
            self._close_when_done()
            return
        if self._paused & _BACKLOG and len(self.queue) <= _MAX_QUEUE:
            self.backlog(False)
        if self.queue:
            self.queue[0].start()
        elif self._in_head:  # a pipelined head is still arriving: it gets the head timeout
            self.timer.arm(HEADER, self.core.header_timeout)
        else:
            self.timer.arm(IDLE, self.core.client_idle_timeout)

    def _close_when_done(self) -> None:
        if not self.queue:
            self.close_transport()

    def tunnel_active(self) -> None:
        """Bytes crossed the tunnel: it is not idle."""
        self.timer.push_back(TUNNEL, self.core.idle_timeout)

    def upgrade_backlog(self, on: bool) -> None:
        """Bytes sent after an Upgrade head wait for the upstream's answer, bounded."""
        self._pause(_UPSTREAM_FULL, on)

    def start_tunnel(self, conn: UpstreamConnection) -> None:
        """After a 101: bytes flow raw both ways until either side closes."""
        self.tunnel = conn
        self.upgrading = None
        self.timer.arm(TUNNEL, self.core.idle_timeout)  # both directions' bytes push it back
        conn.tunnel = self
        if self._paused:
            self._paused = 0
            if self.transport is not None:
                self.transport.resume_reading()

    def drain(self) -> None:
        """Engine stopping: close now if idle, else after the response in progress."""
        self.draining = True
        if not self.queue and self.tunnel is None and self.reading is None:
            self.close_transport()

    # -- timeouts ---------------------------------------------------------------------------

    def _timed_out(self, kind: int) -> None:
        if self.transport is None:
            return
        if kind == IDLE:
            if not self.queue:
                self.close_transport()
        elif kind == TUNNEL:
            self.close_transport()  # connection_lost closes the upstream side and the slot
        elif kind == HEADER:
            self.reject(head_too_slow(self.core.header_timeout))
        else:
            self.reject(body_too_slow(self.core.body_timeout))
