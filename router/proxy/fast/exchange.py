"""One client request on its way through the router: pick, dial or reuse, send, relay back.

A callback state machine rather than a coroutine per request (a task and its futures cost
more than the rest of a small request). The retry rule is `router.proxy.retry`: a failed
dial moves to the next candidate for any method while no body byte has been committed;
after the request went out only bodiless idempotent requests move on; once the response
has started nothing is retried and a failure can only cut the client connection.

This module forwards the request (admission, the candidate walk, dialling, the body);
`relay.ResponseRelay`, its base, relays the response. It talks to its client connection
only through `client_side.ClientSide`, so `server.py` imports it and never the reverse.

Framing: the request's is llhttp's parse (`rules.forward_block`), the response's is
`router.proxy.framing.response_framing`. The response timeout starts once the whole
request is written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

from router.balancing.base import RequestContext
from router.errors import ClientRequestError, ProxyError
from router.failures import CONNECT, upstream_error
from router.models import Replica
from router.proxy.admission import Claim
from router.proxy.apps import AppEntry
from router.proxy.base import RequestRecord, no_routable_error
from router.proxy.fast import rules, wire
from router.proxy.fast.client_side import ClientSide
from router.proxy.fast.core import EngineCore
from router.proxy.fast.local_answers import router_answer
from router.proxy.fast.pool import Target, classify_dial_error
from router.proxy.fast.relay import ResponseRelay
from router.proxy.fast.strict import RequestHead
from router.proxy.fast.upstream import UpstreamConnection
from router.proxy.headers import IDEMPOTENT
from router.proxy.request_rules import body_too_large

_NO_CANDIDATES: Iterator[Replica] = iter(())
_BACKLOG = 256 * 1024  # request body bytes buffered before the client is paused
_UPGRADE_BACKLOG = 64 * 1024  # bytes after an Upgrade head held before the 101, at most


class Exchange(ResponseRelay):
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

    def __init__(
        self,
        client: ClientSide,
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
        local = router_answer(core, head, self.client.scheme, self.client_ip)
        if local is not None:
            if isinstance(local, tuple):
                self.status = local[0]
                self.client.send([local[1]])
                self._finish()
            else:
                self._answer_locally(local)
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
            self.client_failed(body_too_large(self.core.max_body))
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
            self.client.exchange_finished(self, self.close_after)
