"""The fast engine's framing decisions as pure functions (no sockets): how a response is
framed toward the client, and when a request head is an upgrade."""

from __future__ import annotations

import pytest

from router.errors import (
    ClientRequestError,
    NoRoutableReplica,
    ProxyError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from router.proxy.fast import wire
from router.proxy.fast.strict import validate
from router.proxy.framing import response_framing
from router.proxy.request_rules import connection_tokens


@pytest.mark.parametrize(
    ("method", "version", "status", "length", "codings", "expected"),
    [
        ("GET", "1.1", 200, b"5", None, (b"Content-Length: 5\r\n", False, False, False)),
        (
            "GET",
            "1.1",
            200,
            None,
            b"chunked",
            (b"Transfer-Encoding: chunked\r\n", True, False, False),
        ),
        # A close-delimited body with a coding: re-chunked, the coding kept, ended at the close.
        (
            "GET",
            "1.1",
            200,
            None,
            b"gzip",
            (b"Transfer-Encoding: gzip, chunked\r\n", True, True, False),
        ),
        (
            "GET",
            "1.1",
            200,
            None,
            b"gzip, chunked",
            (b"Transfer-Encoding: gzip, chunked\r\n", True, False, False),
        ),
        ("GET", "1.1", 200, None, None, (b"Transfer-Encoding: chunked\r\n", True, True, False)),
        ("GET", "1.0", 200, None, None, (b"", False, True, True)),
        ("GET", "1.0", 200, None, b"chunked", (b"", False, False, True)),
        ("HEAD", "1.1", 200, b"5", None, (b"Content-Length: 5\r\n", False, False, False)),
        ("HEAD", "1.1", 200, None, b"chunked", (b"", False, False, False)),
        ("GET", "1.1", 204, b"5", None, (b"", False, False, False)),
        ("GET", "1.1", 304, None, b"chunked", (b"", False, False, False)),
    ],
)
def test_response_framing(
    method: str,
    version: str,
    status: int,
    length: bytes | None,
    codings: bytes | None,
    expected: tuple[bytes, bool, bool, bool],
) -> None:
    got = response_framing(method, version, status, length, codings)
    assert (got.framing, got.chunked_out, got.until_eof, got.close) == expected


def test_connection_tokens_are_exact() -> None:
    assert connection_tokens(b"keep-alive, Upgrade ,,") == {b"keep-alive", b"upgrade"}
    assert b"upgrade" not in connection_tokens(b"x-upgrade, upgraded")


def _head(connection: bytes, extra: list[tuple[bytes, bytes]], llhttp_upgrade: bool) -> str | None:
    headers = [(b"Host", b"x"), (b"Connection", connection), (b"Upgrade", b"websocket"), *extra]
    return validate("GET", b"/", "1.1", headers, True, llhttp_upgrade).upgrade


def test_an_upgrade_needs_the_exact_token_and_llhttp_agreeing() -> None:
    assert _head(b"Upgrade", [], True) == "websocket"
    assert _head(b"x-upgrade", [], False) is None
    with pytest.raises(ClientRequestError):
        _head(b"x-upgrade", [], True)  # the parser would switch where strict would not
    with pytest.raises(ClientRequestError):
        _head(b"upgrade", [], False)


def test_an_upgrade_with_a_body_is_refused() -> None:
    with pytest.raises(ClientRequestError) as refused:
        _head(b"upgrade", [(b"Content-Length", b"3")], True)
    assert refused.value.status == 400


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_close_token_wins_over_keep_alive(version: str) -> None:
    """RFC 9112 9.3; llhttp reports HTTP/1.0 `keep-alive, close` as keep-alive."""
    for value in (b"keep-alive, close", b"Close", b"x-foo , CLOSE"):
        head = validate("GET", b"/", version, [(b"Host", b"x"), (b"Connection", value)], True)
        assert not head.keep_alive
    head = validate("GET", b"/", version, [(b"Host", b"x"), (b"Connection", b"keep-alive")], True)
    assert head.keep_alive


@pytest.mark.parametrize(
    "error",
    [
        ClientRequestError(400, "bad_request"),
        UpstreamProtocolError("bad status"),
        NoRoutableReplica("none"),
        UpstreamTimeout("slow"),
    ],
    ids=lambda e: str(e.status),
)
def test_router_errors_to_head_have_the_head_only(error: ProxyError) -> None:
    """RFC 9110 9.3.2: the same head (Content-Length included), no body."""
    whole = wire.error_response(error, close=False)
    head_only = wire.error_response(error, close=False, head_only=True)
    assert head_only.endswith(b"\r\n\r\n")
    assert whole.startswith(head_only)
    assert b"Content-Length: " in head_only
