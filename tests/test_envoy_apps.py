"""Several apps through a real Envoy: each Host (and path prefix) reaches its own app's
replicas, a Host no app serves gets 421, and one app's outage leaves the other serving."""

from __future__ import annotations

import aiohttp
import pytest

from tests.envoy_support import require_envoy
from tests.support import eventually, running_replica, running_router
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
