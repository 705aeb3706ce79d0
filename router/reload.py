"""Reload (SIGHUP, POST /admin/reload): re-read the config file and apply to the running
parts what can change live. A valid new config applies without dropping connections; an
invalid one is refused whole and the running one stays. `reload_plan.py` decides what
applies and what needs a restart; this module applies it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.app_planes import OtherApps, check_apps_reload
from router.compose import ControlPlane, health_session_factory, policy_from_config, proxy_settings
from router.config import RouterConfig, load_config
from router.discovery.static import static_replicas
from router.errors import ConfigError
from router.proxy.base import Engine
from router.reload_plan import plan_reload
from router.snapshot import Policy
from router.tls import ServerTLS

log = logging.getLogger(__name__)


@dataclass
class ReloadResult:
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class LiveParts:
    """What a reload reconfigures in a running router."""

    engine: Engine
    apps: OtherApps
    plane: ControlPlane  # the primary app's: its reconciler, health checker, static list
    tls: ServerTLS | None
    spawn: Callable[[Coroutine[Any, Any, None]], None]


class Reloader:
    """Holds the running config (`config`) and replaces it on a successful reload."""

    def __init__(
        self,
        config: RouterConfig,
        parts: LiveParts,
        *,
        config_path: Callable[[], str | None],  # read at each reload: it may be set later
        environ: Mapping[str, str],
        on_done: Callable[[str | None], None] = lambda _error: None,
    ) -> None:
        self.config = config
        # What the listeners and engine run with: restart-only keys are compared with it.
        self._started_config = config
        self._parts = parts
        self._config_path = config_path
        self._environ = environ
        self._on_done = on_done
        self.last_reload: dict[str, Any] | None = None

    def reload(self) -> ReloadResult:
        result = self._reload()
        self._on_done(result.error)
        self.last_reload = {"at": round(time.time(), 3), "error": result.error}
        return result

    def _reload(self) -> ReloadResult:
        path = self._config_path()
        if path is None:
            return ReloadResult(
                error="no config file to reload (the router was started from a dict)"
            )
        try:
            new = load_config(path, self._environ)
            policy = policy_from_config(new, self._environ)
            check_apps_reload(self.config, new, self._environ)
        except ConfigError as exc:
            log.error("reload refused, still running the previous config:\n%s", exc)
            return ReloadResult(error=str(exc))
        old, self.config = self.config, new
        result = self._apply(old, new, policy)
        if result.restart_required:
            log.warning(
                "reload: %s differ from the running process and take effect only after a restart",
                ", ".join(result.restart_required),
            )
        log.info(
            "reload: %s",
            f"applied {', '.join(result.applied)}" if result.applied else "no change to apply",
        )
        return result

    def _apply(self, old: RouterConfig, new: RouterConfig, policy: Policy) -> ReloadResult:
        parts, plane = self._parts, self._parts.plane
        plan = plan_reload(self._started_config, old, new)
        changed = set(plan.apply)
        if {"proxy", "upstream", "health", "apps"} & changed:  # health: count_5xx
            parts.engine.apply_config(proxy_settings(new))
        if "apps" in changed:
            finish = parts.apps.reload(new, parts.engine.set_apps)
            if finish is not None:
                parts.spawn(finish)
        if parts.tls is not None:
            parts.tls.reload()  # SIGHUP also re-reads the certificate files, changed or not
        if "discovery.static" in changed and new.discovery.static is not None:
            plane.set_replicas(static_replicas(new.discovery.static))
        if "health" in changed or "upstream" in changed:
            gate = plane.ratls_gate
            sessions = (
                health_session_factory(new, gate.check if gate is not None else None)
                if "upstream" in changed
                else None
            )
            plane.health.reconfigure(new.health, sessions)
        if "routing" in changed or "health" in changed:
            plane.reconciler.set_policy(policy)  # panic_threshold, slow_start live in health
        return ReloadResult(applied=list(plan.apply), restart_required=plan.restart_required)
