"""Deployment recipes, tested as far as a machine without a Docker engine allows."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def test_dockerfile_is_small_non_root_and_health_checked() -> None:
    final = dockerfile_instructions()
    kinds = [k for k, _ in final]
    assert final[0][1].startswith("python:3.11-slim")
    users = [v for k, v in final if k == "USER"]
    assert users
    assert not users[-1].startswith(("0", "root"))
    assert "HEALTHCHECK" in kinds
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["phala-router"]
    assert json.loads(dict(final)["CMD"])[:2] == ["serve", "-c"]
    for kind, value in [
        *final,
        ("COPY", "pyproject.toml README.md ./"),
        ("COPY", "router ./router"),
    ]:
        if kind == "COPY" and not value.startswith("--from"):
            for source in value.split()[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_image_command_line_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    """Run the image's ENTRYPOINT + CMD outside Docker, then its HEALTHCHECK command."""
    final = dict(dockerfile_instructions())
    admin_port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{free_port()}",
                "admin": {"listen": f"127.0.0.1:{admin_port}"},
                "discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:1"}]},
            }
        )
    )
    argv = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    argv = [str(BIN / argv[0])] + [
        str(config) if a.endswith("router.yaml") else a for a in argv[1:]
    ]
    check = final["HEALTHCHECK"].split(" CMD ", 1)[1]
    check_argv = [a.replace("9090", str(admin_port)) for a in json.loads(check)]
    check_argv[0] = sys.executable
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(check_argv, capture_output=True, check=False).returncode != 0:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    assert process.returncode == 0


def test_systemd_unit_runs_the_cli_with_its_config() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy/systemd/phala-router.service")
    service = unit["Service"]
    start = shlex.split(service["ExecStart"])
    assert start[0].endswith("/phala-router")
    assert start[1:3] == ["serve", "-c"]
    assert shlex.split(service["ExecStartPre"])[1] == "check-config"
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    assert service["User"] != "root"
    assert service["NoNewPrivileges"] == "yes"
    help_text = subprocess.run(
        [str(BIN / "phala-router"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout
    for command in ("serve", "check-config"):
        assert command in help_text


def test_phala_compose_runs_the_router_with_a_valid_config() -> None:
    from router.config import parse_config

    compose = yaml.safe_load((ROOT / "deploy/phala/docker-compose.yml").read_text())
    service = compose["services"]["phala-router"]
    assert service["command"][:2] == ["serve", "-c"]
    env = service["environment"]
    assert (
        env["PHALA_CLOUD_API_KEY"] == "${PHALA_CLOUD_API_KEY}"
    )  # an encrypted env var, never inline
    embedded = yaml.safe_load(compose["configs"]["router_yaml"]["content"])
    app_id = "ab" * 20
    config = parse_config(embedded, {"PHALA_ROUTER_DISCOVERY__PHALA__APP_ID": app_id})
    assert config.discovery.phala is not None
    assert config.discovery.phala.app_id == app_id
    assert config.admin.token_env == "PHALA_ROUTER_ADMIN_TOKEN"
