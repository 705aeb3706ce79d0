"""How a relayed response is framed to the client: a pure function of the request head and
the response head, decided once from what the HTTP parser read and tested without sockets
(tests/test_fast_framing.py). Engine-independent: the fast engine writes the framing lines
it returns (`fast/relay.py`); the aiohttp engine, whose server writes its own, applies its
decisions (`aiohttp_relay.py`).

The rules (RFC 9112 section 6.3, in the parser's reading of the upstream bytes):
- only 100-199 are informational; they carry no body and are not relayed (101 switches
  protocols); any status outside 100-599 is a protocol error (502, connection closed);
- a response to HEAD, and 1xx/204/304, has no body whatever its headers say;
- Transfer-Encoding wins: with chunked as its last coding the body is chunked, otherwise
  it runs until the upstream closes; codings other than chunked are kept for the client;
- else Content-Length frames it; else it runs until the upstream closes;
- toward the client a body of unknown length is re-chunked for HTTP/1.1, and ends with the
  close for HTTP/1.0 (which then cannot keep the connection).
"""

from __future__ import annotations

NO_BODY_STATUSES = frozenset({101, 204, 304})


def last_coding_chunked(codings: bytes) -> bool:
    return codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def other_codings(codings: bytes) -> bytes:
    """The codings before a final chunked (`gzip, chunked` -> `gzip`), as the client gets
    them; chunked is the router's own framing toward the client."""
    kept = [c.strip() for c in codings.split(b",") if c.strip()]
    if kept and kept[-1].lower() == b"chunked":
        kept.pop()
    return b", ".join(kept)


class ResponseFraming:
    """framing: the header lines that frame the body for the client (no blank line);
    chunked_out: re-chunk body bytes; until_eof: the upstream's close ends the body;
    close: the client connection must close after this response."""

    __slots__ = ("chunked_out", "close", "framing", "until_eof")

    def __init__(self, framing: bytes, chunked_out: bool, until_eof: bool, close: bool) -> None:
        self.framing = framing
        self.chunked_out = chunked_out
        self.until_eof = until_eof
        self.close = close


_DECIDED: dict[tuple[str, str, int, bytes | None, bytes | None], ResponseFraming] = {}


def response_framing(
    method: str,
    version: str,
    status: int,
    length: bytes | None,
    codings: bytes | None,
) -> ResponseFraming:
    """Framing for a final response (status 200-599, or 101 handled by the caller); a pure
    function of its arguments, so decisions are kept (the same few repeat)."""
    key = (method, version, status, length, codings)
    decided = _DECIDED.get(key)
    if decided is None:
        decided = _decide(method, version, status, length, codings)
        if len(_DECIDED) < 4096:
            _DECIDED[key] = decided
    return decided


def _decide(
    method: str,
    version: str,
    status: int,
    length: bytes | None,
    codings: bytes | None,
) -> ResponseFraming:
    if method == "HEAD" or status in NO_BODY_STATUSES or status < 200:
        # No body follows; a HEAD response's Content-Length still describes the resource.
        framing = b""
        if length is not None and codings is None and status not in NO_BODY_STATUSES:
            framing = b"Content-Length: %s\r\n" % length
        return ResponseFraming(framing, False, False, False)
    if codings is not None:
        chunked_in = last_coding_chunked(codings)
        kept = other_codings(codings)
        return _unknown_length(version, kept, until_eof=not chunked_in)
    if length is not None:
        return ResponseFraming(b"Content-Length: %s\r\n" % length, False, False, False)
    return _unknown_length(version, b"", until_eof=True)


def _unknown_length(version: str, kept: bytes, *, until_eof: bool) -> ResponseFraming:
    if version == "1.1":
        codings = kept + b", chunked" if kept else b"chunked"
        return ResponseFraming(b"Transfer-Encoding: %s\r\n" % codings, True, until_eof, False)
    # HTTP/1.0 knows no transfer codings: the body ends with the close (codings other than
    # chunked cannot be declared to it; its bytes are relayed as the upstream sent them).
    return ResponseFraming(b"", False, until_eof, True)
