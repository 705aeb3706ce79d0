"""Where config data comes from: a strict YAML reader and `PHALA_ROUTER_*` overrides, and
how a validation error is told back (`format_validation_error`, shared with the simulator).

Kept apart from the models (router/config.py) because both are about trusting input:
YAML that repeats a key would silently keep the last value (the README's own deploy step
once appended a second `listen:`), and an environment override must never be confused
with a variable that holds a secret or with one Kubernetes injects for a Service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from router.errors import ConfigError
from router.native import PURE_ENV

ENV_PREFIX = "PHALA_ROUTER_"

# Kubernetes injects these for a Service named `phala-router` (docker links did the same):
# PHALA_ROUTER_PORT=tcp://10.0.0.1:80, PHALA_ROUTER_SERVICE_HOST, PHALA_ROUTER_PORT_80_TCP_ADDR...
# No config key has these names, and an override always uses `__` between levels.
_SERVICE_LINK = re.compile(
    r"^(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$"
)


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"line {line}: duplicate key {key!r} (first set on line {seen[key]}); "
                "a key may appear once per section, remove one of them"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML, refusing duplicate keys; errors name the source and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def is_service_link(name: str) -> bool:
    """A variable Kubernetes (or docker links) sets for a Service called phala-router."""
    return name.startswith(ENV_PREFIX) and bool(_SERVICE_LINK.match(name[len(ENV_PREFIX) :]))


def secret_names(data: Any, environ: Mapping[str, str]) -> set[str]:
    """Environment variables the config names as holding secrets (`*_env` keys, in the file
    or in an override): those hold values, not config overrides, even when they are called
    PHALA_ROUTER_SOMETHING (e.g. admin.token_env: PHALA_ROUTER_ADMIN_TOKEN)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_env") and isinstance(value, str):
                    names.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key.lower().endswith("_env"):
            names.add(value)
    return names


@dataclass
class EnvOverrides:
    """Which dotted config paths were set by which environment variable."""

    by_path: dict[tuple[str, ...], str] = field(default_factory=dict)
    # The raw values, only to scrub them from error messages (a validator may quote them).
    values: dict[str, str] = field(default_factory=dict)

    def scrub(self, text: str) -> str:
        """`text` with every override value of 4+ characters replaced by its variable."""
        for name, value in sorted(self.values.items(), key=lambda kv: -len(kv[1])):
            if len(value.strip()) >= 4:
                text = text.replace(value.strip(), f"<value of {name}>")
        return text

    def variable_for(self, location: tuple[str | int, ...]) -> str | None:
        """The variable that set this location or one of its parents, if any."""
        keys = tuple(str(part) for part in location)
        for length in range(len(keys), 0, -1):
            if keys[:length] in self.by_path:
                return self.by_path[keys[:length]]
        return None


def legacy_overrides(environ: Mapping[str, str]) -> list[str]:
    """`ROUTER_SECTION__KEY` variables: overrides under the old prefix, no longer read."""
    return sorted(k for k in environ if k.startswith("ROUTER_") and "__" in k)


def override_variables(data: Any, environ: Mapping[str, str]) -> list[str]:
    """The `PHALA_ROUTER_*` variables that will be read as overrides, sorted."""
    secrets = secret_names(data, environ)
    return sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX)
        and key != ENV_PREFIX
        and key != PURE_ENV  # a build switch (router/native.py), not a config key
        and key not in secrets
        and not is_service_link(key)
    )


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> EnvOverrides:
    """`PHALA_ROUTER_PROXY__CONNECT_TIMEOUT=2s` sets proxy.connect_timeout (values parsed as
    YAML). Errors name the variable and never show its value: it might be a secret put in
    the wrong variable."""
    overrides = EnvOverrides()
    for key in override_variables(data, environ):
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(
                f"environment variable {key}: empty path segment; use "
                f"{ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}PROXY__CONNECT_TIMEOUT"
            )
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"environment variable {key}: {where} is not a section")
            node = child
        try:
            node[path[-1]] = yaml.safe_load(environ[key])
        except yaml.YAMLError:
            raise ConfigError(
                f"environment variable {key}: its value is not valid YAML (value not shown)"
            ) from None
        overrides.by_path[tuple(path)] = key
        overrides.values[key] = environ[key]
    return overrides


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith("function-") or item in {"tagged-union"}:
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def format_validation_error(error: ValidationError, env: EnvOverrides | None = None) -> str:
    """One line per problem: `dotted.path: message (got: value)`. A value that came from an
    environment variable is never shown (it may be a secret in the wrong variable); the
    variable is named instead."""
    lines = []
    for item in error.errors(include_url=False):
        where = _format_location(tuple(item["loc"]))
        variable = env.variable_for(tuple(item["loc"])) if env else None
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; config/reference.yaml lists every key)"
        elif item["type"] == "missing":
            message = "required but missing"
        got = item.get("input")
        shown = "" if item["type"] in {"missing", "extra_forbidden"} else f" (got: {got!r})"
        if isinstance(got, dict | list):
            shown = ""
        if variable is not None:
            shown = f" (set by environment variable {variable}; value not shown)"
        lines.append(f"{where}: {message}{shown}")
    text = "\n".join(lines)
    return env.scrub(text) if env else text
