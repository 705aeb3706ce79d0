"""Data-path conformance: written once, run against every engine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.conftest import ENGINES
from tests.envoy_support import require_envoy
from tests.support import eventually, free_port, running_replica, running_router, static_config

# Where Envoy (proxy.engine: envoy) behaves differently on purpose or by its nature; these
# run and are expected to fail, so a change in Envoy's behaviour shows up.
ENVOY_DIFFERENCES: dict[str, str] = {
    "test_hop_by_hop_headers_are_stripped_both_ways": (
        "Envoy removes the standard hop-by-hop headers both ways but not response headers a "
        "replica names in its own Connection header (X-Secret-Hop here)"
    ),
    "test_absolute_uri_for_another_host_is_refused": (
        "Envoy accepts an absolute-form target and sends it to a replica as origin-form with "
        "the replica's Host; never to the named host, so not an open proxy, but not a 400"
    ),
}


@pytest.fixture(params=[*ENGINES, "envoy"])
def engine(request: pytest.FixtureRequest) -> str:
    """The conformance suite also runs against Envoy (docs/envoy.md lists differences)."""
    name: str = request.param
    if name == "envoy":
        require_envoy()
        reason = ENVOY_DIFFERENCES.get(request.node.originalname)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    return name


def cfg(engine: str, replicas: list[tuple[str, str]], **sections: object) -> dict[str, object]:
    proxy = {"engine": engine, **dict(sections.pop("proxy", {}))}  # type: ignore[call-overload]
    return static_config(replicas, proxy=proxy, health={"enabled": False}, **sections)


async def test_round_robin_spreads_evenly_over_three_replicas(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a, running_replica("b") as b, running_replica("c") as c:
        replicas = [(r.name, f"http://127.0.0.1:{r.port}") for r in (a, b, c)]
        async with running_router(cfg(engine, replicas)) as router:
            seen: Counter[str] = Counter()
            for _ in range(30):
                async with client.get(f"{router.url}/x") as resp:
                    assert resp.status == 200
                    seen[(await resp.json())["replica"]] += 1
            assert seen == {"a": 10, "b": 10, "c": 10}


async def test_refused_replica_is_skipped_without_failed_requests(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a, running_replica("b") as b:
        dead = f"http://127.0.0.1:{free_port()}"
        replicas = [
            ("a", f"http://127.0.0.1:{a.port}"),
            ("dead", dead),
            ("b", f"http://127.0.0.1:{b.port}"),
        ]
        async with running_router(cfg(engine, replicas)) as router:
            for method in ("GET", "POST", "DELETE"):
                for _ in range(6):
                    async with client.request(
                        method, f"{router.url}/x", data=b"" if method == "POST" else None
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                        assert (await resp.json())["replica"] in {"a", "b"}


@pytest.mark.parametrize("size", [0, 1024, 10 * 1024 * 1024])
async def test_post_bodies_arrive_intact(
    engine: str, client: aiohttp.ClientSession, size: int
) -> None:
    body = os.urandom(size)
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            async with client.post(f"{router.url}/upload", data=body) as resp:
                assert resp.status == 200
                answer = await resp.json()
            assert answer["size"] == size
            assert answer["sha256"] == hashlib.sha256(body).hexdigest()


async def test_request_body_is_streamed_not_buffered(
    engine: str, client: aiohttp.ClientSession
) -> None:
    """The replica sees the first chunk before the client has sent the rest."""
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:

            async def body() -> AsyncIterator[bytes]:
                yield b"x" * 65536
                await asyncio.wait_for(a.got_first_chunk.wait(), 5)
                yield b"y" * 1000

            async with client.post(f"{router.url}/upload", data=body()) as resp:
                answer = await resp.json()
            assert answer["size"] == 66536
            assert answer["chunked"] is True


async def test_chunked_response_is_relayed(engine: str, client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            async with client.get(f"{router.url}/chunked") as resp:
                assert resp.headers.get("Transfer-Encoding") == "chunked"
                assert await resp.text() == "part0;part1;part2;part3;part4;"


async def test_server_sent_events_arrive_chunk_by_chunk(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            async with client.get(f"{router.url}/sse") as resp:
                first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
                assert first == b"data: first\n\n"
                a.release.set()  # the second event exists only after the first was received
                second = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
                assert second == b"data: second\n\n"


async def test_websocket_echo_round_trips(engine: str, client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            async with client.ws_connect(f"{router.url}/ws") as ws:
                await ws.send_str("hello")
                assert (await ws.receive_str(timeout=5)) == "a:hello"
                await ws.send_bytes(b"\x01\x02\x03")
                assert (await ws.receive_bytes(timeout=5)) == b"\x03\x02\x01"


async def test_hop_by_hop_headers_are_stripped_both_ways(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            headers = {
                "Connection": "keep-alive, X-Private",
                "X-Private": "1",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic eA==",
                "X-End-To-End": "kept",
            }
            async with client.get(f"{router.url}/", headers=headers) as resp:
                seen = {k.lower() for k in (await resp.json())["headers"]}
            assert "x-end-to-end" in seen
            assert not seen & {"x-private", "keep-alive", "te", "proxy-authorization"}
            assert "via" in seen
            async with client.get(f"{router.url}/hop") as resp:
                assert resp.headers.get("X-Kept") == "yes"
                assert "X-Secret-Hop" not in resp.headers
                assert "Keep-Alive" not in resp.headers
                assert "phala-router" in resp.headers["Via"]


async def test_forwarded_for_from_untrusted_peer_is_replaced(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            spoof = {
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil",
            }
            async with client.get(f"{router.url}/", headers=spoof) as resp:
                seen = (await resp.json())["headers"]
            assert seen["X-Forwarded-For"] == "127.0.0.1"
            assert seen["X-Forwarded-Proto"] == "http"
            assert seen["X-Forwarded-Host"].startswith("127.0.0.1")


async def test_forwarded_for_from_trusted_proxy_is_appended(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        config = cfg(
            engine,
            [("a", f"http://127.0.0.1:{a.port}")],
            proxy={"trusted_proxies": ["127.0.0.0/8"]},
        )
        async with running_router(config) as router:
            sent = {
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "api.example.com",
            }
            async with client.get(f"{router.url}/", headers=sent) as resp:
                seen = (await resp.json())["headers"]
            # A list: "a, b" and "a,b" are the same header value (RFC 9110 section 5.6.1).
            hops = [hop.strip() for hop in seen["X-Forwarded-For"].split(",")]
            assert hops == ["203.0.113.9", "127.0.0.1"]
            assert seen["X-Forwarded-Proto"] == "https"
            assert seen["X-Forwarded-Host"] == "api.example.com"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def https_replica_config(
    engine: str, ca: trustme.CA, tmp_path: Path, port: int
) -> dict[str, object]:
    """Replica `a` at https://replica-a.test, dialled at 127.0.0.1:port, trusted via the test CA."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return cfg(
        engine,
        [("a", "https://replica-a.test")],
        discovery={"connect_to": {"replica-a.test": f"127.0.0.1:{port}"}},
        upstream_tls={"ca_file": str(ca_file)},
    )


async def test_https_replica_gets_its_host_name_as_host_and_sni(
    engine: str, client: aiohttp.ClientSession, ca: trustme.CA, tmp_path: Path
) -> None:
    async with running_replica("a", server_context(ca, "replica-a.test")) as a:
        async with running_router(https_replica_config(engine, ca, tmp_path, a.port)) as router:
            async with client.get(f"{router.url}/", headers={"Host": "public.example"}) as resp:
                assert resp.status == 200
                seen = (await resp.json())["headers"]
            assert seen["Host"] == "replica-a.test"
            assert a.sni == ["replica-a.test"]


async def test_https_replica_with_wrong_certificate_is_refused(
    engine: str, client: aiohttp.ClientSession, ca: trustme.CA, tmp_path: Path
) -> None:
    async with running_replica("a", server_context(ca, "someone-else.test")) as a:
        async with running_router(https_replica_config(engine, ca, tmp_path, a.port)) as router:
            async with client.get(f"{router.url}/") as resp:
                assert resp.status == 502
                body = await resp.json()
            assert body["error"] == "upstream_connect_failed"
            assert body["cause"] == "tls"
            assert a.hits == 0


async def test_no_routable_replica_gives_503_with_retry_after(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            router.app.drain("a", True)
            async with client.get(f"{router.url}/") as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"].isdigit()
                assert await resp.json() == {
                    "error": "no_healthy_replica",
                    "replicas": 1,
                    "routable": 0,
                    "states": {"draining": 1},
                }


async def test_all_replicas_refusing_gives_502_naming_the_cause(
    engine: str, client: aiohttp.ClientSession
) -> None:
    replicas = [
        ("d1", f"http://127.0.0.1:{free_port()}"),
        ("d2", f"http://127.0.0.1:{free_port()}"),
    ]
    async with running_router(cfg(engine, replicas)) as router:
        async with client.get(f"{router.url}/") as resp:
            assert resp.status == 502
            body = await resp.json()
        assert body["error"] == "upstream_connect_failed"
        assert body["cause"] == "connect"


async def test_upstream_timeout_gives_504(engine: str, client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a:
        config = cfg(
            engine,
            [("a", f"http://127.0.0.1:{a.port}")],
            proxy={"response_timeout": "200ms", "retries": 0},
        )
        async with running_router(config) as router:
            async with client.get(f"{router.url}/hang") as resp:
                assert resp.status == 504
                assert (await resp.json())["error"] == "upstream_timeout"


async def test_graceful_shutdown_finishes_in_flight_request(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            pending = asyncio.create_task(client.get(f"{router.url}/slow"))
            await asyncio.wait_for(a.slow_started.wait(), 5)
            stopping = asyncio.create_task(router.stop(grace=10))
            await eventually(lambda: not router.app.ready)
            a.release.set()
            resp = await asyncio.wait_for(pending, 10)
            assert resp.status == 200
            assert (await resp.json())["slow"] is True
            resp.release()
            await stopping
            with pytest.raises(aiohttp.ClientConnectionError):
                async with client.get(f"{router.url}/") as resp:
                    pass


async def raw_status(url: str, request: bytes) -> int:
    """Send raw bytes (what a client library would refuse to send) and read the status."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return int(status_line.split()[1])


async def test_malformed_request_gets_400_and_router_keeps_serving(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            raw = (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"
            )
            assert await raw_status(router.url, raw) == 400
            assert a.hits == 0
            async with client.get(f"{router.url}/") as resp:
                assert resp.status == 200


async def test_absolute_uri_for_another_host_is_refused(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            raw = b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: router.example\r\n\r\n"
            assert await raw_status(router.url, raw) == 400
            assert a.hits == 0


async def test_status_explains_each_replica(engine: str, client: aiohttp.ClientSession) -> None:
    async with (
        running_replica("a") as a,
        running_router(
            cfg(engine, [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{a.port}")])
        ) as router,
    ):
        router.app.drain("b", True)
        async with client.get(f"{router.admin_url}/status") as resp:
            status = json.loads(await resp.text())
        rows = {r["id"]: r for r in status["replicas"]}
        assert rows["a"]["routable"] is True
        assert rows["b"]["routable"] is False
        assert rows["b"]["state"] == "draining"
        assert "drained" in rows["b"]["reason"]
        async with client.get(f"{router.admin_url}/readyz") as resp:
            assert resp.status == 200


async def test_encoded_newline_in_path_is_forwarded_encoded(
    engine: str, client: aiohttp.ClientSession
) -> None:
    from yarl import URL

    async with running_replica("a") as a:
        async with running_router(cfg(engine, [("a", f"http://127.0.0.1:{a.port}")])) as router:
            async with client.get(URL(f"{router.url}/x%0AInjected:%201", encoded=True)) as resp:
                assert resp.status == 200
                answer = await resp.json()
            assert "Injected" not in answer["headers"]
            assert answer["path"] == "/x%0AInjected:%201"  # still encoded: no header injection
