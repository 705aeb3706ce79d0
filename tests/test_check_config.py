"""`check-config` builds what `serve` builds (the composition root, every app, the TLS
listener's certificate) without opening a socket, so a config it passes does not fail at
start, and the error it prints is the one `serve` would print, naming the app."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from router.cli import main
from tests.support import free_port

STATIC = {"static": [{"id": "r1", "url": "http://127.0.0.1:1"}]}


def apps_config(ui_attestation: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "apps": [
            {"name": "api", "hosts": ["api.example.com"], "discovery": STATIC},
            {
                "name": "ui",
                "hosts": ["ui.example.com"],
                "discovery": STATIC,
                "attestation": {**ui_attestation, "allow_unbound": True},
            },
        ],
    }


def run(command: str, tmp_path: Path, config: dict[str, Any]) -> Result:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(main, [command, "-c", str(path)], env={})


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if "attestation" in line]


def test_check_config_refuses_what_serve_refuses_and_names_the_app(tmp_path: Path) -> None:
    # A static app cannot read quotes from the Cloud API: only building the attestor
    # finds that, which check-config used to skip.
    config = apps_config({"mode": "cloud"})
    checked = run("check-config", tmp_path, config)
    assert checked.exit_code == 2
    assert "app ui: attestation.mode: cloud reads quotes from the Cloud API" in checked.output
    assert "Traceback" not in checked.output
    served = run("serve", tmp_path, config)
    assert served.exit_code == 2
    assert error_lines(served) == error_lines(checked)


def test_check_config_accepts_every_app_serve_would_start(tmp_path: Path) -> None:
    config = apps_config({"mode": "guest-agent"})
    result = run("check-config", tmp_path, config)
    assert result.exit_code == 0, result.output
    # Nothing was bound: the ports are still free.
    for address in (config["listen"], config["admin"]["listen"]):
        host, port = address.rsplit(":", 1)
        with socket.socket() as probe:
            probe.bind((host, int(port)))


def test_check_config_loads_the_listener_certificate(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    config = {
        "listen_tls": {
            "listen": f"127.0.0.1:{free_port()}",
            "cert_file": str(broken),
            "key_file": str(broken),
        },
        "discovery": STATIC,
    }
    result = run("check-config", tmp_path, config)
    assert result.exit_code == 2
    # Checked when the config loads: names the section, the file and what it must hold.
    assert "listen_tls" in result.output
    assert str(broken) in result.output
    assert "do not load as a PEM certificate chain" in result.output
    assert "Traceback" not in result.output
