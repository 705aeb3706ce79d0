"""`proxy.workers > 1` with `apps:`: an operator action on an app other than the primary,
made on worker 0's admin API, reaches every worker (connections the kernel hands to the
other worker see the drain too)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.support import eventually, free_port, running_replica
from tests.test_metrics import parse, value
from tests.test_worker_reports import _ready


async def test_draining_another_apps_replica_reaches_every_worker(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with (
        running_replica("api-0") as api,
        running_replica("ui-0") as ui0,
        running_replica("ui-1") as ui1,
    ):
        admin_port, listen = free_port(), f"127.0.0.1:{free_port()}"
        config = {
            "listen": listen,
            "admin": {"listen": f"127.0.0.1:{admin_port}"},
            "health": {"enabled": False},
            "proxy": {"workers": 2, "engine": "fast"},
            "apps": [
                {
                    "name": "api",
                    "hosts": ["api.localhost"],
                    "discovery": {
                        "static": [{"id": "api-0", "url": f"http://127.0.0.1:{api.port}"}]
                    },
                },
                {
                    "name": "ui",
                    "hosts": ["ui.localhost"],
                    "discovery": {
                        "static": [
                            {"id": r.name, "url": f"http://127.0.0.1:{r.port}"} for r in (ui0, ui1)
                        ]
                    },
                },
            ],
        }
        path = tmp_path / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        router = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            await eventually(lambda: _ready(client, admin), timeout=20, interval=0.2)

            async def both_reporting() -> bool:
                async with client.get(f"{admin}/metrics") as resp:
                    return value(parse(await resp.text()), "router_workers_reporting") == 2

            await eventually(both_reporting, timeout=20, interval=0.2)
            drain = f"{admin}/admin/apps/ui/replicas/ui-0/drain"
            async with client.post(drain) as resp:
                assert resp.status == 200
            before = ui0.hits
            sent = 40
            for _ in range(sent):  # a new connection each: the kernel spreads them
                async with aiohttp.ClientSession() as one:
                    url = f"http://{listen}/x"
                    async with one.get(url, headers={"Host": "ui.localhost"}) as resp:
                        assert resp.status == 200
                        assert (await resp.json())["replica"] == "ui-1"

            async def by_worker() -> list[float | None]:
                async with client.get(f"{admin}/metrics") as resp:
                    s = parse(await resp.text())
                return [value(s, "router_worker_requests_total", worker=w) for w in ("0", "1")]

            async def all_counted() -> bool:  # worker 1 reports once a second
                return sum(n or 0 for n in await by_worker()) == sent

            await eventually(all_counted, timeout=10, interval=0.2)
            served = await by_worker()
        finally:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(timeout=20)
            except subprocess.TimeoutExpired:
                router.kill()
                router.wait()
    assert ui0.hits == before
    assert all(served), f"one worker served nothing, so the test proves nothing: {served}"
