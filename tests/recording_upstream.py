"""A replica that keeps the exact bytes of every connection and answers from a script.

The framing regression tests need to see what the router really wrote upstream (not what a
lenient server made of it) and to answer with bytes no well-behaved server would send
(trailers, forged statuses, extra responses). Each accepted connection gets a `Recorded`
entry; `respond(conn, request_head)` returns the bytes to write for each request head seen,
or None to stay silent. Request bodies are not interpreted here: tests parse `Recorded.data`
with h11 (an independent parser) to check the framing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11

from tests.support import RouterHandle, running_router


@dataclass
class Recorded:
    data: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None

    def requests(self) -> list[tuple[h11.Request, bytes]]:
        """Every complete request in the bytes received, parsed by h11, with its body.
        Raises when the bytes do not parse as HTTP/1.1 requests (or end mid-request)."""
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(bytes(self.data))
        out: list[tuple[h11.Request, bytes]] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                out.append((event, b""))
            elif isinstance(event, h11.Data):
                request, body = out[-1]
                out[-1] = (request, body + event.data)
            elif isinstance(event, h11.EndOfMessage):
                # Answer so that h11 accepts the next request on this connection.
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
        trailing, _ = conn.trailing_data
        if trailing:
            raise AssertionError(f"bytes after the last request: {trailing[:200]!r}")
        return out


Responder = Callable[[Recorded, bytes], Awaitable[bytes | None]]


class RecordingUpstream:
    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.connections: list[Recorded] = []
        self.port = 0
        self.new_connection = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = Recorded(writer=writer)
        self.connections.append(rec)
        self.new_connection.set()
        pending = b""
        try:
            while chunk := await reader.read(65536):
                rec.data += chunk
                pending += chunk
                # One answer per request head; bodies are not read for framing here.
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    answer = await self.respond(rec, head)
                    if answer is not None:
                        writer.write(answer)
                        await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            rec.closed.set()
            writer.close()


@asynccontextmanager
async def recording_upstream(respond: Responder) -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream(respond)
    server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        yield upstream
        server.close()
        for rec in upstream.connections:
            if rec.writer is not None:
                rec.writer.close()


@asynccontextmanager
async def router_to(
    upstream: RecordingUpstream, engine: str = "fast", failures: int = 5, **proxy: Any
) -> AsyncIterator[RouterHandle]:
    """A router in front of `upstream` alone; `failures` failed attempts eject it."""
    config = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "discovery": {"static": [{"id": "rec", "url": f"http://127.0.0.1:{upstream.port}"}]},
        "health": {"enabled": False, "passive": {"consecutive_failures": failures}},
        "proxy": {"engine": engine, "retries": 0, **proxy},
    }
    async with running_router(config) as router:
        yield router


class RawClient:
    """One client connection to the router, reading responses with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, router: RouterHandle) -> RawClient:
        host, port = router.app.engine.addresses[0]
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 3.0) -> tuple[h11.Response, bytes]:
        """The next complete response (head and body), as h11 parses it."""
        # The router's bytes are parsed as answers to requests h11 did not send itself.
        if self.h11.our_state is h11.IDLE:
            self.h11.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            self.h11.send(h11.EndOfMessage())
        deadline = time.monotonic() + timeout
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                left = deadline - time.monotonic()
                data = await asyncio.wait_for(self.reader.read(65536), max(left, 0.01))
                self.h11.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return response, body
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("router closed the connection before a response")

    async def closed(self, timeout: float = 3.0) -> bool:
        """Whether the router closes this connection within `timeout` (reading what is left)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def close(self) -> None:
        self.writer.close()


def header(message: h11.Request | h11.Response, name: bytes) -> list[bytes]:
    return [v for k, v in message.headers if k == name.lower()]


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
