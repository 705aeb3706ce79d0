"""What a request (`exchange.Exchange`) needs from the client connection it arrived on, and
nothing more: who the client is, a way to write to it, and the few signals that steer the
connection (pause reading, cut, hand over to a tunnel, done).

`server.ClientConnection` implements it; `exchange.py` knows only this protocol, so the
dependency runs one way, server -> exchange (as uvicorn's `RequestResponseCycle` talks to
its connection through a few callables). An exchange is passed back to the connection only
as an identity (`object`): the connection keeps its own queue of them.
"""

from __future__ import annotations

from typing import Protocol

from router.proxy.fast.core import EngineCore
from router.proxy.fast.upstream import UpstreamConnection


class ClientSide(Protocol):
    core: EngineCore
    peer: str  # the socket peer's address
    trusted: bool  # the peer is one of proxy.trusted_proxies
    scheme: str  # "http" or "https"
    sni: str | None  # the TLS server name the client sent
    draining: bool  # the engine is stopping: close after the response in progress
    write_paused: bool  # the client's socket buffer is full

    def send(self, buffers: list[bytes]) -> None:
        """Write `buffers` after what is already queued (the list is taken over)."""

    def cut(self) -> None:
        """End the connection after what was queued: a response that cannot be finished."""

    def backlog(self, on: bool) -> None:
        """Stop (or resume) reading the client: the request body is buffered far enough."""

    def upgrade_backlog(self, on: bool) -> None:
        """Stop (or resume) reading bytes sent after an Upgrade head, before the 101."""

    def upstream_full(self, on: bool) -> None:
        """Stop (or resume) reading the client: the upstream socket is full."""

    def is_active(self, exchange: object) -> bool:
        """True when `exchange` is the request being answered (the head of the queue)."""

    def start_tunnel(self, conn: UpstreamConnection) -> None:
        """After a 101: relay raw bytes between the client and `conn` until either closes."""

    def exchange_finished(self, exchange: object, close_after: bool) -> None:
        """`exchange` is answered; `close_after`: the connection must close now."""
