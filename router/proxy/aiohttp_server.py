"""aiohttp's low-level server with a request-head timeout, for the aiohttp engine.

aiohttp has one timer per client connection, the keep-alive timer: it closes a connection
with no complete request head some time after it opened or after its previous response. One
timer cannot be both the idle timeout (`proxy.client_idle_timeout`, long: clients reuse
connections) and the slowloris cut-off (`proxy.client_header_timeout`, short), so this
handler adds the second: once the first bytes of a head arrive on an idle connection, the
head must complete within the head timeout, or it is answered 408 and the connection closed.

It reads two attributes of aiohttp's RequestHandler (`_waiter`: the handler is waiting for
the next request; `_request_count`: requests parsed so far), present since aiohttp 3.8.

It also refuses what aiohttp's C parser lets through without a request target
(`CONNECT  \r\n\r\n`: llhttp accepts the empty target, aiohttp builds a message whose url is
None, and building the request then raises AttributeError in aiohttp's connection task, so
the client got no answer): such a message is queued as the parse error aiohttp answers 400,
through its `_messages` queue and `_ErrInfo` entries (as its own data_received does).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b'Content-Length: 29\r\nConnection: close\r\n\r\n{"error": "request_timeout"}\n'
)


class HeadTimedHandler(RequestHandler):
    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        head_timeout: float,
        **kw: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kw)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0

    def _waiting_for_head(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._refuse_requests_without_target()
        if self._head_timer is not None and self._request_count != self._head_count:
            self._head_timer.cancel()  # the head it timed is complete
            self._head_timer = None
        # Bytes arrived while idle and no complete request came of them: a head has begun.
        # (A head pipelined behind a request in progress is timed by the keep-alive timer.)
        if data and self._head_timer is None and self._waiting_for_head():
            self._head_count = self._request_count
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_expired)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        # Bytes held back behind a declined upgrade are parsed here, not in data_received.
        self._refuse_requests_without_target()
        return answered

    def _refuse_requests_without_target(self) -> None:
        queue = self._messages
        for index, (message, _payload) in enumerate(queue):
            if not isinstance(message, _ErrInfo) and message.url is None:
                refused = BadHttpMessage("the request has no target")
                queue[index] = (_ErrInfo(400, refused, refused.message), EMPTY_PAYLOAD)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count and self._waiting_for_head():
            if self.transport is not None:  # as the fast engine answers a slow head
                self.transport.write(REQUEST_TIMEOUT)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class HeadTimedServer(web.Server):
    """A `web.Server` whose connections are `HeadTimedHandler`s."""

    def __init__(self, handler: Any, *, head_timeout: float, **handler_kw: Any) -> None:
        super().__init__(handler, **handler_kw)
        self._head_timeout = head_timeout
        self._handler_kw = handler_kw
        self._own_loop = asyncio.get_running_loop()

    def __call__(self) -> RequestHandler:
        return HeadTimedHandler(
            self, loop=self._own_loop, head_timeout=self._head_timeout, **self._handler_kw
        )
