"""Operator experience (issue 17): every documented command works as written and errors
are one line with exit 2 (config sources and shipped files: test_config_sources.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.app import RouterApp
from router.config import load_config, parse_config
from router.simulator import Simulator, load_simulator_config
from tests.support import eventually, free_port, running_replica, static_config

ROOT = Path(__file__).resolve().parent.parent
GOOD: dict[str, Any] = {"discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:8001"}]}}


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write(tmp_path: Path, data: Any, name: str = "router.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


# -- 1: credential errors exit 2, printed once -----------------------------------------------


async def test_missing_cloud_api_key_exits_2_with_one_line(tmp_path: Path) -> None:
    config = {"discovery": {"phala": {"app_id": "ab" * 20, "api_url": "http://127.0.0.1:1"}}}
    env = {k: v for k, v in os.environ.items() if k != "PHALA_CLOUD_API_KEY"}
    for command in ("replicas", "serve"):
        code, _, err = await run_cli(command, "-c", write(tmp_path, config), env=env)
        assert code == 2, err
        assert err.count("PHALA_CLOUD_API_KEY") == 1, err
        assert "retrying" not in err
        assert "Traceback" not in err


async def test_rejected_cloud_api_key_exits_2_once(tmp_path: Path) -> None:
    from router.simulator import SimulatorConfig

    async with Simulator(SimulatorConfig()) as sim:
        config = {"discovery": sim.discovery_section()}
        env = {**os.environ, "PHALA_CLOUD_API_KEY": "wrong-key"}
        code, _, err = await run_cli("replicas", "-c", write(tmp_path, config), env=env)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "PHALA_CLOUD_API_KEY" in err
    assert "wrong-key" not in err


# -- 4: the simulator's config is recognised ---------------------------------------------------


async def test_check_config_recognises_the_simulator_config() -> None:
    code, _, err = await run_cli("check-config", "-c", str(ROOT / "config/sim.yaml"))
    assert code == 2
    assert "is a simulator config" in err
    assert "config/sim-router.yaml" in err
    assert "unknown key" not in err


async def test_sim_router_config_routes_through_the_simulator_as_shipped() -> None:
    sim_config = load_simulator_config(ROOT / "config/sim.yaml")
    router_data = yaml.safe_load((ROOT / "config/sim-router.yaml").read_text())
    phala = router_data["discovery"]["phala"]
    # In step with sim.yaml: same app, key, ports and domain.
    assert phala["app_id"] == sim_config.app_id.removeprefix("app_")
    assert phala["api_url"] == f"http://127.0.0.1:{sim_config.api_port}/api/v1"
    assert phala["port"] == sim_config.app_port
    assert phala["scheme"] == ("https" if sim_config.tls else "http")
    gateway = f"127.0.0.1:{sim_config.gateway_port}"
    assert router_data["discovery"]["connect_to"] == {f"*.{sim_config.base_domain}": gateway}
    # And it works: the same simulator on ephemeral ports, the router config with only the
    # port numbers swapped.
    async with Simulator(
        sim_config.model_copy(update={"api_port": 0, "gateway_port": 0, "control_port": 0})
    ) as sim:
        phala["api_url"] = sim.api_url
        router_data["discovery"]["connect_to"] = sim.connect_to
        router_data.update(listen="127.0.0.1:0", admin={"listen": "127.0.0.1:0"})
        environ = {"PHALA_CLOUD_API_KEY": sim_config.api_key}
        app = RouterApp(parse_config(router_data, environ), environ=environ)
        await app.start()
        try:
            await app.health.check_now()
            host, port = app.engine.addresses[0]
            async with aiohttp.ClientSession() as client:
                async with client.get(f"http://{host}:{port}/") as resp:
                    assert resp.status == 200
        finally:
            await app.stop(1)


# -- 3: reference and schema in step with the models -------------------------------------------


# -- 8: check-config checks secrets by name ----------------------------------------------------


async def test_check_config_names_an_unset_secret_variable(tmp_path: Path) -> None:
    config = {**GOOD, "admin": {"listen": "127.0.0.1:9090", "token_env": "MY_ADMIN_TOKEN"}}
    env = {k: v for k, v in os.environ.items() if k != "MY_ADMIN_TOKEN"}
    code, _, err = await run_cli("check-config", "-c", write(tmp_path, config), env=env)
    assert code == 2
    assert "admin.token_env: environment variable MY_ADMIN_TOKEN is not set" in err
    code, _, err = await run_cli(
        "check-config", "-c", write(tmp_path, config), env={**env, "MY_ADMIN_TOKEN": "t0ken"}
    )
    assert code == 0, err
    assert "t0ken" not in err


# -- issue 15: an env value that fails to parse is never printed --------------------------------


@pytest.mark.parametrize("value", ["sk_live_SECRETVALUE123", "[sk_live_SECRETVALUE123", "-987654"])
async def test_check_config_never_prints_a_bad_env_value(tmp_path: Path, value: str) -> None:
    env = {**os.environ, "PHALA_ROUTER_PROXY__RETRIES": value}
    code, out, err = await run_cli("check-config", "-c", write(tmp_path, GOOD), env=env)
    assert code == 2
    assert "PHALA_ROUTER_PROXY__RETRIES" in err
    assert value not in out + err


# -- 10: duplicate keys, compound durations ----------------------------------------------------


# -- 11: the PHALA_ROUTER_ prefix ---------------------------------------------------------------


# -- 5: dns render says what it needs ----------------------------------------------------------


async def test_dns_render_says_what_is_missing(tmp_path: Path) -> None:
    code, _, err = await run_cli("dns", "render")
    assert code == 2
    assert "-c CONFIG" in err
    assert "--from-admin" in err
    code, _, err = await run_cli("dns", "render", "-c", write(tmp_path, GOOD))
    assert code == 2
    assert "--name" in err
    assert "dns.name" in err


async def test_dns_render_with_nothing_healthy_is_a_visible_failure(tmp_path: Path) -> None:
    config = static_config(
        [("a", f"http://127.0.0.1:{free_port()}")], dns={"when_empty": "fail_closed"}
    )
    code, _, err = await run_cli(
        "dns",
        "render",
        "-c",
        write(tmp_path, config),
        "--name",
        "api.example.com",
        "--format",
        "json",
    )
    assert code == 1
    assert "no address record for api.example.com." in err


async def test_dns_render_from_admin_needs_no_config() -> None:
    async with running_replica("a") as a:
        config = parse_config(static_config([("a", f"http://127.0.0.1:{a.port}")]), {})
        app = RouterApp(config, environ={})
        await app.start()
        try:
            await app.health.check_now()
            admin = f"http://127.0.0.1:{app.admin.port}"
            code, out, err = await run_cli(
                "dns",
                "render",
                "--from-admin",
                admin,
                "--name",
                "api.example.com",
                "--format",
                "json",
            )
        finally:
            await app.stop(1)
    assert code == 0, err
    assert {r["value"] for r in json.loads(out) if r["type"] == "A"} == {"127.0.0.1"}


# -- 7: a busy port ----------------------------------------------------------------------------


async def test_a_busy_port_is_one_line_naming_address_and_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = static_config([("a", "http://127.0.0.1:1")], listen=f"127.0.0.1:{port}")
        code, _, err = await run_cli("serve", "-c", write(tmp_path, config))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port} (listen): address already in use" in err
    assert "Traceback" not in err


# -- 9: reload compares with the running process -----------------------------------------------


async def test_reload_reports_only_what_changed(tmp_path: Path) -> None:
    async with running_replica("a") as a:
        config = static_config([("a", f"http://127.0.0.1:{a.port}")], health={"enabled": False})
        path = write(tmp_path, config)
        app = RouterApp(load_config(path, {}), config_path=path, environ={})
        await app.start()
        try:
            nothing = app.reload()
            assert (nothing.applied, nothing.restart_required) == ([], [])
            write(tmp_path, {**config, "listen": f"127.0.0.1:{free_port()}"})
            assert app.reload().restart_required == ["listen"]
            write(tmp_path, {**config, "proxy": {"retries": 1}})  # listen back as started
            back = app.reload()
            assert (back.applied, back.restart_required) == (["proxy"], [])
        finally:
            await app.stop(1)


# -- 13: SIGTERM drain is logged; text logs are UTC RFC 3339 -----------------------------------


async def test_sigterm_logs_drain_start_and_end_in_utc(tmp_path: Path) -> None:
    import re
    import signal

    admin = free_port()
    config = static_config(
        [("a", "http://127.0.0.1:1")],
        listen=f"127.0.0.1:{free_port()}",
        admin={"listen": f"127.0.0.1:{admin}"},
        health={"enabled": False},
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router.cli",
        "serve",
        "-c",
        write(tmp_path, config),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    started = await asyncio.wait_for(process.stderr.readline(), 30)
    while b"serving on" not in started:
        started = await asyncio.wait_for(process.stderr.readline(), 30)
    process.send_signal(signal.SIGTERM)
    rest = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
    assert await process.wait() == 0
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", started.decode())
    assert "shutting down: /readyz is 503; draining 0 request(s) in flight" in rest
    assert "shutdown: drained in" in rest


# -- 6 and 13: `demo --access-log` logs requests; each health transition is one line ---------


async def test_demo_access_log_and_one_line_per_transition() -> None:
    import re
    import signal

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router.cli",
        "demo",
        "--port",
        "0",
        "--admin-port",
        "0",
        "--access-log",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        router_url = ""
        while not router_url:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            assert line, "the demo ended before printing its router URL"
            if match := re.match(r"\s+router\s+(http://\S+)", line):
                router_url = match.group(1)
        async with aiohttp.ClientSession() as client:

            async def answered() -> bool:
                async with client.get(f"{router_url}/demo-probe") as resp:
                    return resp.status == 200

            await eventually(answered, timeout=20)
    finally:
        process.send_signal(signal.SIGTERM)
        err = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
        await process.wait()
    access = [line for line in err.splitlines() if "router.access" in line]
    assert any("GET /demo-probe 200" in line for line in access), err
    ups = [line for line in err.splitlines() if re.search(r"replica \S+: pending -> healthy", line)]
    ids = [re.search(r"replica (\S+):", line).group(1) for line in ups]  # type: ignore[union-attr]
    assert ids, err
    assert len(ids) == len(set(ids)), "a transition was logged twice"
    assert not [line for line in err.splitlines() if "healthy: first check passed" in line]


async def test_simulate_on_a_busy_port_names_the_simulator_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sim = {"api_port": port, "gateway_port": 0, "control_port": 0, "replicas": [{}]}
        code, _, err = await run_cli("simulate", "-c", write(tmp_path, sim, "sim.yaml"))
    assert code == 2, err
    assert f"cannot listen on 127.0.0.1:{port} (api_port): address already in use" in err
    assert "Traceback" not in err


# -- footprint: the demo installs the router alone ---------------------------------------------
