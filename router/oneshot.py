"""One pass of the control plane without serving: what `replicas`, `attest` and
`dns render` show. Discovery once, then (optionally) one health check and one
attestation round, all feeding a reconciler so the result is the snapshot `serve` would
publish at that moment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from router.compose import build_control_plane, policy_from_config
from router.config import RouterConfig
from router.discovery.phala import PhalaDiscovery
from router.discovery.static import static_replicas
from router.models import AttestationVerdict, Replica
from router.reconciler import Reconciler
from router.snapshot import Snapshot


@dataclass
class PassResult:
    replicas: list[Replica]
    snapshot: Snapshot
    verdicts: list[AttestationVerdict]


async def discover_once(config: RouterConfig, environ: Mapping[str, str]) -> list[Replica]:
    if config.discovery.static is not None:
        return static_replicas(config.discovery.static)
    assert config.discovery.phala is not None
    async with PhalaDiscovery(config.discovery.phala, lambda _: None, environ=environ) as discovery:
        return await discovery.first_pass()


async def control_plane_pass(
    config: RouterConfig,
    *,
    environ: Mapping[str, str] | None = None,
    attest: bool | None = None,
    replica_ids: list[str] | None = None,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> PassResult:
    environ = os.environ if environ is None else environ
    reconciler = Reconciler(policy_from_config(config, environ), {})
    replicas = await discover_once(config, environ)
    if replica_ids:
        unknown = set(replica_ids) - {r.id for r in replicas}
        if unknown:
            raise LookupError(f"unknown replica id(s): {', '.join(sorted(unknown))}")
    plane = build_control_plane(
        config,
        reconciler,
        environ=environ,
        trusted_simulator_keys=trusted_simulator_keys,
        discover=False,
    )
    plane.set_replicas(replicas)
    verdicts: list[AttestationVerdict] = []
    try:
        await plane.health.check_now()
        if plane.attestor is not None and attest is not False:
            verdicts = await plane.attestor.attest_now(replica_ids)
    finally:
        await plane.aclose()
    reconciler.rebuild(force=True)
    return PassResult(replicas, reconciler.current, verdicts)
