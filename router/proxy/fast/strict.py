"""Strict reading of a client's request head, because a proxy is where smuggling happens.

llhttp (via httptools, no leniency flags) already refuses the framing attacks: both
Content-Length and Transfer-Encoding, duplicate or non-numeric Content-Length, a
Transfer-Encoding whose last coding is not chunked, bad chunk sizes, obsolete line folding,
bare CR or LF, control characters in values, whitespace before the colon. What it lets
through is refused by the rules both engines share (`router.proxy.request_rules`: CONNECT,
versions other than 1.0/1.1, Host, absolute-form targets for another host); this module
reads the head's fields once for them and adds the fast engine's own upgrade rule.

A request is an upgrade only when `Connection` has the token `upgrade` (comma-separated,
trimmed, case-insensitive), `Upgrade` is present, and llhttp agrees it upgraded; if the two
readings differ, or an upgrade request carries a body, the request is refused (400): the
bytes after it could otherwise be read as another request by a server that does not switch.

A `close` token in `Connection` ends the connection after the response whatever else it
lists (RFC 9112 section 9.3), for HTTP/1.0 too (llhttp lets `keep-alive, close` keep it).
"""

from __future__ import annotations

from router.proxy.fast.rules import RawHeaders
from router.proxy.request_rules import bad_request, check_head, connection_tokens

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


_METHODS: dict[bytes, str] = {}


def method_name(raw: bytes) -> str:
    """llhttp's method bytes as a str, decoded once per method."""
    method = _METHODS.get(raw)
    if method is None:
        method = raw.decode("latin-1")
        if len(_METHODS) < 64:  # llhttp knows a fixed set of methods
            _METHODS[raw] = method
    return method


def validate(
    method: str,
    url: bytes,
    version: str,
    headers: RawHeaders,
    keep_alive: bool,
    llhttp_upgrade: bool = False,
) -> RequestHead:
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
    host_str = host.decode("latin-1") if host is not None else None
    raw_target = url.decode("latin-1")
    target = check_head(method, version, hosts, host_str, raw_target)
    if not raw_target.startswith("/"):  # absolute form, now origin-form
        url = target.encode("latin-1")
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
