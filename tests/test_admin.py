"""Operator actions on the admin listener: token, drain, active-limit, and their audit trail."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.support import running_replica, running_router, static_config

TOKEN = "t0ken-Abc-123-very-secret"
ENV = {"TEST_ADMIN_TOKEN": TOKEN}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config(replicas: list[tuple[str, str]], **sections: Any) -> dict[str, Any]:
    return static_config(replicas, health={"enabled": False}, **sections)


async def get_json(client: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with client.get(url, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with client.post(url, **kw) as resp:
        return resp.status, await resp.json()


async def test_token_is_required_on_every_endpoint_but_the_probes(
    client: aiohttp.ClientSession,
) -> None:
    async with running_replica("a") as a:
        cfg = config(
            [("a", f"http://127.0.0.1:{a.port}")],
            admin={"token_env": "TEST_ADMIN_TOKEN"},
        )
        async with running_router(cfg, environ=ENV) as router:
            admin = router.admin_url
            for path in ("/healthz", "/readyz", "/status.html"):
                async with client.get(admin + path) as resp:
                    assert resp.status == 200, path
            protected = [
                ("GET", "/status"),
                ("GET", "/metrics"),
                ("POST", "/admin/replicas/a/drain"),
                ("POST", "/admin/replicas/a/undrain"),
                ("POST", "/admin/replicas/a/recheck"),
                ("POST", "/admin/recheck"),
                ("POST", "/admin/active-limit"),
                ("GET", "/admin/config"),
            ]
            wrong = [
                {},
                {"Authorization": "Bearer nope"},
                {"Authorization": TOKEN},  # no scheme
                {"Authorization": f"Bearer {TOKEN}x"},
                {"Authorization": f"Basic {TOKEN}"},
            ]
            for method, path in protected:
                for headers in wrong:
                    async with client.request(method, admin + path, headers=headers) as resp:
                        assert resp.status == 401, (method, path, headers)
                        assert (await resp.json())["error"] == "unauthorized"
            # Nothing happened: the refused drain did not drain.
            status = await get_json(client, f"{admin}/status", headers=AUTH)
            assert status["drained"] == []
            assert status["admin_actions"] == []
            async with client.get(f"{admin}/metrics", headers=AUTH) as resp:
                assert resp.status == 200


async def test_token_is_compared_in_constant_time(
    client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # router.admin looks it up per call
    async with running_replica("a") as a:
        cfg = config(
            [("a", f"http://127.0.0.1:{a.port}")],
            admin={"token_env": "TEST_ADMIN_TOKEN"},
        )
        async with running_router(cfg, environ=ENV) as router:
            async with client.get(
                f"{router.admin_url}/status", headers={"Authorization": "Bearer guess"}
            ) as resp:
                assert resp.status == 401
    assert compared == [(b"guess", TOKEN.encode())]


async def test_no_token_configured_means_open_on_loopback(client: aiohttp.ClientSession) -> None:
    async with running_replica("a") as a:
        async with running_router(config([("a", f"http://127.0.0.1:{a.port}")])) as router:
            status, body = await post(client, f"{router.admin_url}/admin/replicas/a/drain")
            assert (status, body) == (200, {"drained": "a"})


async def test_drain_stops_new_requests_while_in_flight_ones_finish(
    client: aiohttp.ClientSession,
) -> None:
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        cfg = config(replicas, admin={"token_env": "TEST_ADMIN_TOKEN"})
        async with running_router(cfg, environ=ENV) as router:
            # Two slow requests: round-robin puts one on each replica.
            slow = [asyncio.create_task(client.get(f"{router.url}/slow")) for _ in range(2)]
            await asyncio.wait_for(a.slow_started.wait(), 5)
            await asyncio.wait_for(b.slow_started.wait(), 5)

            status, body = await post(
                client, f"{router.admin_url}/admin/replicas/a/drain", headers=AUTH
            )
            assert (status, body) == (200, {"drained": "a"})
            hits_a = a.hits
            for _ in range(10):
                async with client.get(f"{router.url}/x") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["replica"] == "b"
            assert a.hits == hits_a

            state = await get_json(client, f"{router.admin_url}/status", headers=AUTH)
            row = {r["id"]: r for r in state["replicas"]}["a"]
            assert (row["state"], row["routable"]) == ("draining", False)
            assert row["in_flight"] == 1  # the slow request is still being served
            assert state["drained"] == ["a"]

            a.release.set()
            b.release.set()
            for task in slow:
                resp = await asyncio.wait_for(task, 5)
                assert resp.status == 200
                assert (await resp.json())["slow"] is True
                resp.release()

            status, _ = await post(
                client, f"{router.admin_url}/admin/replicas/a/undrain", headers=AUTH
            )
            assert status == 200
            seen: Counter[str] = Counter()
            for _ in range(4):
                async with client.get(f"{router.url}/x") as resp:
                    seen[(await resp.json())["replica"]] += 1
            assert seen == {"a": 2, "b": 2}


async def test_active_limit_spreads_traffic_over_exactly_k_replicas(
    client: aiohttp.ClientSession,
) -> None:
    async with (
        running_replica("a") as a,
        running_replica("b") as b,
        running_replica("c") as c,
        running_replica("d") as d,
    ):
        replicas = [(r.name, f"http://127.0.0.1:{r.port}") for r in (a, b, c, d)]
        async with running_router(config(replicas)) as router:
            limit = f"{router.admin_url}/admin/active-limit"

            async def spread(n: int) -> Counter[str]:
                seen: Counter[str] = Counter()
                for _ in range(n):
                    async with client.get(f"{router.url}/x") as resp:
                        assert resp.status == 200
                        seen[(await resp.json())["replica"]] += 1
                return seen

            for k in (1, 2, 3):
                assert await post(client, limit, json={"count": k}) == (200, {"active_limit": k})
                seen = await spread(6 * k)
                assert len(seen) == k
                assert set(seen.values()) == {6}  # evenly over the K chosen
                state = await get_json(client, f"{router.admin_url}/status")
                assert state["active_limit"] == k
                assert state["routable_count"] == k
                inactive = [r for r in state["replicas"] if r["state"] == "inactive"]
                assert len(inactive) == 4 - k
                assert all(r["reason"].startswith("inactive:") for r in inactive)

            # The choice is stable: the same K replicas every time.
            await post(client, limit, json={"count": 2})
            first = set(await spread(8))
            await post(client, limit, json={"count": 2})
            assert set(await spread(8)) == first

            assert await post(client, limit, json={"count": None}) == (
                200,
                {"active_limit": None},
            )
            assert len(await spread(8)) == 4

            for bad in ({"count": 0}, {"count": "2"}, {"count": True}, {}, [1]):
                status, body = await post(client, limit, json=bad)
                assert status == 400, bad
                assert "count" in body["hint"]
            async with client.post(limit, data=b"not json") as resp:
                assert resp.status == 400


async def test_every_action_is_logged_and_shown_in_status(
    client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.admin")
    async with running_replica("a") as a, running_replica("b") as b:
        replicas = [("a", f"http://127.0.0.1:{a.port}"), ("b", f"http://127.0.0.1:{b.port}")]
        async with running_router(config(replicas)) as router:
            admin = router.admin_url
            assert (await post(client, f"{admin}/admin/replicas/a/drain"))[0] == 200
            assert (await post(client, f"{admin}/admin/replicas/a/undrain"))[0] == 200
            assert (await post(client, f"{admin}/admin/replicas/b/recheck"))[0] == 200
            assert (await post(client, f"{admin}/admin/recheck"))[0] == 200
            assert (await post(client, f"{admin}/admin/active-limit", json={"count": 1}))[0] == 200
            status, body = await post(client, f"{admin}/admin/replicas/nope/drain")
            assert (status, body["error"]) == (404, "unknown_replica")

            state = await get_json(client, f"{admin}/status")
            actions = [(x["action"], x["target"]) for x in state["admin_actions"]]
            assert actions == [
                ("drain", "a"),
                ("undrain", "a"),
                ("recheck", "b"),
                ("recheck", None),
                ("active-limit", "1"),
            ]
            assert all(x["by"] == "127.0.0.1" and x["at"] > 0 for x in state["admin_actions"])
    messages = [r.getMessage() for r in caplog.records if r.name == "router.admin"]
    assert messages == [
        "admin: drained replica a",
        "admin: undrained replica a",
        "admin: re-check of b",
        "admin: re-check of all replicas",
        "admin: active-limit set to 1",
    ]
