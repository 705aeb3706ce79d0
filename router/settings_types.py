"""Shared building blocks of the config models: the frozen base, durations, addresses.

Every section of the config lives next to the code that uses it (e.g. `router/dns/settings.py`)
and is assembled in `router/config.py`; they all build on these types so errors read alike.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

# One or more NUMBER+UNIT parts (Go's time.ParseDuration plus `d`): 1m30s, 500us, 1d, 1.5h.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_COMPOUND = re.compile(rf"^(?:{_PART.pattern})+$")
_PLAIN = re.compile(r"^\d+(?:\.\d+)?$")
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
DURATION_HELP = "a number with us, ms, s, m, h or d, or a sum of them, e.g. 250ms, 5s, 1m30s, 1d"


class Frozen(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def parse_duration(value: Any) -> float:
    """`250ms`, `5s`, `1m30s`, `500us`, `1d` or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError(f"a duration is required, not a boolean; use {DURATION_HELP}")
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, int | float):
        seconds = float(value)
    elif text is not None and _PLAIN.match(text):
        seconds = float(text)
    elif text is not None and _COMPOUND.match(text):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    else:
        raise ValueError(f"{value!r} is not a duration; use {DURATION_HELP}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


# For editors (config/schema.json): seconds as a number, or a string like 1m30s.
_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d)?)+\s*$"},
        ],
        "description": DURATION_HELP,
    }
)
Duration = Annotated[float, BeforeValidator(parse_duration), _DURATION_SCHEMA]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


PositiveDuration = Annotated[
    float, BeforeValidator(parse_duration), AfterValidator(_positive), _DURATION_SCHEMA
]


def split_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port); raises ValueError naming the rule."""
    if not isinstance(value, str):
        raise ValueError("expected a string HOST:PORT, e.g. 127.0.0.1:8080")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range 0-65535")
    return host, number


def _check_host_port(value: str) -> str:
    split_host_port(value)
    return value


HostPort = Annotated[str, AfterValidator(_check_host_port)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(
            f"{value!r} is not an environment variable name; secrets are given by the "
            "name of a variable that holds them (e.g. PHALA_ROUTER_ADMIN_TOKEN), never inline"
        )
    return value


EnvVarName = Annotated[str, AfterValidator(_check_env_name)]
