"""What a config reload changes, computed as a pure function so it can be tested alone.

Two baselines, because they answer different questions:
- *applied* parts are compared with the config now in force (the last one applied), so a
  reload that changes nothing reports nothing;
- *restart-only* keys are compared with the config the process **started** with (what the
  listeners and engine really run), so changing `listen` and changing it back needs no
  restart, and a reload after an unrelated edit still says a restart is pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.config import RouterConfig

# Keys that only a restart applies; compared with the config the process started with.
RESTART_ONLY = (
    "listen",
    "listen_tls",
    "acme_webroot",
    "admin",
    "proxy.engine",
    "proxy.workers",
    "proxy.client_header_timeout",
    "health.enabled",
    "health.max_concurrency",
    "discovery.phala",
    "attestation",
    "dns",
    "metrics",
)


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _without(data: dict[str, Any], section: str) -> dict[str, Any]:
    """`section` of a dumped config with its restart-only keys removed."""
    part = dict(data.get(section) or {})
    for dotted in RESTART_ONLY:
        head, _, key = dotted.partition(".")
        if head == section and key:
            part.pop(key, None)
    return part


def _app_certificates(config: RouterConfig) -> list[tuple[str, tuple[str, ...], str, str]]:
    """What the apps' certificates serve: their hosts and files (not their index)."""
    return [
        (c.label.partition(" ")[2], c.hosts, str(c.cert_file), str(c.key_file))
        for c in config.listen_certificates()
        if c.label.startswith("apps[")
    ]


@dataclass(frozen=True)
class ReloadPlan:
    # Parts to apply now, in order: proxy, upstream, discovery.static, health, routing.
    apply: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


def plan_reload(started: RouterConfig, running: RouterConfig, new: RouterConfig) -> ReloadPlan:
    first, now, after = (c.model_dump(mode="json") for c in (started, running, new))
    restart = [key for key in RESTART_ONLY if _get(first, key) != _get(after, key)]
    if _app_certificates(started) != _app_certificates(new):
        restart.append("apps[].tls")  # the listener's certificates, like listen_tls
    apply: list[str] = []
    if _without(now, "proxy") != _without(after, "proxy"):
        apply.append("proxy")
    reach = ("upstream_tls", "discovery.connect_to")
    if any(_get(now, key) != _get(after, key) for key in reach):
        apply.append("upstream")
    if _get(now, "discovery.static") != _get(after, "discovery.static"):
        apply.append("discovery.static")
    if _without(now, "health") != _without(after, "health"):
        apply.append("health")
    if now.get("routing") != after.get("routing"):
        apply.append("routing")
    if now.get("apps") != after.get("apps"):
        apply.append("apps")  # router/app_planes.py: OtherApps.reload
    return ReloadPlan(apply, restart)
