"""The request-head rules both engines share (router/proxy/request_rules.py): the rules as
pure functions, then each engine refusing a request that breaks one with the very status and
error code the rule gives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.errors import ClientRequestError
from router.proxy.request_rules import (
    MAX_HEADER_BLOCK,
    check_declared_length,
    check_head,
    connection_tokens,
)
from tests.support import TestReplica as Upstream
from tests.support import running_replica, running_router, static_config
from tests.test_strictness import exchange_raw


def refusal(method: str, version: str, hosts: int, host: str | None, target: str) -> str:
    """`status code` of the refusal, or `ok <target>`."""
    try:
        return f"ok {check_head(method, version, hosts, host, target)}"
    except ClientRequestError as exc:
        return f"{exc.status} {exc.code}"


@pytest.mark.parametrize(
    ("method", "version", "hosts", "host", "target", "expected"),
    [
        ("GET", "1.1", 1, "a.test", "/x?y=1", "ok /x?y=1"),
        ("GET", "1.0", 0, None, "/", "ok /"),  # HTTP/1.0 may omit Host
        ("CONNECT", "1.1", 1, "a.test:443", "a.test:443", "405 method_not_allowed"),
        ("GET", "2.0", 1, "a.test", "/", "505 http_version_not_supported"),
        ("GET", "0.9", 1, "a.test", "/", "505 http_version_not_supported"),
        ("GET", "1.1", 0, None, "/", "400 bad_host"),
        ("GET", "1.1", 2, "b.test", "/", "400 bad_host"),
        ("GET", "1.0", 2, "b.test", "/", "400 bad_host"),
        ("GET", "1.1", 1, "a.test:8080", "http://a.test/p?q", "ok /p?q"),
        ("GET", "1.1", 1, "a.test", "http://169.254.169.254/", "400 absolute_uri_not_allowed"),
        ("GET", "1.1", 1, "a.test", "*", "400 absolute_uri_not_allowed"),
        ("GET", "1.1", 1, "a.test", "http://[::1", "400 bad_target"),
        # The order of the rules: CONNECT before the version, the version before Host.
        ("CONNECT", "2.0", 0, None, "x", "405 method_not_allowed"),
        ("GET", "2.0", 0, None, "/", "505 http_version_not_supported"),
    ],
)
def test_head_rules(
    method: str, version: str, hosts: int, host: str | None, target: str, expected: str
) -> None:
    assert refusal(method, version, hosts, host, target) == expected


_PATH = st.text(alphabet="abcxyz0129-._~%/=&?", max_size=30).map(lambda s: "/" + s)
_HOST = st.from_regex(r"[a-z][a-z0-9]{0,8}\.test", fullmatch=True)


@given(path=_PATH)
def test_an_origin_form_target_is_forwarded_as_sent(path: str) -> None:
    assert check_head("GET", "1.1", 1, "a.test", path) == path


@given(host=_HOST, other=_HOST, path=_PATH, port=st.integers(1, 65535))
def test_an_absolute_form_target_is_accepted_only_for_the_host_named(
    host: str, other: str, path: str, port: int
) -> None:
    target = f"http://{other}{path}"
    outcome = refusal("GET", "1.1", 1, f"{host}:{port}", target)
    if other == host:
        assert outcome.startswith("ok /")
    else:
        assert outcome == "400 absolute_uri_not_allowed"


def test_a_declared_body_over_the_limit_is_refused() -> None:
    check_declared_length(None, 10)
    check_declared_length(10, 10)
    with pytest.raises(ClientRequestError) as refused:
        check_declared_length(11, 10)
    assert (refused.value.status, refused.value.code) == (413, "body_too_large")


def test_connection_tokens_are_trimmed_and_lower_case() -> None:
    assert connection_tokens(b" Keep-Alive ,, Upgrade,close") == {
        b"keep-alive",
        b"upgrade",
        b"close",
    }
    assert MAX_HEADER_BLOCK > 0


@pytest.fixture
async def replica() -> AsyncIterator[Upstream]:
    async with running_replica("a") as a:
        yield a


H = b"Host: router.test\r\n"
# Each breaks one shared rule: (the raw request, the status it gets).
SHARED = {
    "connect": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", "405"),
    "version": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", "505"),
    "no_host": (b"GET / HTTP/1.1\r\n\r\n", "400"),
    "two_hosts": (b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", "400"),
    "absolute": (b"GET http://169.254.169.254/ HTTP/1.1\r\n" + H + b"\r\n", "400"),
    "too_large": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2048\r\n\r\n", "413"),
}
# aiohttp's HTTP parser refuses these itself (a plain-text 400) before the router sees them.
AIOHTTP_PARSER_FIRST = frozenset({"no_host", "two_hosts"})
EXPECTED = {
    "connect": refusal("CONNECT", "1.1", 1, "a.test:443", "a.test:443"),
    "version": refusal("GET", "2.0", 1, "router.test", "/"),
    "no_host": refusal("GET", "1.1", 0, None, "/"),
    "two_hosts": refusal("GET", "1.1", 2, "router.test", "/"),
    "absolute": refusal("GET", "1.1", 1, "router.test", "http://169.254.169.254/"),
    "too_large": "413 body_too_large",
}


@pytest.mark.parametrize("name", list(SHARED))
async def test_both_engines_refuse_with_the_shared_rule(
    engine: str, replica: Upstream, name: str
) -> None:
    raw, status = SHARED[name]
    config = static_config(
        [("a", f"http://127.0.0.1:{replica.port}")],
        proxy={"engine": engine, "max_request_body": 1024},
        health={"enabled": False},
    )
    async with running_router(config) as router:
        received, _ = await exchange_raw(router.url, raw)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b" ")[1].decode() == status, received[:200]
    if engine == "aiohttp" and name in AIOHTTP_PARSER_FIRST:
        return  # aiohttp's own parser refused it, with the same status, before the rule ran
    assert f"{status} {json.loads(body)['error']}" == EXPECTED[name]
    assert replica.hits == 0
