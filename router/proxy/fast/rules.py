"""The header rules of `router.proxy.headers`, applied to raw header bytes.

Decoding every header to `str`, filtering, and encoding it again costs more than the rest
of a small request, so the common cases are done on bytes here with the same sets
(hop-by-hop, forwarding, Via). The rare cases fall back to the `str` functions themselves:
a Connection header naming an end-to-end header, or a trusted peer whose forwarding headers
must be merged. tests/test_fast_rules.py checks both paths give the same result.

Also here: the header block sent upstream for a request head (`forward_block`) and the
lazily decoded view of request headers that routing policies read (`LazyHeaders`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from router.proxy.headers import (
    FORWARDING,
    HOP_BY_HOP,
    VIA,
    forward_request_headers,
    forward_response_headers,
)
from router.proxy.headers import request_id as headers_request_id

if TYPE_CHECKING:
    from router.proxy.fast.strict import RequestHead

RawHeaders = list[tuple[bytes, bytes]]

_HOP = frozenset(h.encode() for h in HOP_BY_HOP)
_FORWARDING = frozenset(h.encode() for h in FORWARDING)
_VIA = VIA.encode()
# Request headers whose framing or meaning the router sets itself.
_OWN_REQUEST = frozenset({b"host", b"content-length", b"expect", b"via", b"x-request-id"})
_SPECIAL_REQUEST = _HOP | _FORWARDING | _OWN_REQUEST
_SPECIAL_RESPONSE = _HOP | {b"content-length", b"via", b"x-request-id"}


def decode(headers: RawHeaders) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


def _tokens(values: list[bytes]) -> set[bytes]:
    return {t.strip().lower() for v in values for t in v.split(b",") if t.strip()}


# Connection tokens that name no end-to-end header in practice: the hop-by-hop names and
# `close` (a client with keep-alive off sends `Connection: close` on every request).
_PLAIN_TOKENS = _HOP | {b"close"}
_PLAIN: dict[bytes, frozenset[bytes] | None] = {}


def _plain_tokens(values: list[bytes]) -> frozenset[bytes] | None:
    """Connection's tokens when all are hop-by-hop names or `close`, else None; cached,
    since the same few values (`keep-alive`, `close`, `upgrade`) repeat."""
    if len(values) != 1:
        tokens = _tokens(values)
        return frozenset(tokens) if tokens <= _PLAIN_TOKENS else None
    if values[0] in _PLAIN:
        return _PLAIN[values[0]]
    tokens = _tokens(values)
    plain = frozenset(tokens) if tokens <= _PLAIN_TOKENS else None
    if len(_PLAIN) < 256:
        _PLAIN[values[0]] = plain
    return plain


def _names_only_hop_by_hop(values: list[bytes], headers: RawHeaders) -> bool:
    """Whether Connection names nothing the bytes rules would keep: only hop-by-hop names,
    or `close` while no header is literally named `close` (the str rules drop a header
    named by Connection, whatever its name)."""
    tokens = _plain_tokens(values)
    if tokens is None:
        return False
    return b"close" not in tokens or all(name.lower() != b"close" for name, _ in headers)


def _encode(headers: list[tuple[str, str]]) -> bytes:
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1")


_DROPPED: dict[frozenset[bytes], frozenset[bytes]] = {}


def _dropped(edge: frozenset[bytes]) -> frozenset[bytes]:
    """The names an untrusted peer's request loses or the router sets itself; one set per
    configured edge list, so the loop does one lookup per header."""
    dropped = _DROPPED.get(edge)
    if dropped is None:
        dropped = _SPECIAL_REQUEST | edge
        if len(_DROPPED) < 16:
            _DROPPED[edge] = dropped
    return dropped


def request_block(
    headers: RawHeaders,
    *,
    peer: str,
    peer_trusted: bool,
    scheme: str,
    host: str | None,
    edge: frozenset[bytes] = frozenset(),
) -> bytes:
    """Header lines to send upstream, without Host and framing (the caller adds them);
    `edge` (lower-case names) are dropped like the forwarding headers for untrusted peers."""
    if not peer_trusted:
        out: list[bytes] = []
        connection: list[bytes] = []
        via: list[bytes] = []
        dropped = _dropped(edge)
        for name, value in headers:
            if name.lower() in dropped:
                lower = name.lower()
                if lower == b"connection":
                    connection.append(value)
                elif lower == b"via":
                    via.append(value)
                continue
            out += (name, b": ", value, b"\r\n")
        if not connection or _names_only_hop_by_hop(connection, headers):
            out.append(
                b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n"
                % (peer.encode(), scheme.encode())
            )
            if host:
                out.append(b"X-Forwarded-Host: %s\r\n" % host.encode("latin-1"))
            via.append(_VIA)
            out += (b"Via: ", b", ".join(via), b"\r\n")
            return b"".join(out)
    forwarded = forward_request_headers(
        decode(headers),
        peer=peer,
        peer_trusted=peer_trusted,
        scheme=scheme,
        host=host,
        edge=frozenset(name.decode("latin-1") for name in edge),
    )
    return _encode([(k, v) for k, v in forwarded if k.lower() not in ("content-length", "expect")])


# Raw response header name -> whether it needs a rule; upstreams repeat the same spellings.
_SPECIAL_NAMES: dict[bytes, bool] = {}


def _remember(name: bytes) -> bool:
    special = name.lower() in _SPECIAL_RESPONSE
    if len(_SPECIAL_NAMES) < 1024:
        _SPECIAL_NAMES[name] = special
    return special


ResponseRules = tuple[bytes, bytes | None, bytes | None]


def response_block(headers: RawHeaders) -> ResponseRules:
    """Header lines for the client (hop-by-hop and Content-Length removed, Via appended),
    with the upstream's Content-Length value and its transfer codings (comma-joined, in
    order), None for either when absent. `framing.response_framing` decides from them."""
    out: list[bytes] = []
    connection: list[bytes] = []
    via: list[bytes] = []
    length: bytes | None = None
    codings: list[bytes] = []
    for name, value in headers:
        special = _SPECIAL_NAMES.get(name)
        if special is None:
            special = _remember(name)
        if special:
            lower = name.lower()
            if lower == b"content-length":
                length = value
            elif lower == b"transfer-encoding":
                codings.append(value)
            elif lower == b"connection":
                connection.append(value)
            elif lower == b"via":
                via.append(value)
            continue
        out += (name, b": ", value, b"\r\n")
    te = b", ".join(codings) if codings else None
    if connection and not _names_only_hop_by_hop(connection, headers):
        return _encode(forward_response_headers(decode(headers))), length, te
    via.append(_VIA)
    out += (b"Via: ", b", ".join(via), b"\r\n")
    return b"".join(out), length, te


def forward_block(
    head: RequestHead,
    peer: str,
    trusted: bool,
    scheme: str = "http",
    edge: frozenset[bytes] = frozenset(),
) -> bytes:
    """Everything after the request line and Host: forwarded headers, framing, blank line."""
    block = [
        request_block(
            head.headers, peer=peer, peer_trusted=trusted, scheme=scheme, host=head.host, edge=edge
        )
    ]
    if head.upgrade is not None:
        block.append(f"Connection: upgrade\r\nUpgrade: {head.upgrade}\r\n".encode("latin-1"))
    # Framing follows llhttp's parse of the body, upgrade or not (strict refuses an upgrade
    # with a body; this keeps the rule local: a parsed body is never sent unframed).
    if head.chunked:
        block.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        block.append(b"Content-Length: %d\r\n" % head.content_length)
    block.append(b"\r\n")
    return b"".join(block)


def request_id(head: RequestHead, trusted: bool) -> str:
    """The request id (`headers.request_id`); only a trusted peer's headers are searched."""
    given = None
    if trusted:
        for name, value in head.headers:
            if name.lower() == b"x-request-id":
                given = value.decode("latin-1")
                break
    return headers_request_id(given, trusted)


class LazyHeaders(Mapping[str, str]):
    """The request headers for routing policies, decoded only if a policy looks."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: RawHeaders) -> None:
        self._raw = raw
        self._decoded: CIMultiDict[str] | None = None

    def _headers(self) -> CIMultiDict[str]:
        if self._decoded is None:
            self._decoded = CIMultiDict(decode(self._raw))
        return self._decoded

    def __getitem__(self, key: str) -> str:
        return self._headers()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._raw)

    def getall(self, key: str, default: list[str] | None = None) -> list[str]:
        return self._headers().getall(key, default or [])
