"""The composition root: the one place that reads the whole `RouterConfig` and hands each
part its slice. `serve` (`RouterApp`), the one-shot commands (`replicas`, `attest`,
`dns render`) and `check-config` build the control plane here, so its wiring (discovery ->
reconciler + health + attestation, health and verdicts -> reconciler) exists once."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import httpx

from router.attestation.manager import Attestor
from router.balancing.factory import make_picker_factory
from router.config import RouterConfig
from router.discovery.phala import PhalaDiscovery
from router.errors import ConfigError
from router.health.active import HealthChecker
from router.health.probe import make_health_session
from router.models import AttestationVerdict, Replica
from router.proxy.headers import edge_names
from router.proxy.settings import ProxySettings
from router.reach import client_ssl_context, make_connector
from router.reconciler import Reconciler
from router.snapshot import Policy


def proxy_settings(config: RouterConfig) -> ProxySettings:
    """The slice an engine runs with (it never sees the rest of the config)."""
    geo = config.routing.geo
    return ProxySettings(
        proxy=config.proxy,
        upstream_tls=config.upstream_tls,
        connect_to=config.discovery.connect_to,
        listen=config.listen,
        listen_tls=config.listen_tls,
        acme_webroot=config.acme_webroot,
        count_5xx=config.health.passive.count_5xx,
        edge_headers=edge_names(
            config.proxy.edge_headers,
            geo.country_headers,
            (geo.latitude_header, geo.longitude_header),
        ),
    )


def policy_from_config(config: RouterConfig, environ: Mapping[str, str] | None = None) -> Policy:
    """The routing-relevant settings. Raises ConfigError (sticky key, GeoIP file)."""
    routing = config.routing
    return Policy(
        picker_factory=make_picker_factory(
            routing, environ=os.environ if environ is None else environ
        ),
        compose_hashes=None
        if routing.compose_hashes is None
        else frozenset(routing.compose_hashes),
        panic_threshold=config.health.panic_threshold,
        slow_start=config.health.slow_start,
        attestation_required=config.attestation.enabled,
        attestation_max_age=config.attestation.effective_max_age,
    )


def health_session_factory(config: RouterConfig) -> Callable[[], aiohttp.ClientSession]:
    """Health checks reach replicas exactly like traffic: same connect_to, TLS and SNI."""
    tls = config.upstream_tls
    context = client_ssl_context(tls.verify, tls.ca_file)
    return lambda: make_health_session(config.discovery.connect_to, context, config.health)


def cloud_client(config: RouterConfig, environ: Mapping[str, str]) -> httpx.AsyncClient | None:
    phala = config.discovery.phala
    if phala is None:
        return None
    key = environ.get(phala.api_key_env, "")
    return httpx.AsyncClient(
        base_url=phala.api_url,
        headers={
            "X-API-Key": key,
            "X-Phala-Version": phala.api_version,
            "User-Agent": "phala-router",
        },
        timeout=config.attestation.timeout,
        follow_redirects=False,
    )


def _attestation_problem(config: RouterConfig, keys: frozenset[bytes]) -> str | None:
    cfg = config.attestation
    if cfg.mode == "cloud" and config.discovery.phala is None:
        return (
            "attestation.mode: cloud reads quotes from the Cloud API and needs discovery.phala; "
            "with discovery.static use guest-agent or fresh"
        )
    if cfg.verifier == "insecure-simulator" and not keys:
        return (
            "attestation.simulator_public_keys: verifier insecure-simulator needs the simulator's "
            "public key (printed by `phala-router simulate`)"
        )
    return None


def build_attestor(
    config: RouterConfig,
    sink: Callable[[AttestationVerdict], None],
    *,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> Attestor | None:
    """The Attestor with its replica-side session, Cloud API client and trusted simulator
    keys; None when attestation is off. Raises ConfigError for a setting it cannot run with."""
    cfg = config.attestation
    if not cfg.enabled:
        return None
    keys = trusted_simulator_keys | {bytes.fromhex(k) for k in cfg.simulator_public_keys}
    problem = _attestation_problem(config, keys)
    if problem:
        raise ConfigError(problem)
    token = environ.get(cfg.fresh.token_env, "") if cfg.fresh.token_env else None
    if cfg.mode == "fresh" and cfg.fresh.token_env and not token:
        raise ConfigError(
            f"attestation.fresh.token_env: the environment variable {cfg.fresh.token_env} "
            "is empty or unset"
        )
    session = None
    if cfg.mode in ("guest-agent", "fresh"):
        tls = config.upstream_tls
        session = aiohttp.ClientSession(
            connector=make_connector(
                config.discovery.connect_to, client_ssl_context(tls.verify, tls.ca_file)
            ),
            auto_decompress=False,
        )
    phala = config.discovery.phala
    return Attestor(
        cfg,
        phala.app_id if phala else None,
        sink,
        session=session,
        cloud=cloud_client(config, environ) if cfg.mode == "cloud" else None,
        clock=clock,
        trusted_simulator_keys=frozenset(keys),
        fresh_token=token,
    )


@dataclass
class ControlPlane:
    """Discovery, health checking and attestation, each reporting to one reconciler by a
    plain callable. `verdict_observers` and `replica_observers` let the caller (metrics)
    listen without rewiring the sinks."""

    reconciler: Reconciler
    health: HealthChecker
    discovery: PhalaDiscovery | None
    attestor: Attestor | None
    verdict_observers: list[Callable[[AttestationVerdict], None]] = field(default_factory=list)

    def set_replicas(self, replicas: Sequence[Replica]) -> None:
        """Every discovery result goes to the reconciler, health checking and attestation."""
        self.reconciler.set_replicas(replicas)
        self.health.update_replicas(replicas)
        if self.attestor is not None:
            self.attestor.update_replicas(replicas)

    def on_verdict(self, verdict: AttestationVerdict) -> None:
        for observer in self.verdict_observers:
            observer(verdict)
        self.reconciler.set_verdict(verdict)

    async def aclose(self) -> None:
        await self.health.aclose()
        if self.attestor is not None:
            await self.attestor.aclose()
        if self.discovery is not None:
            await self.discovery.aclose()


def build_control_plane(
    config: RouterConfig,
    reconciler: Reconciler,
    *,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    discover: bool = True,
) -> ControlPlane:
    """Wire discovery, health and attestation to `reconciler`. `discover=False` leaves the
    running discovery out (the one-shot commands discover once themselves)."""
    health = HealthChecker(
        config.health,
        lambda rid, view, urgent: reconciler.set_health(rid, view, urgent=urgent),
        health_session_factory(config),
        clock=clock,
    )
    plane = ControlPlane(reconciler, health, None, None)
    if discover and config.discovery.phala is not None:
        plane.discovery = PhalaDiscovery(
            config.discovery.phala, plane.set_replicas, environ=environ, clock=clock
        )
    plane.attestor = build_attestor(
        config,
        plane.on_verdict,
        environ=environ,
        clock=clock,
        trusted_simulator_keys=trusted_simulator_keys,
    )
    return plane
