"""`Simulator`: a local Phala Cloud (Cloud API, gateway, replicas, control API) in-process.

sim = Simulator(SimulatorConfig(replicas=[...]))
await sim.start()
... sim.api_url, sim.connect_to, sim.stop_replica(id), sim.break_api("500") ...
await sim.stop()

With `SimulatorConfig(attestation=True)` every replica answers the router's three
attestation sources with quotes signed by `sim.quotes` (INSECURE: trust
`sim.quote_public_key` only with `attestation.verifier: insecure-simulator`);
`sim.set_attestation(id, knob)` makes one misbehave.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from router.simulator.banner import simulator_banner
from router.simulator.certs import gateway_certificate
from router.simulator.cloud_api import API_MODES, PREFIX, cloud_api_app
from router.simulator.control import control_app
from router.simulator.gateway import Gateway
from router.simulator.quotes import (
    SimulatedQuotes,
    load_or_create_key,
    new_key,
    simulated_os_measurement,
)
from router.simulator.replica import SHUTDOWN_TIMEOUT, ReplicaServers
from router.simulator.settings import (
    FRESH_PATH,
    AttestationKnob,
    HealthKnob,
    ReplicaMode,
    ReplicaPatch,
    SimReplicaConfig,
    SimulatorConfig,
)
from router.simulator.state import QuoteProvider, SimContext, SimReplica, TokenBucket, sha256_hex

log = logging.getLogger(__name__)

STOPPED_STATUSES = frozenset({"stopped", "stopping", "terminated", "failed", "error", "creating"})


class Simulator:
    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        cfg = self.config
        self.ctx = SimContext(
            app_id=cfg.app_id,
            app_name=cfg.app_name,
            api_key=cfg.api_key,
            base_domain=cfg.base_domain,
            app_port=cfg.app_port,
            guest_agent_port=cfg.guest_agent_port,
            retry_after=cfg.retry_after,
            tls=cfg.tls,
            shared_backend=TokenBucket(cfg.shared_backend_rps) if cfg.shared_backend_rps else None,
            fresh_path=cfg.fresh_path,
            apps={cfg.app_id: cfg.app_name, **{a.app_id: a.app_name for a in cfg.apps}},
        )
        key = load_or_create_key(cfg.quote_key_file) if cfg.quote_key_file else new_key()
        # Always made (the key is cheap) so the public key is known before start; plugged
        # in as the quote provider only when attestation is on.
        self.quotes = SimulatedQuotes(key, app_id=cfg.app_id)
        if cfg.attestation:
            self.ctx.quote_provider = self.quotes.provider
        self._servers: dict[str, ReplicaServers] = {}
        self._runners: list[web.AppRunner] = []
        self._gateway: Gateway | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ca_file: Path | None = None
        self._api_port = 0
        self._control_port = 0
        self._seq = 0
        self.started = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._gateway = Gateway(self.ctx, cfg.host, cfg.gateway_port, self._gateway_tls())
        await self._gateway.start()
        self._api_port = await self._serve(cloud_api_app(self.ctx), cfg.api_port)
        self._control_port = await self._serve(control_app(self), cfg.control_port)
        for replica_cfg in cfg.replicas:
            await self.add_replica(replica_cfg)
        for app in cfg.apps:
            for replica_cfg in app.replicas:
                await self.add_replica(replica_cfg, app_id=app.app_id)
        self.started = True
        log.info(
            "simulator up: Cloud API %s, gateway %s, control %s, %d replica(s)",
            self.api_url,
            self.gateway_address,
            self.control_url,
            len(self.ctx.replicas),
        )

    async def stop(self) -> None:
        self.started = False
        self.break_api("ok")  # release hanging API calls
        for servers in self._servers.values():
            await servers.stop()
        if self._gateway is not None:
            await self._gateway.stop()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, port)
        await site.start()
        self._runners.append(runner)
        bound: int = runner.addresses[-1][1]
        return bound

    def _gateway_tls(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        self._tmp = tempfile.TemporaryDirectory(prefix="phala-sim-")
        self._ca_file, context = gateway_certificate(self.config.base_domain, Path(self._tmp.name))
        context.set_alpn_protocols(["http/1.1"])
        return context

    # -- where things are ------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{self._host_for_url}:{self._api_port}{PREFIX}"

    @property
    def control_url(self) -> str:
        return f"http://{self._host_for_url}:{self._control_port}"

    @property
    def gateway_address(self) -> str:
        port = self._gateway.port if self._gateway else 0
        return f"{self._host_for_url}:{port}"

    @property
    def connect_to(self) -> dict[str, str]:
        """For the router's `discovery.connect_to`: every replica name dials the gateway."""
        return {f"*.{self.config.base_domain}": self.gateway_address}

    @property
    def ca_file(self) -> Path | None:
        """The CA that signed the gateway's wildcard certificate (TLS only)."""
        return self._ca_file

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls else "http"

    @property
    def _host_for_url(self) -> str:
        host = self.config.host
        if host in {"0.0.0.0", ""}:
            return "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    @property
    def app_ids(self) -> list[str]:
        """Every app this cloud hosts, the first one (`config.app_id`) first."""
        return list(self.ctx.apps)

    def _app(self, app_id: str | None) -> str:
        """`app_id` normalised (None: the first app); ValueError for an app not hosted here."""
        found = self.config.app_id if app_id is None else app_id.lower().removeprefix("app_")
        if found not in self.ctx.apps:
            raise ValueError(f"this simulator hosts no app {app_id!r}; it hosts {self.app_ids}")
        return found

    def discovery_section(
        self, api_key_env: str = "PHALA_CLOUD_API_KEY", app_id: str | None = None
    ) -> dict[str, Any]:
        """A router `discovery:` config section pointing at this simulator, for one of its
        apps (None: the first)."""
        return {
            "phala": {
                "app_id": self._app(app_id),
                "api_url": self.api_url,
                "api_key_env": api_key_env,
                "port": self.config.app_port,
                "scheme": self.scheme,
            },
            "connect_to": self.connect_to,
        }

    def router_overlay(self, api_key_env: str = "PHALA_CLOUD_API_KEY") -> dict[str, Any]:
        """The router config sections that point it at this simulator: `discovery` and, with
        TLS, `upstream_tls.ca_file`. The router process needs `api_key_env` set to
        `config.api_key`."""
        overlay: dict[str, Any] = {"discovery": self.discovery_section(api_key_env)}
        if self.ca_file is not None:
            overlay["upstream_tls"] = {"ca_file": str(self.ca_file)}
        return overlay

    @property
    def quote_public_key(self) -> bytes:
        """The raw public key of the simulator's quote signer: what a router trusts through
        `attestation.simulator_public_keys` (hex) or `RouterApp(trusted_simulator_keys=)`."""
        return self.quotes.public_key

    @property
    def attestation(self) -> bool:
        """Whether replicas answer attestation requests with simulated quotes."""
        return self.ctx.quote_provider is not None

    def attestation_section(
        self, mode: str = "fresh", *, app_id: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """A router `attestation:` section that trusts this simulator's quotes, for one of
        its apps (None: the first)."""
        section: dict[str, Any] = {
            "mode": mode,
            "verifier": "insecure-simulator",
            "simulator_public_keys": [self.quote_public_key.hex()],
            "app_id": self._app(app_id),
            # The simulated dstack image's MRTD/RTMR0-2: an evil-OS replica fails `os`.
            "os_measurements": [simulated_os_measurement()],
            **fields,
        }
        if self.ctx.fresh_path != FRESH_PATH:
            section.setdefault("fresh", {"path": self.ctx.fresh_path})
        return section

    @property
    def quote_provider(self) -> QuoteProvider | None:
        return self.ctx.quote_provider

    @quote_provider.setter
    def quote_provider(self, provider: QuoteProvider | None) -> None:
        self.ctx.quote_provider = provider

    # -- replicas ----------------------------------------------------------------------------

    @property
    def replicas(self) -> list[SimReplica]:
        return list(self.ctx.replicas.values())

    def replica(self, ident: str) -> SimReplica:
        found = self.ctx.find(ident)
        if found is None:
            raise KeyError(f"no simulated replica {ident!r}")
        return found

    def host_of(self, ident: str, port: int | None = None) -> str:
        """`<instance_id>-<port>.<base_domain>`: the name the gateway routes to it."""
        return self.ctx.host_of(self.replica(ident), port or self.config.app_port)

    def url_of(self, ident: str, port: int | None = None) -> str:
        return f"{self.scheme}://{self.host_of(ident, port)}"

    async def add_replica(
        self, cfg: SimReplicaConfig | None = None, *, app_id: str | None = None, **fields: Any
    ) -> SimReplica:
        """Adds a replica of the app `app_id` (None: the first app), with config fields as
        keywords or a SimReplicaConfig; it listens unless its status says it is stopped."""
        cfg = cfg or SimReplicaConfig(**fields)
        app = self._app(app_id)
        self._seq += 1
        replica = SimReplica.from_config(cfg, app, self.ctx.apps[app], self._seq, self.config.seed)
        if replica.instance_id in self.ctx.replicas:
            raise ValueError(f"replica {replica.instance_id} already exists")
        servers = ReplicaServers(replica, self.ctx, self.config.host)
        self._servers[replica.instance_id] = servers
        self.ctx.replicas[replica.instance_id] = replica
        if replica.status not in STOPPED_STATUSES:
            await servers.start()
        return replica

    async def stop_replica(self, ident: str) -> None:
        """The CVM stops: its ports close and the Cloud API says `stopped`."""
        replica = self.replica(ident)
        replica.status, replica.in_progress = "stopped", False
        await self._servers[replica.instance_id].stop()

    async def start_replica(self, ident: str) -> None:
        replica = self.replica(ident)
        await self._servers[replica.instance_id].start()
        replica.status, replica.in_progress = "running", False

    async def remove_replica(self, ident: str) -> None:
        replica = self.replica(ident)
        await self._servers.pop(replica.instance_id).stop()
        del self.ctx.replicas[replica.instance_id]

    def set_region(self, ident: str, region: str) -> None:
        self.replica(ident).region = region

    def set_compose_hash(self, ident: str, compose_hash: str) -> None:
        self.replica(ident).compose_hash = compose_hash

    def set_app_compose(self, ident: str, app_compose: str) -> None:
        """A new compose file on one replica (its hash follows), as a Phala update does."""
        replica = self.replica(ident)
        replica.app_compose = app_compose
        replica.compose_hash = sha256_hex(app_compose)

    def set_attestation(self, ident: str, knob: AttestationKnob) -> None:
        """How the replica answers attestation requests from now on (see AttestationKnob)."""
        self.replica(ident).attestation = knob

    def set_status(self, ident: str, status: str, in_progress: bool = False) -> None:
        """What the Cloud API reports; the listeners are left as they are."""
        replica = self.replica(ident)
        replica.status, replica.in_progress = status, in_progress

    def set_health(self, ident: str, health: HealthKnob) -> None:
        self.replica(ident).health = health

    def set_mode(self, ident: str, mode: ReplicaMode) -> None:
        self.replica(ident).mode = mode

    def set_latency(self, ident: str, seconds: float) -> None:
        self.replica(ident).latency = seconds

    def set_error_rate(self, ident: str, rate: float) -> None:
        self.replica(ident).error_rate = rate

    def set_capacity(self, ident: str, capacity: int | None) -> None:
        self.replica(ident).capacity = capacity or None

    def set_shared_backend_rps(self, rps: float | None) -> None:
        self.ctx.shared_backend = TokenBucket(rps) if rps else None

    def patch_replica(self, ident: str, patch: ReplicaPatch) -> SimReplica:
        replica = self.replica(ident)
        for name in patch.model_fields_set:
            value = getattr(patch, name)
            if name == "capacity":
                value = value or None
            if value is not None or name == "capacity":
                setattr(replica, name, value)
        return replica

    def break_api(self, mode: str) -> None:
        """How the Cloud API answers from now on: one of API_MODES."""
        if mode not in API_MODES:
            raise ValueError(f"unknown API mode {mode!r}; use one of {', '.join(API_MODES)}")
        self.ctx.api_mode = mode
        if mode == "timeout":
            self.ctx.api_unblocked.clear()
        else:
            self.ctx.api_unblocked.set()

    def banner(self) -> str:
        """What `phala-router simulate` prints once everything listens."""
        return simulator_banner(self)

    def summary(self) -> dict[str, Any]:
        return {
            "app_id": self.config.app_id,
            "apps": self.ctx.apps,
            "api_url": self.api_url,
            "gateway": self.gateway_address,
            "connect_to": self.connect_to,
            "tls": self.config.tls,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "api_mode": self.ctx.api_mode,
            "api_requests": self.ctx.api_requests,
            "attestation": self.attestation,
            "quote_public_key": self.quote_public_key.hex() if self.attestation else None,
            "fresh_path": self.ctx.fresh_path,
            "replicas": [r.describe() for r in self.replicas],
        }
