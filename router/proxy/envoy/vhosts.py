"""Several apps (`apps:`) as Envoy virtual hosts: which app answers which host and path.

The router finds a request's app level by level (router/apps/hosts.py): the exact host's
prefixes, then each wildcard suffix from the longest, then the default app, else 421.
Envoy picks one virtual host by the Host alone (exact domain, then the longest `*.suffix`,
then `*`) and never falls back to another, so each virtual host carries the whole chain
the router would walk for the names it matches: its own prefixes (longest first), then
those of the less specific wildcards that also cover it, then the default app (or 421).
First match wins in Envoy as in the router, so both pick the same app. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from router.apps.hosts import HostRoute
from router.proxy.apps import AppDirectory
from router.proxy.envoy.view import ConfigView
from router.snapshot import Snapshot

T = TypeVar("T")
CATCH_ALL = "*"


@dataclass(frozen=True)
class EnvoyApp:
    """One app as the Envoy mapping needs it: its routes and its current state."""

    name: str
    routes: tuple[HostRoute, ...]
    default: bool
    snapshot: Snapshot
    # The app's own view of the config (its routing, health and discovery sections).
    config: ConfigView
    # apps[].max_connections: the app cluster's cap on requests in flight.
    max_connections: int | None = None
    # Cluster names are prefixed with the app's name when the config has `apps:`.
    cluster_prefix: str = ""


@dataclass(frozen=True)
class VirtualHostPlan(Generic[T]):
    """One virtual host: its domains and its (path prefix, app) entries in match order;
    "" is every path. With no catch-all entry, what is left gets 421."""

    name: str
    domains: tuple[str, ...]
    entries: tuple[tuple[str, T], ...]

    @property
    def has_catch_all(self) -> bool:
        return any(prefix == "" for prefix, _ in self.entries)


def _suffixes(name: str) -> list[str]:
    """`a.b.c` -> [`b.c`, `c`]: the wildcard suffixes that cover `a.b.c`, longest first."""
    return [name[i + 1 :] for i, char in enumerate(name) if char == "."]


def _chain(
    levels: Sequence[Sequence[tuple[str, T]]], default: T | None
) -> tuple[tuple[str, T], ...]:
    """Levels most specific first, each longest prefix first; stop at a catch-all."""
    entries: list[tuple[str, T]] = []
    for level in levels:
        ordered = sorted(level, key=lambda entry: len(entry[0]), reverse=True)
        entries += ordered
        if any(prefix == "" for prefix, _ in ordered):
            return tuple(entries)
    if default is not None:
        entries.append(("", default))
    return tuple(entries)


def _domains(host: str) -> tuple[str, ...]:
    # The router ignores a trailing dot in Host; Envoy matches domains literally.
    return (host, host + ".")


def plan_virtual_hosts(
    routes: Iterable[tuple[HostRoute, T]], default: T | None
) -> list[VirtualHostPlan[T]]:
    """The virtual hosts for every app's routes, exact hosts first, then wildcards, then
    the catch-all `*` (the default app, or nothing: 421)."""
    exact: dict[str, list[tuple[str, T]]] = {}
    wild: dict[str, list[tuple[str, T]]] = {}
    for route, value in routes:
        table = wild if route.wildcard else exact
        name = route.host[2:] if route.wildcard else route.host
        table.setdefault(name, []).append((route.prefix, value))
    plans: list[VirtualHostPlan[T]] = []
    for host in sorted(exact):
        levels = [exact[host], *(wild[s] for s in _suffixes(host) if s in wild)]
        plans.append(VirtualHostPlan(host, _domains(host), _chain(levels, default)))
    for suffix in sorted(wild):
        levels = [wild[suffix], *(wild[s] for s in _suffixes(suffix) if s in wild)]
        name = "*." + suffix
        plans.append(VirtualHostPlan(name, _domains(name), _chain(levels, default)))
    rest = (("", default),) if default is not None else ()
    plans.append(VirtualHostPlan(CATCH_ALL, (CATCH_ALL,), rest))
    return plans


def apps_plan(apps: Sequence[EnvoyApp]) -> list[VirtualHostPlan[EnvoyApp]]:
    """The virtual hosts of `apps`; one app without hosts takes every Host (no `apps:`)."""
    default = next((app for app in apps if app.default), None)
    return plan_virtual_hosts(((r, app) for app in apps for r in app.routes), default)


def envoy_apps(
    directory: AppDirectory, configs: Mapping[str, ConfigView], fallback: ConfigView
) -> list[EnvoyApp]:
    """The apps the Python engines would serve from `directory`, each with its current
    snapshot and its config (`fallback` for an app on its way out of a reload)."""
    routes: dict[str, list[HostRoute]] = {}
    entries = {}
    for route, entry in directory.routes():
        routes.setdefault(entry.name, []).append(route)
        entries[entry.name] = entry
    default = directory.default
    if default is not None:
        entries.setdefault(default.name, default)
    return [
        EnvoyApp(
            name=name,
            routes=tuple(routes.get(name, ())),
            default=entry is default,
            snapshot=entry.snapshots(),
            config=configs.get(name, fallback),
            max_connections=entry.limit,
            cluster_prefix=name + ".",
        )
        for name, entry in sorted(entries.items())
    ]


@dataclass(frozen=True)
class AppCap:
    """An app's own cap on requests in flight (apps[].max_connections), which its clusters'
    `max_requests` enforce: an overflow there is that app's 503."""

    name: str
    cluster_prefix: str
    limit: int


def app_caps(apps: Sequence[EnvoyApp] | None) -> list[AppCap]:
    """The apps whose clusters' request cap is their own (not above `proxy.max_connections`,
    which every cluster also has), so an overflow there is the app's."""
    return [
        AppCap(app.name, app.cluster_prefix, app.max_connections)
        for app in apps or ()
        if app.max_connections is not None
        and app.max_connections <= app.config.proxy.max_connections
    ]
