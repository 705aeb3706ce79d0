"""Config reload: valid changes apply under load with no failed request; invalid ones are
refused with the startup message and the running config stays."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.app import RouterApp
from router.config import load_config
from tests.support import eventually, free_port, running_replica, static_config


def write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


async def test_reload_under_load_changes_replicas_with_no_failed_request(
    engine: str, tmp_path: Path
) -> None:
    async with running_replica("a") as a, running_replica("b") as b, running_replica("c") as c:
        path = tmp_path / "router.yaml"
        urls = {r.name: f"http://127.0.0.1:{r.port}" for r in (a, b, c)}
        write(
            path,
            static_config(
                [("a", urls["a"]), ("b", urls["b"])],
                health={"enabled": False},
                proxy={"engine": engine},
            ),
        )
        app = RouterApp(load_config(path, {}), config_path=str(path), environ={})
        await app.start()
        host, port = app.engine.addresses[0]
        seen: Counter[str] = Counter()
        failures: list[str] = []
        stop = asyncio.Event()
        reloaded = asyncio.Event()
        late_hits_on_removed: list[str] = []

        async def load() -> None:
            async with aiohttp.ClientSession() as client:
                for _ in range(2000):  # bounded: the loop ends by itself
                    if stop.is_set():
                        return
                    sent_after_reload = reloaded.is_set()
                    try:
                        async with client.get(f"http://{host}:{port}/") as resp:
                            if resp.status != 200:
                                failures.append(str(resp.status))
                            else:
                                replica = (await resp.json())["replica"]
                                seen[replica] += 1
                                if sent_after_reload and replica == "a":
                                    late_hits_on_removed.append(replica)
                    except aiohttp.ClientError as exc:
                        failures.append(repr(exc))

        loader = asyncio.create_task(load())
        try:
            await eventually(lambda: seen["a"] > 5 and seen["b"] > 5)
            write(
                path,
                static_config(
                    [("b", urls["b"]), ("c", urls["c"])],
                    health={"enabled": False},
                    proxy={"retries": 1, "engine": engine},
                    routing={"policy": "least_request"},
                ),
            )
            result = app.reload()
            reloaded.set()
            assert result.error is None
            assert result.restart_required == []
            await eventually(lambda: seen["c"] > 5)
            # Removed at once: no request sent after the reload reached it.
            assert late_hits_on_removed == []
            assert {r["id"] for r in app.status()["replicas"]} == {"b", "c"}
            assert app.status()["policy"] == "least_request"
        finally:
            stop.set()
            await loader
            await app.stop(1)
        assert failures == []


async def test_invalid_config_on_reload_keeps_serving_the_old_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_replica("a") as a:
        path = tmp_path / "router.yaml"
        write(path, static_config([("a", f"http://127.0.0.1:{a.port}")], health={"enabled": False}))
        app = RouterApp(load_config(path, {}), config_path=str(path), environ={})
        await app.start()
        try:
            path.write_text("discovery:\n  static: []\nproxy:\n  retries: many\n")
            with caplog.at_level(logging.ERROR):
                result = app.reload()
            assert result.error is not None
            assert "proxy.retries" in result.error
            assert "reload refused" in caplog.text
            host, port = app.engine.addresses[0]
            async with (
                aiohttp.ClientSession() as client,
                client.get(f"http://{host}:{port}/") as resp,
            ):
                assert resp.status == 200
        finally:
            await app.stop(1)


async def test_listen_change_is_reported_as_needing_a_restart(tmp_path: Path) -> None:
    async with running_replica("a") as a:
        path = tmp_path / "router.yaml"
        config = static_config([("a", f"http://127.0.0.1:{a.port}")], health={"enabled": False})
        write(path, config)
        app = RouterApp(load_config(path, {}), config_path=str(path), environ={})
        await app.start()
        try:
            write(path, {**config, "listen": f"127.0.0.1:{free_port()}"})
            assert app.reload().restart_required == ["listen"]
        finally:
            await app.stop(1)


async def test_sighup_reloads_a_running_serve_process(tmp_path: Path) -> None:
    async with running_replica("a") as a, running_replica("b") as b:
        path = tmp_path / "router.yaml"
        port, admin = free_port(), free_port()
        base = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            listen=f"127.0.0.1:{port}",
            admin={"listen": f"127.0.0.1:{admin}"},
            health={"enabled": False},
        )
        write(path, base)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router.cli",
            "serve",
            "-c",
            str(path),
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            async with aiohttp.ClientSession() as client:

                async def status_ids() -> set[str]:
                    try:
                        async with client.get(f"http://127.0.0.1:{admin}/status") as resp:
                            return {r["id"] for r in json.loads(await resp.text())["replicas"]}
                    except aiohttp.ClientError:
                        return set()

                async def has(ids: set[str]) -> bool:
                    return await status_ids() == ids

                await eventually(lambda: has({"a"}), timeout=20)
                write(
                    path,
                    {
                        **base,
                        "discovery": {"static": [{"id": "b", "url": f"http://127.0.0.1:{b.port}"}]},
                    },
                )
                process.send_signal(signal.SIGHUP)
                await eventually(lambda: has({"b"}), timeout=10)
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 20) == 0
