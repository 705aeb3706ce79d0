"""One client request on its way through the router: pick, dial or reuse, send, relay back.

A callback state machine rather than a coroutine per request (a task and its futures cost
more than the rest of a small request). The retry rule is `router.proxy.retry`: a failed
dial moves to the next candidate for any method while no body byte has been committed;
after the request went out only bodiless idempotent requests move on; once the response
has started nothing is retried and a failure can only cut the client connection.

Framing: the request's is llhttp's parse (`rules.forward_block`), the response's is
`framing.response_framing`. The response timeout starts once the whole request is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from router import acme
from router.balancing.base import RequestContext
from router.errors import (
    ClientRequestError,
    ProxyError,
    UpstreamProtocolError,
)
from router.failures import CONNECT, RESET, upstream_error
from router.models import Replica
from router.proxy.admission import Claim
from router.proxy.apps import AppEntry
from router.proxy.base import RequestRecord, no_routable_error
from router.proxy.fast import framing, rules, wire
from router.proxy.fast.pool import Target, classify_dial_error
from router.proxy.fast.retrying import RetryingExchange
from router.proxy.fast.strict import RequestHead
from router.proxy.fast.upstream import UpstreamConnection
from router.proxy.headers import IDEMPOTENT
from router.proxy.well_known import (
    ATTESTATION_PATH,
    FAILED_LOCALLY,
    LocalAnswer,
    is_attestation_target,
)

if TYPE_CHECKING:
    from router.proxy.fast.server import ClientConnection, EngineCore

_NO_CANDIDATES: Iterator[Replica] = iter(())
_BACKLOG = 256 * 1024  # request body bytes buffered before the client is paused
_UPGRADE_BACKLOG = 64 * 1024  # bytes after an Upgrade head held before the 101, at most


class Exchange(RetryingExchange):
    # Per-request state; most fields start at these class-level defaults so that creating
    # an exchange (once per request) only sets what differs.
    conn: UpstreamConnection | None = None
    replica: Replica | None = None
    ctx: RequestContext | None = None
    status: int | None = None
    upstream_seconds: float | None = None
    last_error: ProxyError | None = None
    error_code: str | None = None
    dialing = False
    sent = False
    finished = False
    chunked_out = False
    until_eof = False
    tunnelled = False
    attempts = 0
    buffered = 0
    bytes_in = 0
    bytes_out = 0
    tunnel_buffered = 0
    attempt_started = 0.0
    request_id = ""
    _rid_line = b""
    _fwd_block = b""
    slot: Claim | None = None
    holds_slot = False
    app: AppEntry | None = None
    holds_app_slot = False
    _local_task: asyncio.Task[LocalAnswer] | None = None

    def __init__(
        self,
        client: ClientConnection,
        head: RequestHead | None,
        error: ProxyError | None = None,
        *,
        head_only: bool = False,  # a refused head (None) that was a HEAD request
    ) -> None:
        self.client = client
        self.head_only = head_only or (head is not None and head.method == "HEAD")
        self.core: EngineCore = client.core
        self.head = head
        self.error = error
        self.started = time.monotonic()
        self.body: list[bytes] = []
        self.out: list[bytes] = []
        self.tunnel_pending: list[bytes] = []
        self.client_ip = client.peer
        # The picker's walk; wrapped in a retry_budget.Candidates at the first retry.
        self._candidates: Iterator[Replica] = _NO_CANDIDATES
        if head is None:
            self.body_complete = True
            self.idempotent = False
            self.close_after = True
        else:
            self.body_complete = not head.has_body
            self.idempotent = not head.has_body and head.method in IDEMPOTENT
            self.close_after = not head.keep_alive or head.upgrade is not None

    # -- start: runs when this request reaches the head of its connection's queue ----------

    def start(self) -> None:
        head, core = self.head, self.core
        self.request_id = rid = rules.request_id(head, self.client.trusted) if head else ""
        self._rid_line = b"X-Request-Id: %s\r\n" % rid.encode("latin-1")
        if self.error is not None or head is None:
            self._fail(self.error or ClientRequestError(400, "bad_request"))
            return
        if head.expect_continue and not self.body_complete:
            self.client.send([wire.CONTINUE])
        if self.client.trusted:
            xff = [v.decode("latin-1") for k, v in head.headers if k.lower() == b"x-forwarded-for"]
            self.client_ip = core.trusted.client_address(self.client.peer, xff)
        if core.acme_webroot is not None and self.client.scheme == "http":
            challenge = acme.answer(core.acme_webroot, head.method, head.target)
            if challenge is not None:  # ACME HTTP-01: answered here, never routed
                self.status = challenge.status
                self.client.send([challenge.wire()])
                self._finish()
                return
        target = head.target
        # The prefix test first: a compiled string method, where every other request ends.
        if (
            core.attestation is not None
            and target.startswith(ATTESTATION_PATH)
            and is_attestation_target(target)
        ):
            self._answer_locally(core.attestation.answer(head.method, head.target, self.client_ip))
            return
        if (https_port := core.redirect_https_port) is not None and self.client.scheme == "http":
            self.status = 308
            self.client.send([wire.redirect_to_https(head.host, head.target, https_port)])
            self._finish()
            return
        try:  # before admission: a request for no app takes no slot and reaches no replica
            self.app = core.apps.resolve(head.host, head.target, self.client.sni)
        except ClientRequestError as exc:
            self._fail(exc)
            return
        if not self.app.claim():  # the app's own max_connections
            self._fail(self.app.overloaded())
            return
        self.holds_app_slot = True
        if core.admission.try_acquire():  # the common case, without a Claim object
            self.holds_slot = True
        else:
            self.slot = slot = core.admission.claim(core.admission_wait, self._admitted, self._fail)
            if slot.error is not None:
                self._fail(slot.error)
                return
            if not slot.held:
                return  # queued: _admitted or _fail runs when a slot frees or the wait ends
        self._admitted()

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

    def _admitted(self) -> None:
        head, core = self.head, self.core
        assert head is not None
        assert self.app is not None
        peer, trusted = self.client.peer, self.client.trusted
        snapshot = self.app.snapshots()
        if not snapshot.routable:
            self._fail(no_routable_error(snapshot))
            return
        # Positional: (client_ip, method, path, headers, peer_trusted).
        self.ctx = RequestContext(
            self.client_ip, head.method, head.target, rules.LazyHeaders(head.headers), trusted
        )
        if head.forward_block is None:
            head.forward_block = rules.forward_block(
                head, peer, trusted, self.client.scheme, core.edge_headers
            )
        self._fwd_block = head.forward_block
        self._candidates = snapshot.picker.candidates(self.ctx)
        self._try_next()

    def _try_next(self) -> None:
        core, app = self.core, self.app
        assert app is not None
        for replica in self._candidates:
            if self.attempts > core.retries:
                break
            if self.attempts:
                self.hold_retry_token()
            self.attempts += 1
            self.replica = replica
            self.attempt_started = time.monotonic()
            in_flight = core.in_flight
            in_flight[replica.id] = in_flight.get(replica.id, 0) + 1  # InFlightCounter.enter
            target = core.pool.target(replica, app.attested)
            conn = core.pool.acquire(target)
            if conn is not None:
                self._send(conn, target)
            else:
                self.dialing = True
                core.pool.connect(target, partial(self._dialled, target))
            return
        self._fail(self.last_error or no_routable_error(app.snapshots()))

    def _dialled(
        self, target: Target, conn: UpstreamConnection | None, exc: BaseException | None
    ) -> None:
        self.dialing = False
        replica = self.replica
        assert replica is not None
        if self.finished:  # the client left while we dialled
            if conn is not None:
                self.core.pool.release(conn)
            self.core.in_flight.leave(replica.id)
            return
        if conn is None:
            kind = classify_dial_error(exc) if exc is not None else CONNECT
            self.core.observers.attempt_done(replica, False, kind, None)
            self.core.in_flight.leave(replica.id)
            self.last_error = upstream_error(kind, replica.id)
            if self.core.retrier.policy.retryable(kind, sent=self.sent, idempotent=self.idempotent):
                self.note_attempt(kind)
                self._try_next()
            else:
                self._fail(self.last_error)
            return
        self._send(conn, target)

    def _send(self, conn: UpstreamConnection, target: Target) -> None:
        head = self.head
        assert head is not None
        assert conn.transport is not None
        self.conn = conn
        conn.begin(self, head.method == "HEAD")
        buffers = [
            head.method.encode(),
            b" ",
            target.prefix,
            head.raw_target,
            b" HTTP/1.1\r\n",
            target.host_line,
            self._rid_line,
            self._fwd_block,
        ]
        if head.has_body:
            self.sent = True
            if head.chunked:
                for data in self.body:
                    buffers.extend(wire.chunk(data))
                if self.body_complete:
                    buffers.append(wire.LAST_CHUNK)
            else:
                buffers.extend(self.body)
            self.body = []
            if self.buffered:
                self.buffered = 0
                self.client.backlog(False)
        conn.send(buffers)
        if self.body_complete:
            conn.request_sent()
        if self.core.retrier.policy.per_try_timeout is not None:
            self.arm_per_try()
        if self.client.write_paused:
            conn.pause_reading()

    # -- the client's request body ---------------------------------------------------------

    def body_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.finished:
            return  # answered already: the rest of the body is read and dropped
        if self.bytes_in > self.core.max_body:
            self.client_failed(
                ClientRequestError(413, "body_too_large", f"limit {self.core.max_body} bytes")
            )
            return
        conn = self.conn
        if conn is not None and conn.transport is not None:
            head = self.head
            if head is not None and head.chunked:
                conn.send(wire.chunk(data))
            else:
                conn.send([data])
            return
        self.body.append(data)
        self.buffered += len(data)
        if self.buffered > _BACKLOG:
            self.client.backlog(True)

    def body_done(self) -> None:
        self.body_complete = True
        conn = self.conn
        head = self.head
        if conn is not None and conn.transport is not None and head is not None:
            if head.chunked:
                conn.send([wire.LAST_CHUNK])
            conn.request_sent()  # the response timeout runs from here

    def client_failed(self, error: ProxyError) -> None:
        """The request body broke (bad chunk, too large, too slow)."""
        self.close_after = True
        if self.finished:
            return
        if self.status is not None:
            # The response has started: the only way to say "broken" is to cut.
            self.error_code = error.code
            self.client.cut()
            return
        self._drop_upstream()
        self.error = error
        if self.client.is_active(self):
            self._fail(error)
        # else: answered with the error when it reaches the head of the queue

    def tunnel_data(self, data: bytes) -> None:
        """Bytes after an Upgrade head, before the upstream answered: held, bounded."""
        self.tunnel_pending.append(data)
        self.tunnel_buffered += len(data)
        if self.tunnel_buffered > _UPGRADE_BACKLOG:
            self.client.upgrade_backlog(True)

    # -- the upstream's response (ResponseSink) ---------------------------------------------

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
        self.client.start_tunnel(self, conn)
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

    # -- endings ------------------------------------------------------------------------------

    def _drop_upstream(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.sink = None
            conn.close()
            if self.replica is not None:
                self.core.in_flight.leave(self.replica.id)

    def client_gone(self) -> None:
        """The client connection closed under this request."""
        if self.finished:
            return
        self._drop_upstream()
        if self.tunnelled and self.replica is not None:
            self.core.in_flight.leave(self.replica.id)
        if self.status is None:
            self.error_code = self.error_code or "client_closed"
        self._finish(notify=False)

    def _fail(self, error: ProxyError) -> None:
        self.error_code = error.code
        self.status = error.status
        if not self.body_complete or isinstance(error, ClientRequestError) or self.client.draining:
            self.close_after = True
        answer = wire.error_response(
            error, close=self.close_after, request_id=self.request_id, head_only=self.head_only
        )
        self.client.send([answer])
        self._finish()

    def _finish(self, notify: bool = True) -> None:
        self.finished = True
        self.body = []
        if self.holds_retry or self.try_timer is not None:
            self.retry_finished()
        if self.holds_app_slot:
            self.holds_app_slot = False
            assert self.app is not None
            self.app.release()
        if self.holds_slot:
            self.holds_slot = False
            self.core.admission.release()
        elif self.slot is not None:
            self.slot.release()
        observers = self.core.observers
        if observers.observers:
            head = self.head
            path, _, query = head.target.partition("?") if head else ("", "", "")
            observers.request_done(
                RequestRecord(
                    method=head.method if head else "",
                    path=path,
                    query=query,
                    host=(head.host or "") if head else "",
                    protocol=f"HTTP/{head.version}" if head else "",
                    request_id=self.request_id,
                    headers=self.ctx.headers
                    if self.ctx
                    else (rules.LazyHeaders(head.headers) if head else None),
                    status=self.status or 499,
                    client=self.client_ip,
                    replica=self.replica,
                    retries=max(self.attempts - 1, 0),
                    upstream_seconds=self.upstream_seconds,
                    total_seconds=time.monotonic() - self.started,
                    bytes_in=self.bytes_in,
                    bytes_out=self.bytes_out,
                    error=self.error_code,
                    explanation=self.ctx.explanation if self.ctx else "",
                    attempts=tuple(self.tried) if self.tried else (),
                    retry_budget_exhausted=self.retry_exhausted,
                )
            )
        if notify:
            self.client.exchange_finished(self)
