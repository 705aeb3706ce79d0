"""Every kind of bad config value gets a message naming the field, the value and the rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router.config import load_config, parse_config
from router.errors import ConfigError

GOOD: dict[str, Any] = {"discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:8001"}]}}


def with_(**sections: Any) -> dict[str, Any]:
    return {**GOOD, **sections}


def error_of(data: Any, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ or {})
    return str(caught.value)


def test_minimal_config_gets_safe_defaults() -> None:
    config = parse_config(GOOD, {})
    assert config.listen == "127.0.0.1:8080"
    assert config.admin.listen == "127.0.0.1:9090"
    assert config.upstream_tls.verify is True
    assert config.proxy.engine == "fast"
    assert config.attestation.mode == "off"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_(proxy={"connect_timeout": "5x"}), "proxy.connect_timeout: '5x' is not a duration"),
        (
            with_(proxy={"connect_timeout": "0s"}),
            "proxy.connect_timeout: must be greater than zero",
        ),
        (with_(proxy={"retries": -1}), "proxy.retries: Input should be greater than or equal to 0"),
        (
            with_(proxy={"trusted_proxies": ["10.0.0.0/33"]}),
            "proxy.trusted_proxies: '10.0.0.0/33' is not an IP network",
        ),
        (with_(proxy={"engine": "nginx"}), "proxy.engine: Input should be 'aiohttp'"),
        (with_(listen="8080"), "listen: '8080' is not HOST:PORT"),
        (with_(listen="127.0.0.1:70000"), "listen: port 70000 is out of range 0-65535"),
        (with_(admin={"listen": "0.0.0.0:9090"}), "set admin.token_env"),
        (
            with_(admin={"listen": "127.0.0.1:9090", "token_env": "my token"}),
            "is not an environment variable name",
        ),
        (with_(lisen="127.0.0.1:1"), "lisen: unknown key"),
        ({"discovery": {}}, "set exactly one of discovery.static"),
        (
            {"discovery": {"static": [{"id": "a", "url": "ftp://x"}]}},
            "discovery.static[0].url: 'ftp://x' is not an http(s) URL",
        ),
        (
            {
                "discovery": {
                    "static": [{"id": "a", "url": "http://x:1"}, {"id": "a", "url": "http://y:1"}]
                }
            },
            "duplicate ids: a",
        ),
        (
            {"discovery": {"static": [{"url": "http://x:1"}]}},
            "discovery.static[0].id: required but missing",
        ),
        (
            with_(health={"expected_status": "2xx"}),
            "health.expected_status: '2xx' is not a list of status codes",
        ),
        (with_(health={"path": "health"}), "health.path: 'health' must start with '/'"),
        (
            with_(upstream_tls={"ca_file": "/nonexistent/ca.pem"}),
            "upstream_tls.ca_file: '/nonexistent/ca.pem' is not a readable file",
        ),
        ([1, 2], "the config must be a YAML mapping"),
        (
            with_(proxy={"engine": "envoy"}, listen_tls={"listen": "127.0.0.1:0", "ra_tls": True}),
            "listen_tls.ra_tls: proxy.engine: envoy serves certificate files only",
        ),
    ],
)
def test_bad_values_name_field_value_and_rule(data: Any, expected: str) -> None:
    assert expected in error_of(data)


def test_durations_accept_units() -> None:
    config = parse_config(
        with_(proxy={"connect_timeout": "250ms", "response_timeout": "1m", "idle_timeout": 5}), {}
    )
    assert config.proxy.connect_timeout == 0.25
    assert config.proxy.response_timeout == 60
    assert config.proxy.idle_timeout == 5


def test_environment_overrides_nested_fields() -> None:
    config = parse_config(
        GOOD, {"PHALA_ROUTER_PROXY__CONNECT_TIMEOUT": "2s", "PHALA_ROUTER_LISTEN": "127.0.0.1:1234"}
    )
    assert config.proxy.connect_timeout == 2
    assert config.listen == "127.0.0.1:1234"
    assert "PHALA_ROUTER_PROXY__RETRIES" in error_of(GOOD, {"PHALA_ROUTER_PROXY__RETRIES": "[1"})


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, {})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "discovery:\n  static:\n    - {id: a, url: 'http://x:1'}\nproxy:\n  retries: lots\n"
    )
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert "proxy.retries" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_prints_effective_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "discovery:\n  static:\n    - {id: a, url: 'http://x:1'}\nadmin:\n  token_env: ROUTER_ADMIN_TOKEN\n"
    )
    result = run_cli("check-config", "-c", str(good), env={"ROUTER_ADMIN_TOKEN": "t"})
    assert result.returncode == 0, result.stderr
    assert "token_env: ROUTER_ADMIN_TOKEN" in result.stdout
    assert "connect_timeout: 5.0" in result.stdout


def test_every_example_config_is_valid() -> None:
    examples = sorted(Path(__file__).parent.parent.joinpath("config").glob("*.yaml"))
    # sim.yaml is the simulator's; reference.yaml leaves the required discovery commented.
    examples = [p for p in examples if p.name in {"static.yaml", "phala.yaml", "sim-router.yaml"}]
    assert examples, "config/ holds example configs"
    for path in examples:
        load_config(path, {})


def test_secret_variables_named_router_star_are_not_read_as_overrides() -> None:
    data = with_(admin={"listen": "127.0.0.1:9090", "token_env": "PHALA_ROUTER_ADMIN_TOKEN"})
    config = parse_config(
        data,
        {
            "PHALA_ROUTER_ADMIN_TOKEN": "s3cret",
            "PHALA_ROUTER_STICKY_KEY": "k" * 20,
            "PHALA_ROUTER_ROUTING__STICKY__KEY_ENV": "PHALA_ROUTER_STICKY_KEY",
        },
    )
    assert config.admin.token_env == "PHALA_ROUTER_ADMIN_TOKEN"
    assert config.routing.sticky.key_env == "PHALA_ROUTER_STICKY_KEY"
    # A real typo is still an error.
    assert "admin_tokn: unknown key" in error_of(GOOD, {"PHALA_ROUTER_ADMIN_TOKN": "x"})
