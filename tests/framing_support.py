"""The client half of the differential framing tests: requests as hostile clients write them,
and their responses read back with h11 (an HTTP/1.1 parser independent of the router's).

A `ClientRequest` is a value hypothesis generates; `render` turns it into exact bytes with a
tag that the replica echoes. `ResponseReader` splits what the router sent back into
responses, one per request, the way a strict client would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import h11

from tests.hostile_replica import TAG_PATTERN

# A request hidden in a body: if it ever reaches a replica as a request, framing was lost.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\nX-Tag: tag-smuggled-0\r\n\r\n"
UPGRADE_PROTOCOL = b"tunnel-test/1"


@dataclass(frozen=True)
class ClientRequest:
    method: str
    version: str  # "1.1" or "1.0"
    framing: str  # "none", "length" or "chunked"
    body: bytes
    chunk_sizes: tuple[int, ...] = ()  # how a chunked body is split (the rest is one chunk)
    extensions: bool = False  # chunk extensions on every chunk
    trailers: bool = False  # a trailer field carrying the tag after the last chunk
    connection: tuple[str, ...] = ()  # Connection tokens, as written
    upgrade: bool = False  # an Upgrade header (an upgrade only with the `upgrade` token)
    expect: bool = False  # Expect: 100-continue
    script: str = "ok"  # how the replica answers (tests/hostile_replica.SCRIPTS)

    @property
    def tokens(self) -> set[str]:
        return {t.strip().lower() for t in self.connection}

    @property
    def asks_upgrade(self) -> bool:
        """RFC 9110 (and h11, and llhttp): the `upgrade` token and an Upgrade header."""
        return self.upgrade and "upgrade" in self.tokens

    @property
    def closes(self) -> bool:
        return "close" in self.tokens or (self.version == "1.0" and "keep-alive" not in self.tokens)

    @property
    def must_be_last(self) -> bool:
        return self.asks_upgrade or self.closes


def render(request: ClientRequest, tag: bytes) -> bytes:
    lines = [
        b"%s /t/%s HTTP/%s" % (request.method.encode(), tag, request.version.encode()),
        b"Host: app.test",
        b"X-Tag: " + tag,
        b"X-Script: " + request.script.encode(),
    ]
    if request.connection:
        lines.append(b"Connection: " + ", ".join(request.connection).encode())
    if request.upgrade:
        lines.append(b"Upgrade: " + UPGRADE_PROTOCOL)
    if request.expect and request.framing != "none":
        lines.append(b"Expect: 100-continue")
    if request.framing == "length":
        lines.append(b"Content-Length: %d" % len(request.body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + request.body
    if request.framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        return b"\r\n".join(lines) + b"\r\n\r\n" + _chunks(request, tag)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _chunks(request: ClientRequest, tag: bytes) -> bytes:
    ext = b';ext="v";x' if request.extensions else b""
    out, rest = [], request.body
    for size in request.chunk_sizes:
        if not rest:
            break
        piece, rest = rest[: max(size, 1)], rest[max(size, 1) :]
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
    if rest:
        out.append(b"%x%s\r\n%s\r\n" % (len(rest), ext, rest))
    out.append(b"0%s\r\n" % ext)
    if request.trailers:
        out.append(b"X-Client-Trailer: %s\r\n" % tag)
    out.append(b"\r\n")
    return b"".join(out)


@dataclass
class ClientResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    interim: list[tuple[int, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    close_delimited: bool = False

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def tag(self) -> bytes | None:
        return self.header(b"x-tag")

    @property
    def says_close(self) -> bool:
        value = (self.header(b"connection") or b"").lower()
        return b"close" in {t.strip() for t in value.split(b",")}

    def tags_seen(self) -> set[bytes]:
        """Every tag anywhere in this response: interim heads, head, body, trailers."""
        blobs = [v for _, headers in self.interim for _, v in headers]
        blobs += [v for _, v in self.headers] + [v for _, v in self.trailers] + [self.body]
        return {m for blob in blobs for m in TAG_PATTERN.findall(blob)}


class ResponseReader:
    """Splits the bytes a router sent on one client connection into responses."""

    def __init__(self, requests: list[ClientRequest]) -> None:
        self.requests = requests
        self.buffer = b""
        self.eof = False
        self.responses: list[ClientResponse] = []
        self.error: str | None = None
        self.tunnel = b""  # bytes after a 101

    @property
    def switched(self) -> bool:
        return bool(self.responses) and self.responses[-1].status == 101

    def feed(self, data: bytes) -> None:
        if not data:
            self.eof = True
        if self.switched:
            self.tunnel += data
            return
        self.buffer += data
        while self.error is None and not self.switched and self._parse_one():
            pass

    def done(self) -> bool:
        return self.error is not None or len(self.responses) >= len(self.requests)

    def _parse_one(self) -> bool:
        """Parse the next response if all of it has arrived; False when more is needed."""
        index = len(self.responses)
        if not self.buffer and (self.eof or index >= len(self.requests)):
            return False  # nothing more came
        if index >= len(self.requests) or not (self.buffer or self.eof):
            if self.buffer and index >= len(self.requests):
                self.error = f"bytes after the last response: {self.buffer[:200]!r}"
            return False
        conn = _primed_client(self.requests[index])
        conn.receive_data(_chunked_only(self.buffer))
        if self.eof:
            conn.receive_data(b"")
        response: ClientResponse | None = None
        interim: list[tuple[int, list[tuple[bytes, bytes]]]] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.error = f"response {index} does not parse ({exc}): {self.buffer[:300]!r}"
                return False
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return False
            if isinstance(event, h11.InformationalResponse):
                interim.append((event.status_code, list(event.headers.raw_items())))
                if event.status_code == 101:
                    headers = list(event.headers.raw_items())
                    self.responses.append(ClientResponse(101, headers, interim))
                    self.tunnel = bytes(conn.trailing_data[0])
                    return False
            elif isinstance(event, h11.Response):
                response = ClientResponse(event.status_code, list(event.headers.raw_items()))
                response.interim = interim
                response.close_delimited = _close_delimited(response, self.requests[index])
            elif isinstance(event, h11.Data) and response is not None:
                response.body += event.data
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                response.trailers = list(event.headers.raw_items())
                self.responses.append(response)
                self.buffer = bytes(conn.trailing_data[0])
                return True


# `Transfer-Encoding: gzip, chunked` is right (a relayed content coding, then chunked), but
# h11 reads only `chunked`: it frames the same way, so h11 is shown just that.
_CODINGS_THEN_CHUNKED = re.compile(
    rb"(?im)^(transfer-encoding:)[ \t]*[^\r\n]*,[ \t]*chunked[ \t]*\r$"
)


def _chunked_only(data: bytes) -> bytes:
    """The responses with any coding before `chunked` left out (bodies here are tags only)."""
    return _CODINGS_THEN_CHUNKED.sub(rb"\1 chunked\r", data)


def _primed_client(request: ClientRequest) -> h11.Connection:
    """An h11 client that believes it sent `request` (method and upgrade are what decide
    how a response is framed)."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "app.test")]
    if request.asks_upgrade:
        headers += [("Connection", "upgrade"), ("Upgrade", UPGRADE_PROTOCOL.decode())]
    conn.send(h11.Request(method=request.method, target="/", headers=headers))
    conn.send(h11.EndOfMessage())
    return conn


def _close_delimited(response: ClientResponse, request: ClientRequest) -> bool:
    if request.method == "HEAD" or response.status in (204, 304):
        return False
    chunked = (response.header(b"transfer-encoding") or b"").lower().endswith(b"chunked")
    return response.header(b"content-length") is None and not chunked
