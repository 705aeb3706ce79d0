"""Config of several apps behind one router (`apps:`).

Each app names its hosts and has its own `discovery`, `health`, `attestation`, `routing` and
`dns` sections. The top-level sections of the same names are defaults every app starts from:
`expand_apps()` deep-merges them under each app's own (mappings merge key by key, a list or
a value replaces), so a shared Cloud API key or health path is written once. A config
without `apps:` is one implicit app made of the top-level sections, as before.
"""

from __future__ import annotations

import copy
import re
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from router.apps.certificates import CertificatePair
from router.apps.hosts import HostRoute, HostTable, RouteConflict, parse_route
from router.attestation.binding import unbound_problem
from router.attestation.settings import AttestationConfig
from router.balancing.settings import RoutingConfig
from router.discovery.settings import DiscoveryConfig
from router.dns.settings import DnsConfig
from router.health.settings import HealthConfig
from router.settings_types import Frozen

# The sections an app owns; the top-level ones of these names are every app's defaults.
APP_SECTIONS = ("discovery", "health", "attestation", "routing", "dns")


class AppConfig(Frozen):
    # For config/reference.yaml: these sections have the top-level sections' keys.
    SECTIONS_AS_TOP_LEVEL: ClassVar[tuple[str, ...]] = APP_SECTIONS

    # Shown in /status, as the `app` label in /metrics, and in /admin/apps/NAME paths.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    # Exact names (api.example.com) and wildcards (*.example.com), each optionally with a
    # path prefix (api.example.com/v2); an exact name beats a wildcard, the longest prefix wins.
    hosts: tuple[str, ...] = ()
    # Serve requests whose Host matches no app's hosts (at most one app); without a default
    # app such requests get 421 Misdirected Request and reach no replica.
    default: bool = False
    # Requests of this app proxied at once (its share of proxy.max_connections); unset: no
    # limit of its own, so one app may take every slot.
    max_connections: int | None = Field(None, ge=1)
    # The certificate listen_tls serves to clients whose SNI is one of this app's host names
    # ({cert_file, key_file}); unset: listen_tls.certificates or its cert_file serve them.
    tls: CertificatePair | None = None
    discovery: DiscoveryConfig
    health: HealthConfig = HealthConfig()
    attestation: AttestationConfig = AttestationConfig()
    routing: RoutingConfig = RoutingConfig()
    dns: DnsConfig = DnsConfig()

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        routes = [parse_route(text) for text in value]
        dupes = sorted({str(r) for r in routes if routes.count(r) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return tuple(str(r) for r in routes)

    @model_validator(mode="after")
    def _reachable_and_bound(self) -> AppConfig:
        if not self.hosts and not self.default:
            raise ValueError(
                f"app {self.name!r} has no hosts: list its host names in hosts "
                "(e.g. [api.example.com]) or make it the default app (default: true)"
            )
        if self.tls is not None and not self.hosts:
            raise ValueError(
                f"app {self.name!r} has tls but no hosts: its certificate would be chosen by no "
                "SNI; list its hosts, or serve the default app with listen_tls.cert_file"
            )
        if self.discovery.static is not None:
            problem = unbound_problem(self.discovery.static, self.attestation)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def routes(self) -> tuple[HostRoute, ...]:
        return tuple(parse_route(text) for text in self.hosts)


def check_apps(apps: tuple[AppConfig, ...]) -> None:
    """Rules across apps: unique names, one default at most, no route claimed twice."""
    names = [app.name for app in apps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"apps: each name must be unique; repeated: {', '.join(dupes)}")
    defaults = [app.name for app in apps if app.default]
    if len(defaults) > 1:
        raise ValueError(f"apps: at most one app may be the default; got {', '.join(defaults)}")
    dialled: dict[str, tuple[str, str]] = {}
    for app in apps:
        for pattern, address in app.discovery.connect_to.items():
            other = dialled.setdefault(pattern, (app.name, address))
            if other[1] != address:
                raise ValueError(
                    f"apps: discovery.connect_to {pattern!r} is {other[1]} in app {other[0]} "
                    f"but {address} in app {app.name}; the listener's connections are shared, "
                    "so one pattern must dial one address"
                )
    try:
        HostTable((route, app.name) for app in apps for route in app.routes)
    except RouteConflict as exc:
        raise ValueError(f"apps: {exc}") from None


def _merged(defaults: Any, override: Any) -> Any:
    if isinstance(defaults, dict) and isinstance(override, dict):
        out = dict(defaults)
        for key, value in override.items():
            out[key] = _merged(defaults.get(key), value) if key in defaults else value
        return out
    return copy.deepcopy(override)


def expand_apps(data: dict[str, Any]) -> dict[str, Any]:
    """Raw config with `apps:` -> each app with the top-level sections merged under its own,
    the top-level sections removed (they are only defaults). Anything malformed is left as
    it is for validation to report."""
    apps = data.get("apps")
    if not isinstance(apps, list):
        return data
    out = {k: v for k, v in data.items() if k not in APP_SECTIONS}
    defaults = {k: data[k] for k in APP_SECTIONS if k in data}
    expanded = []
    for app in apps:
        if isinstance(app, dict):
            app = {**app}
            for section, value in defaults.items():
                app[section] = _merged(value, app[section]) if section in app else value
        expanded.append(app)
    out["apps"] = expanded
    return out


def app_names(data: Any) -> dict[int, str]:
    """Index -> name of each app in raw config data, so errors can name the app."""
    apps = data.get("apps") if isinstance(data, dict) else None
    if not isinstance(apps, list):
        return {}
    return {
        i: app["name"]
        for i, app in enumerate(apps)
        if isinstance(app, dict) and isinstance(app.get("name"), str)
    }


def name_apps_in(message: str, names: dict[int, str]) -> str:
    """`apps[1].discovery...` -> `apps[1] (ui).discovery...` in a validation message."""
    return re.sub(
        r"\bapps\[(\d+)\]",
        lambda m: m.group(0) + (f" ({names[int(m.group(1))]})" if int(m.group(1)) in names else ""),
        message,
    )
