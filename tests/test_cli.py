"""The one-shot commands a user runs by hand: `replicas`, `dns render`, `attest`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import yaml

from tests.support import free_port, running_replica, static_config


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_dns_render_prints_records_for_the_healthy_replicas(tmp_path: Path) -> None:
    async with running_replica("a") as a:
        config = static_config(
            [
                ("a", f"http://127.0.0.1:{a.port}"),
                ("b", f"http://127.0.0.2:{free_port()}"),
            ],
            dns={"name": "api.example.com.", "service": "http"},
            health={"timeout": "500ms"},
        )
        path = tmp_path / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        code, out, err = await run_cli("dns", "render", "-c", str(path), "--format", "json")
    assert code == 0, err
    records = json.loads(out)
    addresses = {r["value"] for r in records if r["type"] == "A"}
    assert addresses == {"127.0.0.1"}  # b refuses connections: unhealthy, left out


async def test_replicas_prints_a_table_of_the_static_set(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        yaml.safe_dump(static_config([("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2")]))
    )
    code, out, err = await run_cli("replicas", "-c", str(path), "--json")
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == ["a", "b"]


async def test_attest_with_attestation_off_says_what_to_set(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(static_config([("a", "http://127.0.0.1:1")])))
    code, _, err = await run_cli("attest", "-c", str(path))
    assert code == 2
    assert "attestation.mode is off" in err
    assert "Traceback" not in err
