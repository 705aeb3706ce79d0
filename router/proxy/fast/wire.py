"""Bytes on the wire: status lines, header blocks, chunk framing and error responses.

Header blocks are built once per message as one `bytes` object (a join over a small list),
bodies are passed through untouched and written with `writelines`, so a relayed message
costs at most one copy of its head.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from router.errors import ProxyError
from router.proxy.admission import retry_after
from router.proxy.request_rules import MAX_HEAD_BYTES

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int, reason: bytes = b"") -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`; the upstream's reason phrase is kept when it sent one."""
    if reason:
        return b"HTTP/1.1 %d %s\r\n" % (status, reason)
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b"Unknown"
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    return line


def partial_head_bytes(data: bytes, body_bytes: int, boundary: bytes = b"\r\n\r\n") -> int:
    """An upper bound of how many bytes of `data` (one read) belong to a head (or, with
    boundary CRLF, a trailer or chunk-size line) that began in it and is still incomplete:
    the bytes after the last boundary, and after the body bytes this read delivered (both
    precede its start)."""
    rest = len(data) - body_bytes
    if not rest:
        return 0  # all body (the common read inside a body): nothing to scan
    # Only the last MAX_HEAD_BYTES can matter: a longer partial head is over the limit anyway.
    end = data.rfind(boundary, max(0, len(data) - MAX_HEAD_BYTES - len(boundary)))
    after = len(data) - end - len(boundary) if end >= 0 else MAX_HEAD_BYTES + 1
    return min(after, rest)


def block_size(headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes of a header block as received (`Name: value\r\n` per field)."""
    return sum([len(name) + len(value) + 4 for name, value in headers])


def header_block(headers: list[tuple[str, str]]) -> bytes:
    """`Name: value\\r\\n` lines (latin-1, as HTTP/1.1 header bytes are)."""
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1")


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as buffers for `writelines` (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, CRLF]


def error_response(
    error: ProxyError, *, close: bool, request_id: str = "", head_only: bool = False
) -> bytes:
    """The same JSON body and status the aiohttp engine sends for this error; to a HEAD
    request the same head without the body (RFC 9110 9.3.2: a response to HEAD has none)."""
    body = json.dumps(error.body()).encode()
    head = [
        status_line(error.status),
        b"Content-Type: application/json; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
    ]
    if (after := retry_after(error)) is not None:
        head.append(b"Retry-After: %s\r\n" % after.encode())
    if request_id:
        head.append(b"X-Request-Id: %s\r\n" % request_id.encode("latin-1"))
    if close:
        head.append(b"Connection: close\r\n")
    head.append(CRLF)
    if not head_only:
        head.append(body)
    return b"".join(head)


def redirect_to_https(host: str | None, target: str, https_port: int) -> bytes:
    """`listen_tls.redirect_http`: a 308 to the same host and path on the TLS listener."""
    name = (host or "localhost").rsplit(":", 1)[0]
    port = "" if https_port == 443 else f":{https_port}"
    path = target if target.startswith("/") else "/"
    location = f"https://{name}{port}{path}".encode("latin-1")
    return status_line(308) + b"Location: " + location + b"\r\nContent-Length: 0\r\n\r\n"
