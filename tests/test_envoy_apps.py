"""Several apps through a real Envoy: each Host (and path prefix) reaches its own app's
replicas, a Host no app serves gets 421, and one app's outage leaves the other serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import yaml

from router.app import RouterApp
from router.config import load_config
from tests import test_apps_serve as serve
from tests.envoy_support import require_envoy
from tests.support import eventually, running_replica, running_router
from tests.test_apps_reload import config as reload_config
from tests.test_apps_reload import replica_of
from tests.test_apps_serve import get, routable, two_apps


@pytest.fixture(autouse=True)
def _needs_envoy() -> None:
    require_envoy()


async def test_two_apps_are_two_virtual_hosts_in_envoy() -> None:
    async with (
        running_replica("api-replica") as api,
        running_replica("ui-replica") as ui,
    ):
        config = two_apps(
            [f"http://127.0.0.1:{api.port}"],
            [f"http://127.0.0.1:{ui.port}"],
            proxy={"engine": "envoy"},
            health={"enabled": False},
        )
        config["apps"][0]["hosts"] = ["api.localhost", "ui.localhost/api"]
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            await routable(router)
            url = router.url
            assert await get(client, url + "/", "api.localhost") == (200, "api-replica")
            assert await get(client, url + "/", "ui.localhost:8080") == (200, "ui-replica")
            assert await get(client, url + "/api/x", "UI.localhost.") == (200, "api-replica")
            assert await get(client, url + "/apix", "ui.localhost") == (200, "ui-replica")
            seen = api.hits + ui.hits
            assert await get(client, url + "/", "other.localhost") == (421, "misdirected_request")
            assert api.hits + ui.hits == seen


async def test_a_default_app_takes_unknown_hosts_and_a_drained_app_answers_503() -> None:
    async with (
        running_replica("api-replica") as api,
        running_replica("ui-replica") as ui,
    ):
        config = two_apps(
            [f"http://127.0.0.1:{api.port}"],
            [f"http://127.0.0.1:{ui.port}"],
            proxy={"engine": "envoy"},
            health={"enabled": False},
        )
        config["apps"][1]["default"] = True
        async with running_router(config) as router, aiohttp.ClientSession() as client:
            await routable(router)
            admin = router.admin_url
            assert await get(client, router.url + "/", "other.localhost") == (200, "ui-replica")
            async with client.post(admin + "/admin/apps/api/replicas/api-0/drain") as response:
                assert response.status == 200

            async def api_unavailable() -> bool:
                status, _ = await get(client, router.url + "/", "api.localhost")
                return status == 503

            await eventually(api_unavailable, timeout=10)
            status, error = await get(client, router.url + "/", "api.localhost")
            assert (status, error) == (503, "no_healthy_replica")
            assert await get(client, router.url + "/", "ui.localhost") == (200, "ui-replica")


async def test_reloading_apps_updates_envoys_virtual_hosts_without_a_failed_request(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.yaml"
    async with (
        running_replica("api") as api,
        running_replica("ui") as ui,
        running_replica("docs") as docs,
        aiohttp.ClientSession() as client,
    ):

        def write(apps: dict[str, tuple[list[str], int]]) -> None:
            path.write_text(yaml.safe_dump({**reload_config(apps), "proxy": {"engine": "envoy"}}))

        write({"api": (["api.localhost"], api.port), "ui": (["ui.localhost"], ui.port)})
        app = RouterApp(load_config(path, {}), config_path=str(path), environ={})
        await app.start()
        host, port = app.engine.addresses[0]
        url = f"http://{host}:{port}/"
        steady: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                steady.append((await replica_of(client, url, "api.localhost"))[0])

        try:
            routable = [app.reconciler, *(p.reconciler for p in app.apps.planes)]
            await eventually(lambda: all(r.current.routable for r in routable), timeout=10)
            traffic = asyncio.create_task(load())
            write(
                {
                    "api": (["api.localhost", "ui.localhost"], api.port),  # ui's host moves
                    "docs": (["docs.localhost"], docs.port),  # added; ui removed
                }
            )
            assert app.reload().error is None

            async def answers(host: str, expected: tuple[int, str]) -> bool:
                return await replica_of(client, url, host) == expected

            await eventually(lambda: answers("docs.localhost", (200, "docs")), timeout=10)
            await eventually(lambda: answers("ui.localhost", (200, "api")), timeout=10)
            stop.set()
            await traffic
        finally:
            stop.set()
            await app.stop(1)
        assert steady
        assert set(steady) == {200}


async def test_an_app_at_its_max_connections_gets_the_python_engines_503_naming_it() -> None:
    """Envoy's overflow on the app's clusters answers the body with `app` (and the other
    app keeps serving): the conformance test of the Python engines, under Envoy."""
    await serve.test_an_app_at_its_max_connections_gets_503_while_the_other_serves("envoy")
