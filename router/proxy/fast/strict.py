"""Strict reading of a client's request head, because a proxy is where smuggling happens.

llhttp (via httptools, no leniency flags) already refuses the framing attacks: both
Content-Length and Transfer-Encoding, duplicate or non-numeric Content-Length, a
Transfer-Encoding whose last coding is not chunked, bad chunk sizes, obsolete line folding,
bare CR or LF, control characters in values, whitespace before the colon. What it lets
through and this module refuses: a missing or repeated Host in HTTP/1.1, HTTP versions other
than 1.0/1.1, CONNECT, and targets that are neither origin-form nor absolute-form for the
host the request names (the router must never act as an open forward proxy).

A request is an upgrade only when `Connection` has the token `upgrade` (comma-separated,
trimmed, case-insensitive), `Upgrade` is present, and llhttp agrees it upgraded; if the two
readings differ, or an upgrade request carries a body, the request is refused (400): the
bytes after it could otherwise be read as another request by a server that does not switch.

A `close` token in `Connection` ends the connection after the response whatever else it
lists (RFC 9112 section 9.3), for HTTP/1.0 too (llhttp lets `keep-alive, close` keep it).
"""

from __future__ import annotations

from yarl import URL

from router.errors import ClientRequestError
from router.proxy.fast.rules import RawHeaders

_NOTED = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)


class RequestHead:
    """A validated request head, ready to forward. (A plain class: built once per request,
    and positional construction is measurably cheaper than a dataclass's keywords.)"""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "forward_block",
        "has_body",
        "headers",
        "host",
        "keep_alive",
        "method",
        "raw_target",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,  # origin-form: path and query
        raw_target: bytes,  # the same, as sent upstream
        version: str,  # "1.1" or "1.0"
        headers: RawHeaders,
        host: str | None,
        content_length: int | None,
        chunked: bool,
        upgrade: str | None,  # the Upgrade value when the client asked to switch protocols
        expect_continue: bool,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.raw_target = raw_target
        self.version = version
        self.headers = headers
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.keep_alive = keep_alive
        self.has_body = chunked or bool(content_length)
        # The header lines sent upstream, built by the first exchange that uses this head
        # (a connection's peer and trust do not change, so neither does the block).
        self.forward_block: bytes | None = None


def bad_request(message: str, code: str = "bad_request") -> ClientRequestError:
    return ClientRequestError(400, code, message)


def connection_tokens(value: bytes) -> set[bytes]:
    """`Connection` as a set of tokens: comma-separated, trimmed, lower-case."""
    return {t.strip() for t in value.lower().split(b",")} - {b""}


def validate(
    method: str,
    url: bytes,
    version: str,
    headers: RawHeaders,
    keep_alive: bool,
    llhttp_upgrade: bool = False,
) -> RequestHead:
    if method == "CONNECT":
        raise ClientRequestError(405, "method_not_allowed", "CONNECT is not proxied")
    if version not in ("1.1", "1.0"):
        raise ClientRequestError(505, "http_version_not_supported", "HTTP/1.0 or 1.1 only")
    host: bytes | None = None
    hosts = 0
    content_length: int | None = None
    chunked = False
    connection = b""
    upgrade: bytes | None = None
    expect_continue = False
    for name, value in headers:
        lower = name.lower()
        if lower not in _NOTED:
            continue
        if lower == b"host":
            hosts += 1
            host = value
        elif lower == b"content-length":
            content_length = int(value)  # llhttp allowed only one, all digits
        elif lower == b"transfer-encoding":
            chunked = True  # llhttp allowed only a coding list ending in chunked
        elif lower == b"connection":
            connection += b"," + value.lower()
        elif lower == b"upgrade":
            upgrade = value
        else:
            expect_continue = value.lower() == b"100-continue"
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise bad_request("exactly one Host header is required", "bad_host")
    tokens = connection_tokens(connection)
    if upgrade is not None and b"upgrade" not in tokens:
        upgrade = None
    if b"close" in tokens:
        # RFC 9112 9.3: close wins over keep-alive (llhttp keeps HTTP/1.0 `keep-alive, close`).
        keep_alive = False
    if (upgrade is not None) != llhttp_upgrade:
        raise bad_request("ambiguous protocol upgrade", "bad_upgrade")
    if upgrade is not None and (chunked or content_length):
        raise bad_request("an Upgrade request cannot carry a body", "bad_upgrade")
    host_str = host.decode("latin-1") if host is not None else None
    target = url.decode("latin-1")
    if not target.startswith("/"):
        target = _absolute_target(target, host_str or "")
        url = target.encode("latin-1")
    return RequestHead(
        method,
        target,
        url,
        version,
        headers,
        host_str,
        content_length,
        chunked,
        upgrade.decode("latin-1") if upgrade is not None else None,
        expect_continue,
        keep_alive,
    )


def _absolute_target(raw: str, host_header: str) -> str:
    """Absolute form is accepted only for the host the request is addressed to."""
    try:
        target = URL(raw, encoded=True)
    except ValueError:
        raise bad_request("malformed request target", "bad_target") from None
    named = host_header.rsplit(":", 1)[0].lower()
    if not target.is_absolute() or (target.host or "").lower() != named:
        raise ClientRequestError(
            400, "absolute_uri_not_allowed", "absolute-form target for another host"
        )
    return target.raw_path_qs
