"""The rules a client's request head must meet before either engine forwards it, and the
refusal each broken rule gets: one place, so both engines refuse a bad request alike (same
status, error code and message) and differ only in how they read the head.

Message framing (Content-Length against Transfer-Encoding, chunk sizes, bare CR or LF...)
is the HTTP parser's own; what is here is what a parser lets through and a proxy must still
refuse: CONNECT (the router is never a forward proxy), versions other than 1.0 and 1.1, a
missing Host in HTTP/1.1 or a repeated one, an absolute-form target naming another host
than the request's, a declared body over `proxy.max_request_body`, and the size limits of
a head (the fast engine checks them as bytes arrive; aiohttp's parser has its own).

The engines call `check_head` with what their parser read, then `check_declared_length`
(the limit can change on a reload while a validated head is reused).
"""

from __future__ import annotations

from typing import Final

from yarl import URL

from router.errors import ClientRequestError

# Limits on what a client may send before its request is even looked at.
MAX_REQUEST_LINE: Final = 8 * 1024  # longer targets get 414
MAX_HEADER_BLOCK: Final = 32 * 1024  # a bigger header block gets 431
MAX_HEADER_COUNT: Final = 100  # more header fields get 431
# A head still incomplete past this many received bytes is refused at once, so a header
# line with no end costs neither memory nor parser time.
MAX_HEAD_BYTES: Final = MAX_REQUEST_LINE + MAX_HEADER_BLOCK

VERSIONS = ("1.1", "1.0")


def bad_request(message: str, code: str = "bad_request") -> ClientRequestError:
    return ClientRequestError(400, code, message)


def body_too_large(limit: int) -> ClientRequestError:
    """413, for a declared length over the limit and for a body that grows past it."""
    return ClientRequestError(413, "body_too_large", f"limit {limit} bytes")


def uri_too_long() -> ClientRequestError:
    return ClientRequestError(414, "uri_too_long", f"limit {MAX_REQUEST_LINE} bytes")


def headers_too_large(detail: str = f"limit {MAX_HEADER_BLOCK} bytes") -> ClientRequestError:
    return ClientRequestError(431, "headers_too_large", detail)


def head_too_slow(seconds: float) -> ClientRequestError:
    """408: a request head not complete within `proxy.client_header_timeout` (slowloris)."""
    return ClientRequestError(408, "request_timeout", f"request head not complete in {seconds:g}s")


def body_too_slow(seconds: float) -> ClientRequestError:
    """408: no request body bytes for `proxy.client_body_timeout`."""
    return ClientRequestError(408, "request_timeout", f"no request body data for {seconds:g}s")


def connection_tokens(value: bytes) -> set[bytes]:
    """`Connection` as a set of tokens: comma-separated, trimmed, lower-case."""
    return {t.strip() for t in value.lower().split(b",")} - {b""}


def check_head(method: str, version: str, hosts: int, host: str | None, target: str) -> str:
    """The origin-form target to forward (path and query), or the ClientRequestError that
    refuses the head. `version` is `major.minor`; `hosts` counts the Host fields, `host`
    is the value of the (last) one."""
    if method == "CONNECT":
        raise ClientRequestError(405, "method_not_allowed", "CONNECT is not proxied")
    if version not in VERSIONS:  # HTTP/0.9 or 2.0 would be forwarded as 1.1
        raise ClientRequestError(505, "http_version_not_supported", "HTTP/1.0 or 1.1 only")
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise bad_request("one Host header is required (HTTP/1.0: at most one)", "bad_host")
    if target.startswith("/"):
        return target
    return _origin_form(target, host or "")


def check_declared_length(length: int | None, limit: int) -> None:
    if length is not None and length > limit:
        raise body_too_large(limit)


def _origin_form(raw: str, host_header: str) -> str:
    """Absolute form is accepted only for the host the request is addressed to, so the
    router can never be used as an open forward proxy."""
    try:
        target = URL(raw, encoded=True)
    except ValueError:
        raise bad_request("malformed request target", "bad_target") from None
    named = host_header.rsplit(":", 1)[0].lower()
    if not target.is_absolute() or (target.host or "").lower() != named:
        raise bad_request("absolute-form target for another host", "absolute_uri_not_allowed")
    return target.raw_path_qs
