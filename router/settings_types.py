"""Shared building blocks of the config models: the frozen base, durations, addresses.

Every section of the config lives next to the code that uses it (e.g. `router/dns/settings.py`)
and is assembled in `router/config.py`; they all build on these types so errors read alike.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Frozen(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def parse_duration(value: Any) -> float:
    """`250ms`, `5s`, `1m`, `2h` or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 250ms, 5s, 1m or 2h is required, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(
            f"{value!r} is not a duration; use a number with ms, s, m or h, e.g. 250ms, 5s, 1m"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]


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
            "name of a variable that holds them (e.g. ROUTER_ADMIN_TOKEN), never inline"
        )
    return value


EnvVarName = Annotated[str, AfterValidator(_check_env_name)]
