"""Fuzzing the config loader: whatever the YAML mapping, the environment overrides or the
file text, loading gives a valid config or a ConfigError - never another exception - and a
valid config can be redacted and turned into a routing policy (ConfigError at worst)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.app import RouterApp
from router.compose import policy_from_config
from router.config import RouterConfig, load_config, parse_config, redacted
from router.errors import ConfigError

BASE: dict[str, Any] = {
    "listen": "127.0.0.1:8080",
    "admin": {"listen": "127.0.0.1:9090"},
    "discovery": {"static": [{"id": "a", "url": "http://10.0.0.1:8080", "region": "us-east"}]},
}


def _paths(model: type[pydantic.BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field path of the config models (sections and leaves)."""
    found: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        found.append(path)
        annotation = info.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
                found.extend(_paths(candidate, path))
    return found


PATHS = _paths(RouterConfig)
TRICKY_TEXT = [
    "",
    " ",
    "0",
    "-1",
    "1s",
    "-5s",
    "1e309",
    "nan",
    "inf",
    "100ms",
    "2h",
    "off",
    "on",
    "null",
    "127.0.0.1:0",
    "0.0.0.0:80",
    "[::]:9090",
    "[::1",
    ":80",
    "host:99999",
    "http://a",
    "https://a.example:443/p",
    "ftp://x",
    "*.example.com",
    "10.0.0.0/8",
    "300.1.1.1/8",
    "geo",
    "round_robin",
    "aiohttp",
    "fast",
    "rfc2136",
    "file",
    "A_VAR",
    "lower-var",
    "\x00",
    "é" * 3,
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(TRICKY_TEXT),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from([p[-1] for p in PATHS] + ["x"]), inner, max_size=3),
    ),
    max_leaves=8,
)
mutations = st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=4)


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node: Any = data
    for part in path[:-1]:
        if not isinstance(node, dict):
            return
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if isinstance(node, dict):
        node[path[-1]] = value


def check(load: Any) -> None:
    try:
        config = load()
    except ConfigError as exc:
        message = str(exc)
        assert message  # names what is wrong
        return
    assert isinstance(config, RouterConfig)
    redacted(config)
    with contextlib.suppress(ConfigError):
        policy_from_config(config, {})
    with contextlib.suppress(ConfigError):  # e.g. a named env var that is not set
        RouterApp(config, environ={})


@settings(max_examples=300, deadline=None)
@given(mutations)
def test_mutated_configs_load_or_raise_config_error(
    changes: list[tuple[tuple[str, ...], Any]],
) -> None:
    data = copy.deepcopy(BASE)
    for path, value in changes:
        _set(data, path, value)
    check(lambda: parse_config(data, {}))


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(PATHS),
        st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=10)),
        max_size=4,
    )
)
def test_environment_overrides_load_or_raise_config_error(env: dict[tuple[str, ...], str]) -> None:
    environ = {
        "PHALA_ROUTER_" + "__".join(p.upper() for p in path): value for path, value in env.items()
    }
    check(lambda: parse_config(copy.deepcopy(BASE), environ))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_file_text_loads_or_raises_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(text, encoding="utf-8")
    check(lambda: load_config(path, {}))


@settings(max_examples=100, deadline=None)
@given(values)
def test_any_top_level_value_loads_or_raises_config_error(data: Any) -> None:
    check(lambda: parse_config(data, {}))
