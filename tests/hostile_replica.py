"""A hostile replica that keeps the exact bytes of every connection, for the framing tests.

It parses what the router sends with h11 (an HTTP/1.1 parser independent of llhttp and of
aiohttp's), so a request the router framed one way and the replica reads another way shows
up as an unknown, missing or malformed request. Each request names its answer in an
`X-Script` header (see `SCRIPTS`) and carries an `X-Tag` that the answer echoes, so a client
can tell whose response it got. Some answers are malicious: trailers, early answers, bad
status lines, 1xx before the final answer, 204/304/HEAD answers carrying a body, CL+TE,
close-delimited bodies, an unsolicited second response. After an answer that leaves the
byte stream ambiguous (`POISONING`), any further request on that connection is a violation:
the router reused a connection it could not know the state of.

Like a server that does not switch protocols (nginx in front of an app), it parses the bytes
after an Upgrade request as the next request unless its script answers 101; after a 101 it
echoes raw bytes.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import h11

# h11 has this state but does not list it among its exports.
MIGHT_SWITCH = vars(h11)["MIGHT_SWITCH_PROTOCOL"]
TAG_PATTERN = re.compile(rb"tag-[0-9a-z]+-[0-9]+")
# A complete response carrying a tag no client ever sent: if a client receives it, a replica
# managed to inject a response of its own choosing.
FORGED = b"HTTP/1.1 200 OK\r\nX-Tag: tag-forged-0\r\nContent-Length: 0\r\n\r\n"

# The head of a response whose body is whatever the replica sends next.
FORGED_HEAD = b"HTTP/1.1 200 OK\r\nX-Tag: tag-forged-1\r\nContent-Length: 40\r\n\r\n"

SCRIPTS = (
    "ok",  # 200 with Content-Length
    "chunked",  # 200, chunked with chunk extensions
    "trailers",  # 200, chunked, with a trailer field carrying the tag
    "close",  # 200 with no framing: the body ends when the replica closes
    "close_gzip",  # the same with Transfer-Encoding: gzip (not chunked: still close-delimited)
    "early",  # 200 as soon as the head arrives, before the request body
    "interim",  # 100 Continue and 103 Early Hints before the 200
    "status_099",  # `099` carrying a forged response as its body
    "status_99",  # a two-digit status
    "status_600",  # a three-digit status outside 100-599
    "status_garbage",  # not a number
    "empty_with_body",  # 204 (or a HEAD answer) followed by body bytes that hold a response
    "not_modified_with_body",  # 304 followed by body bytes that hold a response
    "cl_te",  # both Content-Length and Transfer-Encoding
    "unsolicited",  # a second, unrequested response right after the real one
    "unsolicited_head",  # the same, only its head: whatever comes next looks like its body
    "switch",  # 101 when the request asked to upgrade (else "ok"), then echo raw bytes
)
# Answers after which the replica's byte stream cannot be trusted: the connection must be
# closed by the router, never reused.
POISONING = frozenset(
    {
        "status_099",
        "status_99",
        "status_garbage",
        "empty_with_body",
        "not_modified_with_body",
        "cl_te",
        "unsolicited",
        "unsolicited_head",
    }
)
CLOSING = frozenset({"close", "close_gzip"})


@dataclass
class UpstreamRequest:
    """One request as h11 read it on a replica connection."""

    connection: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    complete: bool = False
    answered: bool = False

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def tag(self) -> bytes:
        return self.header(b"x-tag") or b""

    @property
    def script(self) -> str:
        return (self.header(b"x-script") or b"ok").decode("latin-1")


@dataclass
class RecordedConnection:
    index: int
    raw: bytearray = field(default_factory=bytearray)
    requests: list[UpstreamRequest] = field(default_factory=list)
    tunnel: bytearray = field(default_factory=bytearray)
    poisoned_by: str | None = None
    closed: bool = False
    parser: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER))

    def unframed_bytes(self) -> bytes:
        """Bytes received after the last complete request that do not (yet) form a request
        head: a smuggled or unframed body, when nothing is in flight."""
        if self.parser.their_state is not h11.IDLE:
            return b""
        return bytes(self.parser.trailing_data[0])


class RecordingUpstream:
    """The server: start with `await start()`, read `connections`, `requests` and
    `violations` (problems seen while serving, each a sentence)."""

    def __init__(self) -> None:
        self.connections: list[RecordedConnection] = []
        self.requests: list[UpstreamRequest] = []  # every connection's, in arrival order
        self.violations: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()  # ends each handler's read, rather than cancelling it
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RecordedConnection(len(self.connections))
        self.connections.append(conn)
        self._writers.add(writer)
        try:
            while not conn.closed:
                data = await reader.read(65536)
                conn.raw += data
                if self._tunnel(conn, data, writer):
                    continue
                self._feed(conn, data, writer)
                if not data:
                    break
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            conn.closed = True
            self._writers.discard(writer)
            writer.close()

    def _tunnel(self, conn: RecordedConnection, data: bytes, writer: asyncio.StreamWriter) -> bool:
        """After a 101 everything is raw: echo it. False when not tunnelled."""
        if conn.parser.our_state is not h11.SWITCHED_PROTOCOL:
            return False
        conn.tunnel += data
        if data:
            writer.write(data)
        else:
            conn.closed = True
        return True

    def _feed(self, conn: RecordedConnection, data: bytes, writer: asyncio.StreamWriter) -> None:
        conn.parser.receive_data(data)
        while not conn.closed:
            try:
                event = conn.parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(conn, exc, data, writer)
                return
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return
            if event is h11.PAUSED:
                if conn.parser.our_state is h11.SWITCHED_PROTOCOL:
                    rest = conn.parser.trailing_data[0]
                    conn.tunnel += rest
                    writer.write(rest)
                return
            self._on_event(conn, event, writer)

    def _refuse(
        self,
        conn: RecordedConnection,
        exc: h11.RemoteProtocolError,
        data: bytes,
        writer: asyncio.StreamWriter,
    ) -> None:
        if data or conn.parser.their_state is h11.IDLE:
            self.violations.append(
                f"replica connection {conn.index}: h11 cannot parse what the router sent "
                f"({exc}); bytes: {bytes(conn.raw[-300:])!r}"
            )
        # else: the router closed in the middle of a request it had abandoned
        conn.closed = True
        writer.close()

    def _on_event(
        self, conn: RecordedConnection, event: object, writer: asyncio.StreamWriter
    ) -> None:
        if isinstance(event, h11.Request):
            self._begin(conn, event, writer)
            return
        current = conn.requests[-1]
        if isinstance(event, h11.Data):
            current.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            current.trailers = list(event.headers.raw_items())
            current.complete = True
            if not current.answered:
                self._answer(conn, current, writer)
            upgrading = conn.parser.their_state is MIGHT_SWITCH
            if not conn.closed and upgrading and current.script == "switch":
                writer.write(conn.parser.send(_switch_event(current)) or b"")
                return
            self._next_message(conn)

    def _begin(
        self, conn: RecordedConnection, event: h11.Request, writer: asyncio.StreamWriter
    ) -> None:
        request = UpstreamRequest(
            conn.index, event.method, event.target, list(event.headers.raw_items())
        )
        request.headers = [(k.lower(), v) for k, v in request.headers]
        if conn.poisoned_by is not None:
            self.violations.append(
                f"replica connection {conn.index} was reused for {request.tag!r} after "
                f"answer {conn.poisoned_by!r} left its byte stream ambiguous"
            )
        conn.requests.append(request)
        self.requests.append(request)
        if request.script == "early":
            self._answer(conn, request, writer)

    def _answer(
        self, conn: RecordedConnection, request: UpstreamRequest, writer: asyncio.StreamWriter
    ) -> None:
        request.answered = True
        script = request.script
        upgrading = conn.parser.their_state is MIGHT_SWITCH
        if script == "switch" and upgrading:
            return  # the 101 is sent through h11 (see _switch_event) to enter tunnel mode
        writer.write(response_bytes(script, request))
        if script in POISONING:
            conn.poisoned_by = script
        if script in CLOSING:
            conn.closed = True
            writer.close()

    def _next_message(self, conn: RecordedConnection) -> None:
        """h11 serves one request per Connection object here: start a fresh one with the
        bytes already received (a server that does not switch protocols reads on)."""
        rest, closed = conn.parser.trailing_data
        conn.parser = h11.Connection(h11.SERVER)
        if rest:
            conn.parser.receive_data(bytes(rest))
        if closed:
            conn.parser.receive_data(b"")


def _switch_event(request: UpstreamRequest) -> h11.InformationalResponse:
    return h11.InformationalResponse(
        status_code=101,
        headers=[
            (b"X-Tag", request.tag),
            (b"Connection", b"upgrade"),
            (b"Upgrade", request.header(b"upgrade") or b"x"),
        ],
    )


def response_bytes(script: str, request: UpstreamRequest) -> bytes:
    """The exact bytes of `script`'s answer to `request`."""
    tag, head_only = request.tag, request.method == b"HEAD"
    malformed = _malformed(script, tag, head_only)
    return malformed if malformed is not None else _well_formed(script, tag, head_only)


def _sized(status: bytes, tag: bytes, payload: bytes) -> bytes:
    """A response with `payload` framed by Content-Length (whatever the status allows)."""
    return b"HTTP/1.1 %s\r\nX-Tag: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        tag,
        len(payload),
        payload,
    )


def _proper(status: bytes, tag: bytes, head_only: bool) -> bytes:
    """A Content-Length answer; to HEAD, the same head without the body."""
    body = b"tag=" + tag
    whole = _sized(status, tag, body)
    return whole[: -len(body)] if head_only else whole


def _well_formed(script: str, tag: bytes, head_only: bool) -> bytes:
    body = b"" if head_only else b"tag=" + tag
    chunked_head = b"HTTP/1.1 200 OK\r\nX-Tag: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % tag
    chunks = b"" if head_only else _CHUNKS % (len(tag), tag)
    if script == "chunked":
        return chunked_head + (chunks and chunks + b"0\r\n\r\n")
    if script == "trailers":
        return chunked_head + (chunks and chunks + b"0\r\nX-Trailer-Tag: %s\r\n\r\n" % tag)
    if script == "close":
        return b"HTTP/1.1 200 OK\r\nX-Tag: %s\r\n\r\n%s" % (tag, body)
    if script == "close_gzip":
        return b"HTTP/1.1 200 OK\r\nX-Tag: %s\r\nTransfer-Encoding: gzip\r\n\r\n%s" % (tag, body)
    ok = _proper(b"200 OK", tag, head_only)
    if script == "interim":
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\nX-Hint-Tag: %s\r\n\r\n" % tag
        return b"HTTP/1.1 100 Continue\r\n\r\n" + hints + ok
    if script == "status_600":
        return _proper(b"600 Odd", tag, head_only)
    return ok  # ok, early, switch without an upgrade


def _malformed(script: str, tag: bytes, head_only: bool) -> bytes | None:
    """The answers that leave the replica's byte stream ambiguous (`POISONING`)."""
    body = b"tag=" + tag
    ok = _proper(b"200 OK", tag, head_only)
    if script == "status_099":
        return b"HTTP/1.1 099 Odd\r\nContent-Length: %d\r\n\r\n%s" % (len(FORGED), FORGED)
    if script == "status_99":
        return _sized(b"99 X", tag, body)
    if script == "status_garbage":
        return _sized(b"2x0 OK", tag, body)
    if script == "empty_with_body":
        return _sized(b"200 OK" if head_only else b"204 No Content", tag, FORGED)
    if script == "not_modified_with_body":
        return _sized(b"304 Not Modified", tag, FORGED)
    if script == "cl_te":
        return (
            b"HTTP/1.1 200 OK\r\nX-Tag: %s\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n%s0\r\n\r\n%s" % (tag, _CHUNKS % (len(tag), tag), FORGED)
        )
    if script == "unsolicited":
        return ok + FORGED
    if script == "unsolicited_head":
        return ok + FORGED_HEAD
    return None


_CHUNKS = b'4;ext=1\r\ntag=\r\n%x;q="a"\r\n%s\r\n'
