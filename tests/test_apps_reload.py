"""Reloading `apps:` under steady traffic: an app added, a host moved between apps, an app
removed; the running apps' traffic sees 0 failed requests, and a removed app's host is
misdirected (421) from the reload answer on."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from router.app import RouterApp
from router.config import load_config
from tests.support import eventually, running_replica


def config(apps: dict[str, tuple[list[str], int]]) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "health": {"interval": "100ms", "unhealthy_interval": "50ms", "timeout": "500ms"},
        "apps": [
            {
                "name": name,
                "hosts": hosts,
                "discovery": {"static": [{"id": f"{name}-0", "url": f"http://127.0.0.1:{port}"}]},
            }
            for name, (hosts, port) in apps.items()
        ],
    }


async def replica_of(client: aiohttp.ClientSession, url: str, host: str) -> tuple[int, str]:
    async with client.get(url, headers={"Host": host}) as response:
        body = await response.json(content_type=None)
        return response.status, body.get("replica") or body.get("error", "")


async def test_apps_added_moved_and_removed_live_without_a_failed_request(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.yaml"
    async with (
        running_replica("api") as api,
        running_replica("ui") as ui,
        running_replica("docs") as docs,
        aiohttp.ClientSession() as client,
    ):
        first = {
            "api": (["api.localhost"], api.port),
            "ui": (["ui.localhost", "old.localhost"], ui.port),
        }
        path.write_text(yaml.safe_dump(config(first)))
        app = RouterApp(load_config(path, {}), config_path=str(path), environ={})
        await app.start()
        host, port = app.engine.addresses[0]
        url = f"http://{host}:{port}/"
        statuses: dict[str, list[int]] = {"api.localhost": [], "ui.localhost": []}
        stop = asyncio.Event()
        routable = [app.reconciler, *(p.reconciler for p in app.apps.planes)]
        await eventually(lambda: all(r.current.routable for r in routable), timeout=10)

        async def steady(name: str) -> None:
            while not stop.is_set():
                statuses[name].append((await replica_of(client, url, name))[0])

        traffic = [asyncio.create_task(steady(name)) for name in statuses]
        try:
            await eventually(lambda: all(len(s) > 5 for s in statuses.values()), timeout=10)

            # 1. add an app: it serves once its first health checks pass
            second = {**first, "docs": (["docs.localhost"], docs.port)}
            path.write_text(yaml.safe_dump(config(second)))
            assert app.reload().error is None
            await eventually(lambda: any(p.name == "docs" for p in app.apps.planes), timeout=10)
            assert await replica_of(client, url, "docs.localhost") == (200, "docs")

            # 2. move ui.localhost from app ui to app api: answered by api from the reload on
            third = {
                "api": (["api.localhost", "ui.localhost"], api.port),
                "ui": (["old.localhost"], ui.port),
                "docs": (["docs.localhost"], docs.port),
            }
            path.write_text(yaml.safe_dump(config(third)))
            assert app.reload().error is None
            assert await replica_of(client, url, "ui.localhost") == (200, "api")

            # 3. remove app ui: its host reaches nothing from the reload answer on
            del third["ui"]
            path.write_text(yaml.safe_dump(config(third)))
            assert app.reload().error is None
            assert await replica_of(client, url, "old.localhost") == (421, "misdirected_request")
            await eventually(lambda: all(p.name != "ui" for p in app.apps.planes), timeout=10)
            async with client.get(f"http://127.0.0.1:{app.admin.port}/metrics") as response:
                assert 'app="ui"' not in await response.text()  # its series left /metrics
            count = sum(len(s) for s in statuses.values())
            await eventually(
                lambda: sum(len(s) for s in statuses.values()) > count + 10, timeout=10
            )
        finally:
            stop.set()
            for task in traffic:
                with suppress(asyncio.CancelledError):
                    await task
            await app.stop(1)
        for name, seen in statuses.items():
            assert set(seen) == {200}, (name, [s for s in seen if s != 200][:5])


async def test_a_reload_changing_the_primary_app_is_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.yaml"
    async with running_replica("api") as api, running_replica("ui") as ui:
        first = {"api": (["api.localhost"], api.port), "ui": (["ui.localhost"], ui.port)}
        path.write_text(yaml.safe_dump(config(first)))
        app = RouterApp(load_config(path, {}), config_path=str(path), environ={})
        await app.start()
        try:
            swapped = {"ui": (["ui.localhost"], ui.port), "api": (["api.localhost"], api.port)}
            path.write_text(yaml.safe_dump(config(swapped)))
            result = app.reload()
            assert result.error is not None
            assert "primary app" in result.error
            assert app.apps.primary_name == "api"
        finally:
            await app.stop(1)
