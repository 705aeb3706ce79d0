"""The `apps:` config: two apps from one file, top-level sections as defaults, errors that
name the app and the field, and the single-app layout as one implicit app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from router.app_views import app_views, find_app, host_table
from router.cli import main
from router.config import load_config, parse_config
from router.errors import ConfigError
from tests.support import free_port, running_replica
from tests.test_cli import run_cli

APP_A = "a" * 40
APP_B = "b" * 40
TWO_APPS = f"""
listen: "127.0.0.1:8080"
discovery:
  phala: {{api_key_env: SHARED_CLOUD_KEY, interval: 30s}}
health: {{path: /healthz, interval: 2s}}
apps:
  - name: api
    hosts: [api.example.com, "*.api.example.com"]
    default: true
    discovery: {{phala: {{app_id: app_{APP_A}}}}}
  - name: ui
    hosts: [ui.example.com, api.example.com/admin]
    max_connections: 100
    discovery: {{phala: {{app_id: {APP_B}, interval: 5s}}}}
    health: {{interval: 10s}}
"""


def two_apps(**change: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(TWO_APPS)
    data.update(change)
    return data


def test_top_level_sections_are_defaults_each_app_overrides() -> None:
    api, ui = app_views(parse_config(two_apps()))
    assert (api.name, ui.name) == ("api", "ui")
    assert api.config.discovery.phala
    assert ui.config.discovery.phala
    assert api.config.discovery.phala.app_id == APP_A
    assert ui.config.discovery.phala.app_id == APP_B
    # one Cloud API key serves both apps; the app's own keys win key by key
    assert api.config.discovery.phala.api_key_env == ui.config.discovery.phala.api_key_env
    assert (api.config.discovery.phala.interval, ui.config.discovery.phala.interval) == (30, 5)
    assert (api.config.health.interval, ui.config.health.interval) == (2, 10)
    assert ui.config.health.path == "/healthz"
    assert (api.max_connections, ui.max_connections) == (None, 100)
    assert api.config.apps is None  # a view is a single-app config


def test_the_host_table_routes_hosts_prefixes_and_the_default() -> None:
    table = host_table(app_views(parse_config(two_apps())))
    assert table.lookup("api.example.com", "/v1/items") == "api"
    assert table.lookup("api.example.com", "/admin/users") == "ui"
    assert table.lookup("eu.api.example.com", "/") == "api"
    assert table.lookup("ui.example.com", "/") == "ui"
    assert table.lookup("unknown.example.org", "/") == "api"  # the default app


def test_single_app_configs_are_one_implicit_default_app() -> None:
    for path in ("config/static.yaml", "config/phala.yaml", "config/sim-router.yaml"):
        config = load_config(Path(path), environ={})
        (view,) = app_views(config)
        assert (view.name, view.default, view.config) == ("default", True, config)
        assert host_table((view,)).lookup("anything.example", "/") == "default"


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ={})
    return str(caught.value)


def test_an_error_names_the_app_and_the_field_once() -> None:
    data = two_apps()
    data["apps"][1]["discovery"]["phala"]["app_id"] = "nope"
    message = error_of(data)
    assert message.startswith("apps[1] (ui).discovery.phala.app_id: 'nope' is not a Phala app_id")
    assert len(message.splitlines()) == 1


def test_a_missing_app_id_is_reported_for_the_app_lacking_it() -> None:
    data = two_apps()
    del data["apps"][0]["discovery"]
    assert error_of(data) == "apps[0] (api).discovery.phala.app_id: required but missing"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["apps"][1].update(name="api"), "each name must be unique; repeated: api"),
        (
            lambda d: d["apps"][1].update(default=True),
            "at most one app may be the default; got api, ui",
        ),
        (
            lambda d: d["apps"][1].update(hosts=["API.example.com."]),
            "api.example.com is claimed by both api and ui",
        ),
        (lambda d: d["apps"][1].update(hosts=[]), "app 'ui' has no hosts"),
        (
            lambda d: d["apps"][1].update(hosts=["https://ui.example.com"]),
            "apps[1] (ui).hosts: 'https://ui.example.com' is not a host name",
        ),
        (
            lambda d: d["apps"][1].update(name="UI app"),
            "apps[1] (UI app).name: String should match pattern",
        ),
        (lambda d: d.update(apps=[]), "apps: the list is empty"),
        (
            lambda d: [
                app["discovery"].update(connect_to={"*.gw.example": f"127.0.0.{i + 1}:443"})
                for i, app in enumerate(d["apps"])
            ],
            "'*.gw.example' is 127.0.0.1:443 in app api but 127.0.0.2:443 in app ui",
        ),
    ],
)
def test_rules_across_apps_are_explained(change: Any, expected: str) -> None:
    data = two_apps()
    change(data)
    assert expected in error_of(data)


def test_find_app_names_the_choices() -> None:
    config = parse_config(two_apps())
    assert find_app(config, "ui").name == "ui"
    with pytest.raises(ValueError, match="no app named 'web'; the apps are: api, ui"):
        find_app(config, "web")
    with pytest.raises(ValueError, match=r"several apps \(api, ui\): choose one with --app"):
        find_app(config, None)


def test_check_config_accepts_two_apps_and_prints_each_once(tmp_path: Path) -> None:
    path = tmp_path / "apps.yaml"
    path.write_text(TWO_APPS)
    result = CliRunner().invoke(
        main, ["check-config", "-c", str(path)], env={"SHARED_CLOUD_KEY": "k"}
    )
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert "discovery" not in shown  # the top-level defaults live on in each app
    assert [app["name"] for app in shown["apps"]] == ["api", "ui"]


def test_check_config_names_the_app_whose_secret_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "apps.yaml"
    path.write_text(TWO_APPS)
    result = CliRunner().invoke(
        main, ["check-config", "-c", str(path)], env={"SHARED_CLOUD_KEY": ""}
    )
    assert result.exit_code == 2
    assert (
        "apps[0].discovery.phala.api_key_env: environment variable SHARED_CLOUD_KEY"
        in result.output
    )
    assert "Traceback" not in result.output


def static_two_apps(api_url: str, ui_url: str) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "health": {"timeout": "500ms"},
        "dns": {"service": "http"},
        "apps": [
            {
                "name": "api",
                "hosts": ["api.example.com"],
                "discovery": {"static": [{"id": "api-1", "url": api_url}]},
                "dns": {"name": "api.example.com."},
            },
            {
                "name": "ui",
                "hosts": ["ui.example.com"],
                "discovery": {"static": [{"id": "ui-1", "url": ui_url}]},
                "dns": {"name": "ui.example.com."},
            },
        ],
    }


async def test_dns_render_and_replicas_act_on_the_app_named(tmp_path: Path) -> None:
    path = tmp_path / "apps.yaml"
    async with running_replica("api") as api:
        dead = f"http://127.0.0.2:{free_port()}"
        path.write_text(yaml.safe_dump(static_two_apps(f"http://127.0.0.1:{api.port}", dead)))
        code, out, err = await run_cli(
            "dns", "render", "-c", str(path), "--app", "api", "--format", "json"
        )
    assert code == 0, err
    records = json.loads(out)
    assert {r["name"] for r in records if r["type"] == "A"} == {"api.example.com."}
    assert {r["value"] for r in records if r["type"] == "A"} == {"127.0.0.1"}
    code, out, err = await run_cli("replicas", "-c", str(path), "--app", "ui", "--json")
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == ["ui-1"]


async def test_one_shot_commands_ask_which_app(tmp_path: Path) -> None:
    path = tmp_path / "apps.yaml"
    path.write_text(yaml.safe_dump(static_two_apps("http://127.0.0.1:1", "http://127.0.0.1:2")))
    code, _, err = await run_cli("replicas", "-c", str(path))
    assert code == 2
    assert "several apps (api, ui): choose one with --app NAME" in err
    code, _, err = await run_cli("replicas", "-c", str(path), "--app", "web")
    assert code == 2
    assert "no app named 'web'; the apps are: api, ui" in err
    assert "Traceback" not in err
