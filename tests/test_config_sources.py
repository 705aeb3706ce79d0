"""Config sources and shipped files (issue 17): the PHALA_ROUTER_ prefix, duplicate keys,
compound durations, env values never shown, the generated reference and schema, what a
reload applies, and which packages a plain install pulls in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from router.config import load_config, parse_config
from router.config_reference import json_schema, reference_yaml
from router.errors import ConfigError
from router.settings_types import parse_duration

ROOT = Path(__file__).resolve().parent.parent
GOOD: dict[str, Any] = {"discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:8001"}]}}


def write(tmp_path: Path, data: Any, name: str = "router.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_reference_and_schema_are_generated_from_the_models() -> None:
    assert (ROOT / "config/reference.yaml").read_text() == reference_yaml(), (
        "regenerate: phala-router config-schema --reference > config/reference.yaml"
    )
    assert json.loads((ROOT / "config/schema.json").read_text()) == json_schema(), (
        "regenerate: phala-router config-schema > config/schema.json"
    )


def test_reference_defaults_are_the_models_defaults() -> None:
    data = yaml.safe_load(reference_yaml())
    assert "discovery" not in data  # required: shown commented
    data["discovery"] = GOOD["discovery"]
    assert parse_config(data, {}) == parse_config(GOOD, {})
    for key in ("listen_tls", "proxy", "routing", "health", "attestation", "dns", "metrics"):
        assert key in reference_yaml()
    assert "client_header_timeout: 10s" in reference_yaml()


def test_shipped_example_configs_are_valid() -> None:
    for name in ("static.yaml", "phala.yaml", "sim-router.yaml"):
        load_config(ROOT / "config" / name, {})


@pytest.mark.parametrize(
    "variable", ["PHALA_ROUTER_LISTEN", "PHALA_ROUTER_ADMIN__LISTEN", "PHALA_ROUTER_HEALTH__PATH"]
)
def test_a_validator_quoting_the_value_does_not_leak_an_env_value(variable: str) -> None:
    secret = "0.0.0.0:sk_live_SECRETVALUE123"
    with pytest.raises(ConfigError) as caught:
        parse_config(GOOD, {variable: secret})
    assert variable in str(caught.value)
    assert "SECRETVALUE" not in str(caught.value)


def test_duplicate_yaml_keys_are_refused_with_the_key_and_line(tmp_path: Path) -> None:
    text = "listen: 127.0.0.1:8080\ndiscovery:\n  static: []\nlisten: 0.0.0.0:80\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {})
    assert "line 4: duplicate key 'listen' (first set on line 1)" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("500us", 0.0005), ("1d", 86400.0), ("1h30m", 5400.0), ("250ms", 0.25)],
)
def test_compound_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@given(
    st.lists(
        st.tuples(st.integers(0, 999), st.sampled_from(["d", "h", "m", "s", "ms"])),
        min_size=1,
        max_size=4,
    )
)
def test_a_duration_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    size = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * size[u] for n, u in parts))


def test_overrides_use_phala_router_prefix_and_ignore_service_links() -> None:
    environ = {
        "PHALA_ROUTER_PROXY__CONNECT_TIMEOUT": "2s",
        "ROUTER_PORT": "tcp://10.0.0.1:80",  # a Service called `router`: not ours
        "ROUTER_PROXY__RETRIES": "9",  # the old prefix is not read
        "PHALA_ROUTER_PORT": "tcp://10.0.0.1:80",  # a Service called `phala-router`
        "PHALA_ROUTER_PORT_80_TCP_ADDR": "10.0.0.1",
        "PHALA_ROUTER_SERVICE_HOST": "10.0.0.1",
        "PHALA_ROUTER_SERVICE_PORT_HTTP": "80",
    }
    config = parse_config(GOOD, environ)
    assert config.proxy.connect_timeout == 2.0
    assert config.proxy.retries == 2


def test_every_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(GOOD, {"PHALA_ROUTER_PROXY__BOGUS": "1"})
    assert "PHALA_ROUTER_PROXY__BOGUS" in str(caught.value)


def test_runtime_dependencies_are_bounded_and_test_tools_are_dev_only() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"]
    for requirement in runtime:
        assert re.search(r"<\s*\d", requirement), f"{requirement}: give it an upper bound"
    names = {re.split(r"[<>=!~; ]", r, maxsplit=1)[0].lower() for r in runtime}
    for test_only in ("playwright", "hypothesis", "trustme", "pytest", "locust", "matplotlib"):
        assert test_only not in names
    dev = " ".join(project["optional-dependencies"]["dev"])
    assert "playwright" in dev
    assert "hypothesis" in dev
    assert "trustme" in dev
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e .\n" in makefile  # `make demo`: no extras
    assert "$(BIN)/phala-router demo $(ARGS)" in makefile


@pytest.mark.parametrize(
    ("change", "applied", "restart"),
    [
        ({}, [], []),
        ({"proxy": {"retries": 1}}, ["proxy"], []),
        ({"proxy": {"engine": "aiohttp"}}, [], ["proxy.engine"]),
        ({"health": {"interval": "1m30s"}}, ["health"], []),
        ({"routing": {"policy": "least_request"}}, ["routing"], []),
        ({"upstream_tls": {"verify": False}}, ["upstream"], []),
        ({"attestation": {"interval": "1h"}}, [], ["attestation"]),
        ({"acme_webroot": "/srv/acme"}, [], ["acme_webroot"]),
    ],
)
def test_reload_plan(change: dict[str, Any], applied: list[str], restart: list[str]) -> None:
    from router.reload_plan import plan_reload

    started = parse_config(GOOD, {})
    plan = plan_reload(started, started, parse_config({**GOOD, **change}, {}))
    assert (plan.apply, plan.restart_required) == (applied, restart)
