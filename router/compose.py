"""The composition root: the one place that reads the whole `RouterConfig` and hands each
part its slice. `serve` (`RouterApp`), the one-shot commands (`replicas`, `attest`,
`dns render`) and `check-config` build the control plane here, so its wiring (discovery ->
reconciler + health + attestation, health and verdicts -> reconciler) exists once: per app
(`build_app_control`, whose errors name the app), with one Cloud API poll per distinct
request (`CloudPolls`), and the DNS publisher. The engine is built by its data-plane half,
`compose_engine.py`."""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import httpx

from router.attestation.manager import Attestor
from router.attestation.ratls_gate import RaTlsGate
from router.balancing.base import InFlight
from router.balancing.factory import make_picker_factory
from router.config import RouterConfig
from router.discovery.phala import PhalaDiscovery
from router.discovery.shared import CloudPolls
from router.dns.service import DnsService
from router.errors import ConfigError
from router.health.active import HealthChecker
from router.health.probe import make_health_session
from router.models import AttestationVerdict, Replica
from router.proxy.headers import edge_names
from router.proxy.settings import ProxySettings
from router.reach import ConnectTo, PeerCheck, make_connector, upstream_context
from router.reconciler import Reconciler
from router.snapshot import Policy

log = logging.getLogger(__name__)


def _every_connect_to(config: RouterConfig) -> dict[str, str]:
    """With `apps:`, every app's `connect_to` (the pools dial any app's replicas; config
    validation refuses a pattern two apps map differently)."""
    if config.apps is None:
        return dict(config.discovery.connect_to)
    connect_to: dict[str, str] = {}
    for app in config.apps:
        connect_to.update(app.discovery.connect_to)
    return connect_to


def proxy_settings(config: RouterConfig) -> ProxySettings:
    """The slice an engine runs with (it never sees the rest of the config)."""
    geo = config.routing.geo
    return ProxySettings(
        proxy=config.proxy,
        upstream_tls=config.upstream_tls,
        connect_to=_every_connect_to(config),
        listen=config.listen,
        listen_tls=config.listen_tls,
        acme_webroot=config.acme_webroot,
        count_5xx=config.health.passive.count_5xx,
        edge_headers=edge_names(
            config.proxy.edge_headers,
            geo.country_headers,
            (geo.latitude_header, geo.longitude_header),
        ),
        # With apps:, an app's RA-TLS travels with its AppEntry (app_planes.attested_reach),
        # not in the shared pools.
        ra_tls=config.attestation.ra_tls and config.apps is None,
        kms_root=config.attestation.kms_root if config.apps is None else None,
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
        attestation_required=config.attestation.gated,
        attestation_max_age=config.attestation.effective_max_age,
    )


def _upstream_context(config: RouterConfig) -> ssl.SSLContext:
    cfg = config.attestation
    return upstream_context(config.upstream_tls, cfg.ra_tls, cfg.kms_root)


def health_session_factory(
    config: RouterConfig, peer_check: PeerCheck | None = None
) -> Callable[[], aiohttp.ClientSession]:
    """Health checks reach replicas exactly like traffic: same connect_to, TLS, SNI and
    RA-TLS check."""
    context = _upstream_context(config)
    return lambda: make_health_session(
        config.discovery.connect_to, context, config.health, peer_check
    )


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
        # With ra-tls the replica's port ends TLS with its RA-TLS certificate (no CA name
        # check possible); what is fetched there is a quote checked on its own.
        session = aiohttp.ClientSession(
            connector=make_connector(config.discovery.connect_to, _upstream_context(config)),
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


def build_ratls_gate(
    config: RouterConfig,
    sink: Callable[[AttestationVerdict], None],
    *,
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> RaTlsGate | None:
    """The RA-TLS gate when `attestation.connection: ra-tls`, else None."""
    cfg = config.attestation
    if not cfg.ra_tls:
        return None
    keys = trusted_simulator_keys | {bytes.fromhex(k) for k in cfg.simulator_public_keys}
    problem = _attestation_problem(config, keys)
    if problem:
        raise ConfigError(problem)
    phala = config.discovery.phala
    if phala is not None and not phala.tls_passthrough:
        log.warning(
            "attestation.connection is ra-tls but discovery.phala.tls_passthrough is off: the "
            "gateway ends TLS with its own certificate, so every replica will be refused "
            "(ra_tls_no_attestation). Set tls_passthrough: true and publish an RA-TLS port."
        )
    return RaTlsGate(
        cfg,
        phala.app_id if phala else None,
        sink,
        clock=clock,
        trusted_simulator_keys=frozenset(keys),
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
    # attestation.connection: ra-tls: checks new upstream connections; joins its verdicts
    # with the Attestor's before they reach the reconciler.
    ratls_gate: RaTlsGate | None = None
    verdict_observers: list[Callable[[AttestationVerdict], None]] = field(default_factory=list)

    def set_replicas(self, replicas: Sequence[Replica]) -> None:
        """Every discovery result goes to the reconciler, health checking and attestation."""
        if self.ratls_gate is not None:
            self.ratls_gate.update_replicas(replicas)  # before anything dials them
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
    polls: CloudPolls | None = None,
) -> ControlPlane:
    """Wire discovery, health and attestation to `reconciler`. `discover=False` leaves the
    running discovery out (the one-shot commands discover once themselves). Apps built
    with the same `polls` share one Cloud API poll per distinct request."""
    # The gate reports like the Attestor, through the plane built next (late binding).
    gate = build_ratls_gate(
        config,
        lambda verdict: plane.on_verdict(verdict),
        clock=clock,
        trusted_simulator_keys=trusted_simulator_keys,
    )
    health = HealthChecker(
        config.health,
        lambda rid, view, urgent: reconciler.set_health(rid, view, urgent=urgent),
        health_session_factory(config, gate.check if gate is not None else None),
        clock=clock,
    )
    plane = ControlPlane(reconciler, health, None, None, ratls_gate=gate)
    if discover and config.discovery.phala is not None:
        phala = config.discovery.phala
        plane.discovery = PhalaDiscovery(
            phala,
            plane.set_replicas,
            environ=environ,
            clock=clock,
            poll=polls.poll_for(phala) if polls is not None else None,
        )
    plane.attestor = build_attestor(
        config,
        plane.on_verdict if plane.ratls_gate is None else plane.ratls_gate.attestor_verdict,
        environ=environ,
        clock=clock,
        trusted_simulator_keys=trusted_simulator_keys,
    )
    return plane


@contextlib.contextmanager
def naming_app(app: str | None) -> Iterator[None]:
    """A ConfigError raised while building one app's parts names the app (None: the
    single-app layout, where there is no name to give)."""
    try:
        yield
    except ConfigError as exc:
        if app is None:
            raise
        raise ConfigError(f"app {app}: {exc}") from None


def build_app_control(
    config: RouterConfig,
    in_flight: InFlight,
    *,
    app: str | None,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    polls: CloudPolls | None = None,
) -> ControlPlane:
    """One app's reconciler and control plane (`config`: the app's view), as `serve` and
    `check-config` build them; a ConfigError names the app."""
    with naming_app(app):
        reconciler = Reconciler(policy_from_config(config, environ), in_flight, clock=clock)
        return build_control_plane(
            config,
            reconciler,
            environ=environ,
            clock=clock,
            trusted_simulator_keys=trusted_simulator_keys,
            polls=polls,
        )


def build_dns(
    config: RouterConfig, reconciler: Reconciler, environ: Mapping[str, str]
) -> DnsService | None:
    """The DNS feed, sinks and server of the primary app, when `dns:` asks for any."""
    if not DnsService.wanted(config.dns):
        return None
    phala = config.discovery.phala
    connect_to = config.discovery.connect_to
    return DnsService(
        config.dns,
        reconciler,
        app_id=phala.app_id if phala else None,
        pinned=ConnectTo(connect_to).lookup if connect_to else None,
        environ=environ,
    )
