"""Connections to replicas: an asyncio.Protocol that parses responses with httptools (the
pool that keeps them idle between requests is `pool`).

A connection serves one request at a time (no upstream pipelining) and reports what it
reads to its current `ResponseSink` (the request being served). The pool hands out the most
recently used idle connection (warm, least likely to have been closed by the peer), keeps
at most `max_idle` per host and closes those idle longer than `idle_timeout`.

What a replica sends is checked as strictly as what a client sends: a status outside
100-599, a head over the client limits (bytes received, or fields), or any byte beyond the
one response per request written is a protocol error: 502 if nothing was relayed yet, and
the connection is closed, never pooled. Trailers are dropped; they never reach the next
response. The response timeout runs from when the whole request was written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from router.failures import RESET, TIMEOUT
from router.proxy.fast import wire
from router.proxy.fast.outbox import Writer
from router.proxy.fast.rules import ResponseRules
from router.proxy.request_rules import MAX_HEAD_BYTES, MAX_HEADER_BLOCK, MAX_HEADER_COUNT
from router.reach import AttestedReach

if TYPE_CHECKING:
    from router.proxy.fast.pool import Pool

log = logging.getLogger(__name__)

# (scheme, host, port, the app's RA-TLS reach or None): connections are reused only
# within one key, so an app's RA-TLS-checked connections stay its own.
PoolKey = tuple[str, str, int, AttestedReach | None]


class ResponseSink(Protocol):
    """What a connection tells the request it is serving."""

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The final response head (1xx other than 101 are not relayed). The reason phrase
        is not kept: the router sends the standard one (RFC 9112: clients ignore it)."""

    def response_body(self, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def response_done(self) -> None: ...

    def upstream_upgraded(self, rest: bytes) -> None: ...

    def upstream_failed(self, kind: str, reason: str = "") -> None:
        """kind: reset (closed or garbled) or timeout; reason: what was wrong, if known."""

    def upstream_pause(self, paused: bool) -> None:
        """The request body fills the upstream socket buffer: stop or resume reading."""


class TunnelClient(Protocol):
    """The client side of an upgraded connection."""

    transport: asyncio.Transport | None

    def send(self, buffers: list[bytes]) -> None: ...

    def close_transport(self) -> None: ...

    def tunnel_active(self) -> None: ...


_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class UpstreamProtocolViolation(Exception):
    """Raised from a parser callback: the response breaks a rule (the message says which)."""


class UpstreamConnection(asyncio.Protocol, Writer):
    __slots__ = (
        "_body_parts",
        "_close_pending",
        "_completed",
        "_deadline",
        "_head_received",
        "_headers",
        "_in_head",
        "_loop",
        "_pending",
        "_pending_size",
        "_read_body",
        "_skip",
        "_timer",
        "_violation",
        "head_only",
        "idle_since",
        "key",
        "last_raw",
        "last_rules",
        "on_body",
        "outbox",
        "parser",
        "pool",
        "read_paused",
        "reusable",
        "sink",
        "timeout",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: Pool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.outbox = pool.outbox
        self._pending = None
        self._pending_size = 0
        self._close_pending = False
        self._body_parts: list[bytes] = []  # body bytes parsed in this read, not yet relayed
        # llhttp's body callback is the list's own append (one C call per chunk, whatever
        # the chunking); the sink gets the read's body bytes at once (_flush_body).
        self.on_body: Callable[[bytes], None] = self._body_parts.append
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        # The request whose response completed in this read: told only once the whole read
        # is parsed, so the connection cannot be pooled (and handed to the next request)
        # while bytes after that response are still being read.
        self._completed: ResponseSink | None = None
        self.tunnel: TunnelClient | None = None  # after a 101: raw bytes go to this client
        self.reusable = True
        self.read_paused = False
        self.head_only = False  # the request was HEAD: the response has no body
        self.idle_since = 0.0
        self.timeout = pool.response_timeout
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False  # between a status line and the end of its head
        self._head_received = 0  # bytes received into this head (upper bound)
        self._violation = ""
        self._read_body = 0  # body bytes relayed during this read
        # The last response head and what the header rules made of it (see Exchange).
        self.last_raw: list[tuple[bytes, bytes]] | None = None
        self.last_rules: ResponseRules = (b"", None, None)
        self._skip = False

    # -- used by the request --------------------------------------------------------------

    def begin(self, sink: ResponseSink, head_only: bool) -> None:
        """Attach a request (its response timeout starts with `request_sent`)."""
        self.sink = sink
        self.head_only = head_only

    def request_sent(self) -> None:
        """The whole request is written: from now on the replica is waited for."""
        if self.sink is not None and not self._deadline:
            self._arm()

    def detach(self) -> None:
        self.sink = None
        self._deadline = 0.0

    def _arm(self) -> None:
        self._deadline = self._loop.time() + self.timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._deadline or self.sink is None:
            return
        now = self._loop.time()
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        sink, self.sink = self.sink, None
        self.close()
        sink.upstream_failed(TIMEOUT)

    def pause_reading(self) -> None:
        """The client cannot take more: stop reading the response for now."""
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.reusable = False
        self.close_transport()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_active()
            self.tunnel.send([data])
            return
        if self.sink is None:
            # Bytes while idle: the peer is not speaking HTTP/1.1 keep-alive properly.
            self.close()
            return
        if self._deadline:
            self._deadline = self._loop.time() + self.timeout
        in_head = self._in_head
        self._read_body = 0
        try:
            self.parser.feed_data(data)
            if self._body_parts:
                self._flush_body()
            if self._in_head or self.sink is not None or self._head_received:
                self._count_head_bytes(data, in_head)
        except httptools.HttpParserUpgrade as upgrade:
            sink, self.sink = self.sink, None
            self.reusable = False
            self._deadline = 0.0
            if sink is not None:
                sink.upstream_upgraded(data[upgrade.args[0] :])
        except (httptools.HttpParserError, UpstreamProtocolViolation):
            self._fail(self._violation or "upstream sent a malformed response")
        finally:
            self._skip = False
        completed, self._completed = self._completed, None
        if completed is not None:
            # reusable is False by now if anything followed the response in this read.
            completed.response_done()
        elif self.sink is not None:
            self.sink.flush()  # one write for everything this read produced

    def _count_head_bytes(self, data: bytes, was_in_head: bool) -> None:
        """The client head limit, on bytes received: a replica's endless header line (or,
        inside a body, reads that move it no further: endless trailers) is refused once
        past it instead of being buffered."""
        if self._in_head:
            if was_in_head:
                self._head_received += len(data)
            else:
                self._head_received = wire.partial_head_bytes(data, 0)
        elif self.sink is not None:
            if self._read_body:  # the body moved: what follows its last byte is stalled
                self._head_received = wire.partial_head_bytes(data, self._read_body, b"\r\n")
            else:
                self._head_received += len(data)
        else:
            self._head_received = 0
            return
        if self._head_received > MAX_HEAD_BYTES:
            self._violated("upstream response head or trailers too large")

    def _flush_body(self) -> None:
        """Relay the body bytes parsed so far as one piece (1-byte chunks cost a list
        append each, not a chunk of their own toward the client)."""
        parts = self._body_parts
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        if self._skip:
            self.reusable = False  # a body after a HEAD response: never reuse
            return
        self._read_body += len(data)
        if self.sink is not None:
            self.sink.response_body(data)

    def _fail(self, reason: str) -> None:
        self._body_parts.clear()
        sink, self.sink = self.sink, None
        self.close()
        if sink is not None:
            sink.upstream_failed(RESET, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.transport = None
        self.pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.tunnel is not None:
            self.tunnel.close_transport()
            return
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_failed(RESET, self._violation)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            if self.tunnel.transport is not None:  # the client's bytes fill this socket
                self.tunnel.transport.pause_reading()
        elif self.sink is not None:
            self.sink.upstream_pause(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            if self.tunnel.transport is not None:
                self.tunnel.transport.resume_reading()
        elif self.sink is not None:
            self.sink.upstream_pause(False)

    # -- httptools callbacks --------------------------------------------------------------

    def _violated(self, reason: str) -> None:
        self._violation = reason
        raise UpstreamProtocolViolation(reason)

    def on_message_begin(self) -> None:
        if self.sink is None:  # a second response to one request: never pool this
            self._violated("upstream sent more than one response")
        self._in_head = True
        self._headers = []  # trailers of the previous response (if any) are dropped here

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head these are trailers: they land in a list nobody reads, emptied when
        # the next response begins, so they never reach any response. Their bytes count
        # against the head limit (_count_head_bytes).
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:
            self._violated(f"upstream sent status {status} (100-599 allowed)")
        headers, self._headers = self._headers, []
        if len(headers) > MAX_HEADER_COUNT:
            self._violated("upstream response has too many header fields")
        # (A head equal to the last one passed this check already.)
        if headers != self.last_raw and wire.block_size(headers) > MAX_HEADER_BLOCK:
            self._violated("upstream response head too large")
        if status < 200 and status != 101:
            # 100 Continue / 103 Early Hints: not relayed, and llhttp reads no body; one that
            # claims a body (RFC 9110 forbids it) would leave its bytes to be read as the
            # next response.
            if any(name.lower() in _FRAMING for name, _ in headers):
                self._violated(f"upstream sent a {status} response with a body")
            return
        if not self.parser.should_keep_alive():
            self.reusable = False
        if self.sink is not None:
            self.sink.response_head(status, headers)
        if self.head_only and status != 101:
            # llhttp cannot be told a response answers HEAD: it would wait for a body.
            # Finish here and start a fresh parser for the next response.
            self._skip = True
            self.parser = httptools.HttpResponseParser(self)
            self._message_complete()

    def on_message_complete(self) -> None:
        if self._skip or self.parser.get_status_code() < 200:
            self._flush_body()  # (nothing to relay: a HEAD response's stray body is dropped)
            return
        self._flush_body()
        self._message_complete()

    def _message_complete(self) -> None:
        """The response is complete; the request hears it at the end of this read
        (data_received). Any response begun after it in the same read has no request
        (on_message_begin refuses it), so the connection is closed, never pooled."""
        self._completed, self.sink = self.sink, None
        self._deadline = 0.0
