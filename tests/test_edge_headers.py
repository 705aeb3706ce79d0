"""Headers only a trusted edge may set (issue 15): a client talking to the router directly
must not be able to claim an address, port or country to the replica's app. They are
removed from requests of untrusted peers and kept from `proxy.trusted_proxies`."""

from __future__ import annotations

from typing import Any

import aiohttp
from hypothesis import given
from hypothesis import strategies as st

from router.proxy.fast import rules
from router.proxy.headers import edge_names, forward_request_headers
from tests.support import running_replica, running_router, static_config

CLAIMS = {
    "CF-Connecting-IP": "203.0.113.9",
    "True-Client-IP": "203.0.113.9",
    "X-Real-IP": "203.0.113.9",
    "X-Client-IP": "203.0.113.9",
    "X-Forwarded-Port": "443",
    "CF-IPCountry": "KP",
    # The geo routing headers (routing.geo defaults) and one configured by the operator.
    "CloudFront-Viewer-Country": "KP",
    "CloudFront-Viewer-Latitude": "39.0",
    "X-Edge-Verified": "yes",
}
EDGE = [
    "CF-Connecting-IP",
    "True-Client-IP",
    "X-Real-IP",
    "X-Client-IP",
    "X-Forwarded-Port",
    "CF-IPCountry",
    "X-Edge-Verified",
]


async def seen_by_replica(engine: str, trusted: bool, headers: dict[str, str]) -> dict[str, str]:
    async with running_replica("a") as replica:
        proxy: dict[str, Any] = {"engine": engine, "edge_headers": EDGE}
        if trusted:
            proxy["trusted_proxies"] = ["127.0.0.0/8"]
        config = static_config(
            [("a", f"http://127.0.0.1:{replica.port}")], proxy=proxy, health={"enabled": False}
        )
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            async with client.get(f"{router.url}/who", headers=headers) as resp:
                assert resp.status == 200
                received: dict[str, str] = (await resp.json())["headers"]
                return received


async def test_edge_headers_from_an_untrusted_peer_are_removed(engine: str) -> None:
    sent = {**CLAIMS, "X-App": "kept", "cf-connecting-ip": "198.51.100.1"}
    received = {k.lower(): v for k, v in (await seen_by_replica(engine, False, sent)).items()}
    for name in CLAIMS:
        assert name.lower() not in received, name
    assert received["x-app"] == "kept"
    assert received["x-forwarded-for"] == "127.0.0.1"


async def test_edge_headers_from_a_trusted_peer_are_kept(engine: str) -> None:
    received = {k.lower(): v for k, v in (await seen_by_replica(engine, True, CLAIMS)).items()}
    for name, value in CLAIMS.items():
        assert received.get(name.lower()) == value, name


NAMES = st.sampled_from(
    ["CF-Connecting-IP", "cf-ipcountry", "X-Real-IP", "Connection", "Via", "X-App", "x-edge"]
)
VALUES = st.sampled_from(["1.2.3.4", "close", "x-app", "keep-alive", "KP"])


@given(
    st.lists(st.tuples(NAMES, VALUES), max_size=8),
    st.booleans(),
    st.lists(st.sampled_from(["X-Edge", "CF-Connecting-IP", "CF-IPCountry"]), max_size=3),
)
def test_fast_rules_strip_the_same_edge_headers_as_the_shared_rules(
    headers: list[tuple[str, str]], trusted: bool, configured: list[str]
) -> None:
    edge = edge_names(configured)
    expected = forward_request_headers(
        headers, peer="127.0.0.1", peer_trusted=trusted, scheme="http", host=None, edge=edge
    )
    got = rules.request_block(
        [(k.encode(), v.encode()) for k, v in headers],
        peer="127.0.0.1",
        peer_trusted=trusted,
        scheme="http",
        host=None,
        edge=frozenset(name.encode() for name in edge),
    )
    assert got == "".join(f"{k}: {v}\r\n" for k, v in expected).encode()
