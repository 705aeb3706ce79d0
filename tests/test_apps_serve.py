"""A router serving two apps from one config (`serve`): each app's own control plane, host
routing on the shared listener, and one app's failure leaving the other untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support import RouterHandle, eventually, free_port, running_replica, running_router


def two_apps(api: list[str], ui: list[str], **sections: Any) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "health": {"interval": "100ms", "unhealthy_interval": "50ms", "timeout": "500ms"},
        "apps": [
            {
                "name": "api",
                "hosts": ["api.localhost"],
                "discovery": {"static": [{"id": f"api-{i}", "url": u} for i, u in enumerate(api)]},
            },
            {
                "name": "ui",
                "hosts": ["ui.localhost"],
                "discovery": {"static": [{"id": f"ui-{i}", "url": u} for i, u in enumerate(ui)]},
            },
        ],
        **sections,
    }


async def routable(router: RouterHandle, *names: str) -> None:
    """Until the named apps (all by default) passed their first health checks."""
    app = router.app
    reconcilers = {app.apps.primary_name: app.reconciler}
    reconcilers.update({p.name: p.reconciler for p in app.apps.planes})
    wanted = [reconcilers[n] for n in names] if names else list(reconcilers.values())
    await eventually(lambda: all(r.current.routable for r in wanted), timeout=10)


async def get(client: aiohttp.ClientSession, url: str, host: str) -> tuple[int, str]:
    async with client.get(url, headers={"Host": host}) as response:
        body = await response.json(content_type=None)
        return response.status, body.get("replica") or body.get("error", "")


async def test_each_host_reaches_its_apps_replicas(engine: str) -> None:
    async with (
        running_replica("api-replica") as api,
        running_replica("ui-replica") as ui,
        running_router(
            two_apps(
                [f"http://127.0.0.1:{api.port}"],
                [f"http://127.0.0.1:{ui.port}"],
                proxy={"engine": engine},
                health={"enabled": False},  # only requests reach the replicas
            )
        ) as router,
        aiohttp.ClientSession() as client,
    ):
        await routable(router)
        assert await get(client, router.url + "/", "api.localhost") == (200, "api-replica")
        assert await get(client, router.url + "/", "ui.localhost:8080") == (200, "ui-replica")
        seen = api.hits + ui.hits
        misdirected = await get(client, router.url + "/", "other.localhost")
        assert misdirected == (421, "misdirected_request")
        assert api.hits + ui.hits == seen


async def test_one_apps_replicas_all_failing_leave_the_other_serving(engine: str) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    async with (
        running_replica("ui-0") as ui0,
        running_replica("ui-1") as ui1,
        running_router(
            two_apps(
                dead,
                [f"http://127.0.0.1:{ui0.port}", f"http://127.0.0.1:{ui1.port}"],
                proxy={"engine": engine},
            )
        ) as router,
        aiohttp.ClientSession() as client,
    ):
        await routable(router, "ui")

        async def steady_ui(count: int) -> list[int]:
            return [(await get(client, router.url + "/", "ui.localhost"))[0] for _ in range(count)]

        async def hammer_api(count: int) -> list[int]:
            return [(await get(client, router.url + "/", "api.localhost"))[0] for _ in range(count)]

        ui_statuses, api_statuses = await asyncio.gather(steady_ui(200), hammer_api(100))
        assert ui_statuses == [200] * 200  # 0 failed requests on the healthy app
        assert set(api_statuses) <= {502, 503}  # the failing app fails alone


async def test_status_groups_replicas_by_app_and_answers_for_one_app() -> None:
    async with (
        running_replica("api-replica") as api,
        running_replica("ui-replica") as ui,
        running_router(
            two_apps([f"http://127.0.0.1:{api.port}"], [f"http://127.0.0.1:{ui.port}"])
        ) as router,
        aiohttp.ClientSession() as client,
    ):
        await routable(router)
        async with client.get(router.admin_url + "/status") as response:
            document = await response.json()
        apps = {app["name"]: app for app in document["apps"]}
        assert list(apps) == ["api", "ui"]
        assert [r["id"] for r in apps["ui"]["replicas"]] == ["ui-0"]
        assert apps["ui"]["hosts"] == ["ui.localhost"]
        assert (apps["api"]["replica_count"], apps["ui"]["replica_count"]) == (1, 1)
        async with client.get(router.admin_url + "/status?app=ui") as response:
            one = await response.json()
        assert (one["app"], [r["id"] for r in one["replicas"]]) == ("ui", ["ui-0"])
        async with client.get(router.admin_url + "/status?app=web") as response:
            assert response.status == 404
            assert (await response.json())["error"] == "unknown_app"


async def test_operator_actions_name_the_app() -> None:
    async with (
        running_replica("api-replica") as api,
        running_replica("ui-replica") as ui,
        running_router(
            two_apps([f"http://127.0.0.1:{api.port}"], [f"http://127.0.0.1:{ui.port}"])
        ) as router,
        aiohttp.ClientSession() as client,
    ):
        await routable(router)
        admin = router.admin_url
        async with client.post(admin + "/admin/apps/ui/replicas/ui-0/drain") as response:
            assert response.status == 200
        async with client.get(admin + "/status?app=ui") as response:
            assert (await response.json())["drained"] == ["ui-0"]
        async with client.get(admin + "/status?app=api") as response:
            assert (await response.json())["drained"] == []
        # the drained app's only replica is out; the other app still serves
        assert (await get(client, router.url + "/", "ui.localhost"))[0] == 503
        assert await get(client, router.url + "/", "api.localhost") == (200, "api-replica")
        async with client.post(admin + "/admin/apps/ui/replicas/ui-0/undrain") as response:
            assert response.status == 200
        assert await get(client, router.url + "/", "ui.localhost") == (200, "ui-replica")
        async with client.post(
            admin + "/admin/apps/ui/active-limit", json={"count": 1}
        ) as response:
            assert response.status == 200
        async with client.post(admin + "/admin/apps/ui/recheck") as response:
            assert response.status == 200
        async with client.post(admin + "/admin/apps/web/recheck") as response:
            assert (response.status, (await response.json())["error"]) == (404, "unknown_app")
        async with client.post(admin + "/admin/apps/ui/replicas/api-0/drain") as response:
            assert response.status == 404  # a replica of another app
        # the old paths act on the primary app (the first, as none is the default)
        async with client.post(admin + "/admin/replicas/api-0/drain") as response:
            assert response.status == 200
        async with client.get(admin + "/status?app=api") as response:
            assert (await response.json())["drained"] == ["api-0"]


async def test_an_app_at_its_max_connections_gets_503_while_the_other_serves(engine: str) -> None:
    async with (
        running_replica("api-replica") as api,
        running_replica("ui-replica") as ui,
    ):
        config = two_apps(
            [f"http://127.0.0.1:{api.port}"],
            [f"http://127.0.0.1:{ui.port}"],
            proxy={"engine": engine, "retries": 0},
        )
        config["apps"][1]["max_connections"] = 1
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            await routable(router)
            held = asyncio.create_task(get(client, router.url + "/slow", "ui.localhost"))
            await asyncio.wait_for(ui.slow_started.wait(), 10)
            async with client.get(router.url + "/", headers={"Host": "ui.localhost"}) as response:
                assert response.status == 503
                assert response.headers.get("Retry-After")
                assert (await response.json())["app"] == "ui"
            assert await get(client, router.url + "/", "api.localhost") == (200, "api-replica")
            ui.release.set()
            assert await held == (200, "ui-replica")
            # the slot came back
            assert await get(client, router.url + "/", "ui.localhost") == (200, "ui-replica")


async def test_metrics_label_every_replica_series_with_its_app() -> None:
    async with (
        running_replica("api-replica") as api,
        running_replica("ui-replica") as ui,
        running_router(
            two_apps([f"http://127.0.0.1:{api.port}"], [f"http://127.0.0.1:{ui.port}"])
        ) as router,
        aiohttp.ClientSession() as client,
    ):
        await routable(router)
        assert (await get(client, router.url + "/", "ui.localhost"))[0] == 200
        assert (await get(client, router.url + "/", "api.localhost"))[0] == 200
        async with client.get(router.admin_url + "/metrics") as response:
            lines = (await response.text()).splitlines()

        def series(name: str, replica: str) -> list[str]:
            return [
                line
                for line in lines
                if line.startswith(name + "{") and f'replica="{replica}"' in line
            ]

        for replica, app in (("ui-0", "ui"), ("api-0", "api")):
            requests = series("router_requests_total", replica)
            assert requests
            assert all(f'app="{app}"' in line for line in requests)
            states = series("router_replica_state", replica)
            assert states
            assert all(f'app="{app}"' in line for line in states)
