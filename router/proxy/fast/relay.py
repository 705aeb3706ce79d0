"""The response side of `exchange.Exchange`: the upstream's answer to one request, relayed
to the client (it is the `upstream.ResponseSink` the replica connection calls), or an
answer the router makes itself asynchronously (its attestation).

The status line and headers are rebuilt once (`rules.response_block`, kept per upstream
connection while the head repeats), framed by `router.proxy.framing.response_framing` (a
pure function of the request head and the response head), and the body is passed on, re-
chunked when its length is unknown. Once the status line has gone, a failure can only cut
the client connection; before it, a failed attempt may move to the next replica (the retry
rule is `router.proxy.retry`, its fast-engine side `retrying.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from router.balancing.base import RequestContext
from router.errors import ProxyError, UpstreamProtocolError
from router.failures import RESET, upstream_error
from router.proxy import framing
from router.proxy.fast import rules, wire
from router.proxy.fast.retrying import RetryingExchange
from router.proxy.fast.strict import RequestHead
from router.proxy.well_known import FAILED_LOCALLY, LocalAnswer


class ResponseRelay(RetryingExchange):
    """Base of `Exchange`: the attributes below are Exchange's (their defaults are there)."""

    head: RequestHead | None
    ctx: RequestContext | None
    upstream_seconds: float | None
    error_code: str | None
    attempt_started: float
    sent: bool
    body_complete: bool
    close_after: bool
    chunked_out: bool
    until_eof: bool
    tunnelled: bool
    bytes_out: int
    out: list[bytes]
    tunnel_pending: list[bytes]
    _rid_line: bytes
    head_only: bool
    request_id: str
    _local_task: asyncio.Task[LocalAnswer] | None = None

    def _fail(self, error: ProxyError) -> None: ...

    def _finish(self, notify: bool = True) -> None: ...

    def _answer_locally(self, answer: Coroutine[Any, Any, LocalAnswer]) -> None:
        """A response the router makes itself (its attestation): written when ready,
        unless the client left meanwhile."""
        task = asyncio.get_running_loop().create_task(answer)
        self._local_task = task
        task.add_done_callback(self._answered_locally)

    def _answered_locally(self, task: asyncio.Task[LocalAnswer]) -> None:
        self._local_task = None
        if self.finished or task.cancelled():
            return
        local = FAILED_LOCALLY if task.exception() is not None else task.result()
        self.status = local.status
        self.client.send(
            [
                local.wire(
                    head_only=self.head_only, close=self.close_after, request_id=self.request_id
                )
            ]
        )
        self._finish()

    def response_head(self, status: int, headers: rules.RawHeaders) -> None:
        head, replica = self.head, self.replica
        assert head is not None
        assert replica is not None
        if status == 101 and head.upgrade is None:
            raise UpstreamProtocolError("101 without an upgrade request")
        core = self.core
        if status in core.retrier.policy.statuses and self.retry_response(status, headers):
            return  # given up for another replica: nothing of it reaches the client
        self.upstream_seconds = time.monotonic() - self.attempt_started
        observers = core.observers
        if observers.observers:
            if status < 400:  # the common case, without a call
                observers.attempt_done(replica, True, None, status)
            else:
                ok, kind = core.retrier.policy.status_verdict(status, core.count_5xx)
                observers.attempt_done(replica, ok, kind, status)
        self.status = status
        conn = self.conn
        if conn is not None and headers == conn.last_raw:
            # Same head as this connection's last response (only Date changes, once a
            # second): the rules are a pure function of it.
            block, length, codings = conn.last_rules
        else:
            block, length, codings = rules.response_block(headers)
            if conn is not None:
                conn.last_raw, conn.last_rules = headers, (block, length, codings)
        block += self._rid_line
        if self.ctx is not None and self.ctx.response_headers:
            block += wire.header_block(self.ctx.response_headers)
        if status == 101:
            lines = f"Connection: upgrade\r\nUpgrade: {head.upgrade or ''}\r\n".encode("latin-1")
        else:
            decided = framing.response_framing(head.method, head.version, status, length, codings)
            lines = decided.framing
            self.chunked_out = decided.chunked_out
            self.until_eof = decided.until_eof
            if decided.close or self.client.draining:
                self.close_after = True
            if self.close_after:
                lines += b"Connection: close\r\n"
            elif head.version == "1.0":
                lines += b"Connection: keep-alive\r\n"
        self.out.append(wire.status_line(status) + block + lines + wire.CRLF)

    def response_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.chunked_out:
            self.out.extend(wire.chunk(data))
        else:
            self.out.append(data)

    def flush(self) -> None:
        if self.out:
            self.client.send(self.out)
            self.out = []

    def response_done(self) -> None:
        if self.chunked_out:
            self.out.append(wire.LAST_CHUNK)
        self.flush()
        conn, self.conn = self.conn, None
        replica = self.replica
        assert conn is not None
        assert replica is not None
        if not self.body_complete:
            conn.reusable = False  # the upstream answered before the body was sent
        if conn.read_paused:
            conn.resume_reading()
        core = self.core
        core.pool.release(conn)
        in_flight, rid = core.in_flight, replica.id
        left = in_flight.get(rid, 1) - 1  # InFlightCounter.leave, inline: every request
        if left > 0:
            in_flight[rid] = left
        else:
            in_flight.pop(rid, None)
        self._finish()

    def upstream_upgraded(self, rest: bytes) -> None:
        conn = self.conn
        if self.status != 101 or conn is None or conn.transport is None:
            self.upstream_failed(RESET)
            return
        self.conn = None
        self.tunnelled = True
        if rest:
            self.out.append(rest)
        self.flush()
        self.client.start_tunnel(conn)
        if self.tunnel_pending:
            conn.send(self.tunnel_pending)
            self.tunnel_pending = []

    def upstream_failed(self, kind: str, reason: str = "") -> None:
        if self.finished:
            return
        conn, self.conn = self.conn, None
        replica = self.replica
        assert replica is not None
        if conn is not None:
            conn.close()
        self.core.in_flight.leave(replica.id)
        if self.status is None:
            self.core.observers.attempt_done(replica, False, kind, None)
            error = upstream_error(kind, replica.id, reason)
            self.last_error = error
            if self.core.retrier.policy.retryable(kind, sent=self.sent, idempotent=self.idempotent):
                self.note_attempt(kind)
                self._try_next()
            else:
                self._fail(error)
            return
        if self.until_eof and kind == RESET:
            # The replica's close was the end of the body. Re-chunked for an HTTP/1.1 client,
            # the last chunk ends it there and the client connection stays open; otherwise
            # (HTTP/1.0) the head said Connection: close and the close ends the body.
            if self.chunked_out:
                self.out.append(wire.LAST_CHUNK)
            else:
                self.close_after = True
            self.flush()
            self._finish()
            return
        # The status line is gone: all we can do is cut the client connection.
        self.core.observers.attempt_done(replica, False, kind, self.status)
        self.error_code = f"upstream_{kind}_mid_body"
        self.flush()
        self.client.cut()
        self._finish(notify=False)

    def upstream_pause(self, paused: bool) -> None:
        self.client.upstream_full(paused)
