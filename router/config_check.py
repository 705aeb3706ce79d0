"""What `check-config` checks beyond the models: that the secrets a config names are present
in the environment, that a file is a router config at all (not the simulator's), and that
every part `serve` builds can be built (`build_as_serve_would`: the same composition root,
per app, without opening a socket).

`serve` refuses to start without them, so `check-config` (the systemd `ExecStartPre`) must
say so first. Only variable names are ever printed, never values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from router.app import RouterApp
from router.config import RouterConfig, config_dump
from router.config_source import load_yaml
from router.errors import ConfigError

# A router config has `discovery`; these keys are the simulator's own (config/sim.yaml).
_SIMULATOR_KEYS = {"api_key", "gateway_port", "control_port", "base_domain", "app_port"}


def secret_variables(config: RouterConfig) -> Iterator[tuple[str, str]]:
    """(dotted key, variable name) for every `*_env` key the config sets."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if str(key).endswith("_env") and isinstance(value, str):
                    yield where, value
                else:
                    yield from walk(value, where)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                yield from walk(item, f"{path}[{index}]")

    yield from walk(config_dump(config), "")


def missing_secrets(config: RouterConfig, environ: Mapping[str, str]) -> list[str]:
    """One line per `*_env` key whose variable is unset or empty (names only)."""
    return [
        f"{key}: environment variable {name} is not set or empty (it must hold the secret)"
        for key, name in secret_variables(config)
        if not environ.get(name, "").strip()
    ]


def simulator_hint(path: str | Path) -> str | None:
    """A hint when `path` looks like a simulator config rather than a router config."""
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"), str(path))
    except (OSError, ConfigError):
        return None
    if not isinstance(data, dict) or "discovery" in data:
        return None
    if len(_SIMULATOR_KEYS & set(data)) < 2:
        return None
    return (
        f"{path} is a simulator config (for `phala-router simulate -c {path}`), not a router "
        "config; the router config that goes with config/sim.yaml is config/sim-router.yaml"
    )


async def build_as_serve_would(config: RouterConfig, environ: Mapping[str, str]) -> None:
    """Build the router `serve` would run (every app's control plane, policy, attestation,
    the engine, TLS, admin, DNS) without starting it, then release it. Raises the
    ConfigError `serve` would raise, naming the app when the config has `apps:`."""
    app = RouterApp(config, environ=environ)
    await app.discard()
