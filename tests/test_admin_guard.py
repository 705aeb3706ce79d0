"""Finding 8 of issue 15: the admin listener against a browser on the operator's machine
(cross-site POSTs, DNS rebinding) and malformed Authorization headers, with real requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.admin_guard import host_name, own_origin, refusal
from tests.support import RouterHandle, running_replica, running_router, static_config

TOKEN = "t0ken-Abc-123-very-secret"


@asynccontextmanager
async def admin(**admin_section: Any) -> AsyncIterator[RouterHandle]:
    async with running_replica("a") as a:
        cfg = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"enabled": False},
            admin={"listen": "127.0.0.1:0", **admin_section},
        )
        async with running_router(cfg, environ={"TEST_ADMIN_TOKEN": TOKEN}) as router:
            yield router


async def raw(router: RouterHandle, request: bytes) -> bytes:
    """Send raw bytes to the admin listener; the whole answer (it closes after one)."""
    port = router.app.admin.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def drained(client: aiohttp.ClientSession, router: RouterHandle) -> list[str]:
    async with client.get(f"{router.admin_url}/status") as resp:
        document = await resp.json()
    result: list[str] = document["drained"]
    return result


async def test_cross_site_post_without_token_is_refused_and_changes_nothing(
    client: aiohttp.ClientSession,
) -> None:
    async with admin() as router:
        url = f"{router.admin_url}/admin/replicas/a/drain"
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://localhost"):
            async with client.post(
                url, data="x", headers={"Origin": origin, "Content-Type": "text/plain"}
            ) as resp:
                assert resp.status == 403, origin
                assert (await resp.json())["error"] == "cross_origin"
        async with client.post(
            f"{router.admin_url}/admin/active-limit",
            data='{"count": 1}',
            headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        ) as resp:
            assert resp.status == 403
        assert await drained(client, router) == []
        assert list(router.app.admin.actions) == []


async def test_own_origin_and_no_origin_may_still_act(client: aiohttp.ClientSession) -> None:
    """The status page's drain buttons send the listener's own origin; curl sends none."""
    async with admin() as router:
        port = router.app.admin.port
        url = f"{router.admin_url}/admin/replicas/a/drain"
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            async with client.post(url, headers={"Origin": origin}) as resp:
                assert resp.status == 200, origin
        async with client.post(f"{router.admin_url}/admin/replicas/a/undrain") as resp:
            assert resp.status == 200
        assert await drained(client, router) == []


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:9090", "127.0.0.1.evil.example", "10.0.0.1"]
)
async def test_dns_rebinding_cannot_read_status_or_act(
    client: aiohttp.ClientSession, host: str
) -> None:
    async with admin() as router:
        for method, path in (("GET", "/status"), ("GET", "/metrics"), ("POST", "/admin/recheck")):
            async with client.request(
                method, router.admin_url + path, headers={"Host": host}
            ) as resp:
                assert resp.status == 403, (method, path)
                body = await resp.json()
                assert body["error"] == "forbidden_host"
                assert "replicas" not in body


async def test_loopback_names_are_answered(client: aiohttp.ClientSession) -> None:
    async with admin() as router:
        port = router.app.admin.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "[::1]:9", "127.0.0.2"):
            async with client.get(f"{router.admin_url}/status", headers={"Host": host}) as resp:
                assert resp.status == 200, host
        # HTTP/1.0 without Host: a local script, never a browser.
        answer = await raw(router, b"GET /status HTTP/1.0\r\n\r\n")
        assert status_of(answer) == 200


async def test_with_a_token_other_hosts_are_fine_and_the_token_decides(
    client: aiohttp.ClientSession,
) -> None:
    async with admin(token_env="TEST_ADMIN_TOKEN") as router:
        auth = {"Authorization": f"Bearer {TOKEN}", "Host": "admin.example"}
        async with client.get(f"{router.admin_url}/status", headers=auth) as resp:
            assert resp.status == 200
        async with client.post(
            f"{router.admin_url}/admin/recheck", headers={**auth, "Origin": "https://ops.example"}
        ) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff\xfe\xfd",
        b"Bearer t0ken-\xc3\xa9",
        b"\xe2\x98\x83 " + TOKEN.encode(),
        b"Bearer " + TOKEN.encode() + b"\x80",
        b"Bearer ",
        b"Bearer",
    ],
)
async def test_malformed_authorization_is_a_401_not_a_500(authorization: bytes) -> None:
    async with admin(token_env="TEST_ADMIN_TOKEN") as router:
        request = b"GET /status HTTP/1.0\r\nHost: x\r\nAuthorization: %s\r\n\r\n" % authorization
        answer = await raw(router, request)
        assert status_of(answer) == 401, answer[:200]
        assert b'"unauthorized"' in answer
        assert b"Traceback" not in answer
        # The listener goes on serving.
        answer = await raw(
            router, b"GET /status HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n" % TOKEN.encode()
        )
        assert status_of(answer) == 200


# -- the pure rules, over generated input ------------------------------------------------


@given(st.text(max_size=40))
def test_refusal_never_raises_and_foreign_names_are_refused(host: str) -> None:
    verdict = refusal("GET", host, None, 9090)
    name = host_name(host)
    if name in ("localhost", "127.0.0.1", "::1"):
        assert verdict is None
    elif "." in name and ":" not in name and not name.replace(".", "").isdigit():
        assert verdict is not None


@given(st.text(max_size=60), st.integers(0, 65535))
def test_own_origin_never_raises(origin: str, port: int) -> None:
    own_origin(origin, port)


def test_host_name_parsing() -> None:
    assert host_name("[::1]:9090") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("LocalHost.:80") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1"
