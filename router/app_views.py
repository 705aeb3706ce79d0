"""Each app's view of the router config: the whole `RouterConfig` with the app's own
sections in place of the top-level ones, so the code that builds and runs one app's control
plane (discovery, health, attestation, DNS) is the same for one app or many."""

from __future__ import annotations

from dataclasses import dataclass

from router.apps import IMPLICIT_APP
from router.apps.hosts import HostRoute, HostTable
from router.apps.settings import APP_SECTIONS
from router.config import RouterConfig


@dataclass(frozen=True)
class AppView:
    name: str
    routes: tuple[HostRoute, ...]
    default: bool
    # This app's own cap on requests proxied at once; None: only proxy.max_connections.
    max_connections: int | None
    # The router config as this app sees it (its sections at the top level, no `apps`).
    config: RouterConfig


def app_views(config: RouterConfig) -> tuple[AppView, ...]:
    """One view per app; a config without `apps:` is one implicit default app."""
    if config.apps is None:
        return (AppView(IMPLICIT_APP, (), True, None, config),)
    return tuple(
        AppView(
            app.name,
            app.routes,
            app.default,
            app.max_connections,
            config.model_copy(update={**{s: getattr(app, s) for s in APP_SECTIONS}, "apps": None}),
        )
        for app in config.apps
    )


def primary_view(views: tuple[AppView, ...]) -> AppView:
    """The app the top-level config sections mirror: the default app, else the first."""
    return next((view for view in views if view.default), views[0])


def host_table(views: tuple[AppView, ...]) -> HostTable[str]:
    """Host and path -> app name, for the data plane."""
    default = next((view.name for view in views if view.default), None)
    return HostTable(((route, view.name) for view in views for route in view.routes), default)


def find_app(config: RouterConfig, name: str | None) -> AppView:
    """The view of the app called `name` (None: the only app). ValueError names the apps."""
    views = app_views(config)
    if name is None and len(views) == 1:
        return views[0]
    for view in views:
        if view.name == name:
            return view
    known = ", ".join(view.name for view in views)
    if name is None:
        raise ValueError(f"this config has several apps ({known}): choose one with --app NAME")
    raise ValueError(f"no app named {name!r}; the apps are: {known}")
