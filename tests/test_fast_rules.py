"""The fast engine applies the shared header rules on raw bytes; it must agree with them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router.proxy.fast import rules
from router.proxy.headers import forward_request_headers, forward_response_headers

NAMES = st.sampled_from(
    [
        "Connection",
        "connection",
        "Keep-Alive",
        "TE",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Via",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Forwarded",
        "X-Real-IP",
        "Host",
        "Content-Length",
        "Expect",
        "Content-Type",
        "X-Custom",
        "x-private",
        "Cookie",
        "Close",  # a header named like the `close` token: dropped when Connection names it
    ]
)
VALUES = st.sampled_from(
    ["keep-alive", "close", "X-Private", "keep-alive, x-custom", "1.0 proxy", "a, b", "203.0.113.7"]
)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=8)


def encode(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers).encode()


def raw(headers: list[tuple[str, str]]) -> rules.RawHeaders:
    return [(k.encode(), v.encode()) for k, v in headers]


@given(HEADERS, st.booleans(), st.sampled_from([None, "router.example"]))
def test_request_block_matches_the_shared_rules(
    headers: list[tuple[str, str]], trusted: bool, host: str | None
) -> None:
    expected = [
        (k, v)
        for k, v in forward_request_headers(
            headers, peer="127.0.0.1", peer_trusted=trusted, scheme="http", host=host
        )
        if k.lower() not in ("content-length", "expect")
    ]
    got = rules.request_block(
        raw(headers), peer="127.0.0.1", peer_trusted=trusted, scheme="http", host=host
    )
    assert got == encode(expected)


@given(HEADERS)
def test_response_block_matches_the_shared_rules(headers: list[tuple[str, str]]) -> None:
    block, length, codings = rules.response_block(raw(headers))
    assert block == encode(forward_response_headers(headers))
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    assert length == (lengths[-1].encode() if lengths else None)
    assert (codings is not None) == any(k.lower() == "transfer-encoding" for k, _ in headers)


def test_keep_alive_off_takes_the_bytes_path_and_still_drops_a_header_named_close() -> None:
    # `Connection: close` on every request (wrk -H 'Connection: close', curl with no reuse)
    # must not fall back to the str rules; a header literally named Close still goes.
    plain = [("Connection", "close"), ("Accept", "*/*")]
    odd = [("Connection", "close"), ("Close", "yes"), ("Accept", "*/*")]
    for headers in (plain, odd):
        expected = forward_request_headers(
            headers, peer="127.0.0.1", peer_trusted=False, scheme="http", host=None
        )
        got = rules.request_block(
            raw(headers), peer="127.0.0.1", peer_trusted=False, scheme="http", host=None
        )
        assert got == encode(expected)
        assert b"Close: yes" not in got
    assert rules._plain_tokens([b"close"]) == frozenset({b"close"})
    assert not rules._names_only_hop_by_hop([b"close"], raw(odd))
    assert rules._names_only_hop_by_hop([b"close"], raw(plain))
