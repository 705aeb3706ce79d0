"""One pass of the control plane without serving: what `replicas`, `attest` and
`dns render` show. Discovery once, then (optionally) one health check and one
attestation round, all feeding a reconciler so the result is the snapshot `serve` would
publish at that moment."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.attestation.ratls import failed
from router.compose import build_control_plane, build_ratls_gate, policy_from_config
from router.config import RouterConfig
from router.discovery.phala import PhalaDiscovery
from router.discovery.static import static_replicas
from router.errors import AttestationError
from router.models import AttestationVerdict, Replica
from router.reach import ConnectTo, peer_leaf, upstream_context
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
        if attest:  # connection: ra-tls: every replica's certificate too
            chosen = [r for r in replicas if not replica_ids or r.id in replica_ids]
            verdicts += await ra_tls_pass(
                config, chosen, trusted_simulator_keys=trusted_simulator_keys
            )
    finally:
        await plane.aclose()
    reconciler.rebuild(force=True)
    return PassResult(replicas, reconciler.current, verdicts)


async def ra_tls_pass(
    config: RouterConfig,
    replicas: Sequence[Replica],
    *,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> list[AttestationVerdict]:
    """`attestation.connection: ra-tls`: dial each replica as traffic would (connect_to, SNI,
    the RA-TLS context), take the leaf it proves it holds, send nothing, and verify it with
    the gate's checks. A replica that cannot be reached gets `ra_tls_unreachable`."""
    gate = build_ratls_gate(config, lambda _: None, trusted_simulator_keys=trusted_simulator_keys)
    if gate is None:
        return []
    candidates = [r for r in replicas if r.is_candidate]
    gate.update_replicas(candidates)
    context = upstream_context(config.upstream_tls, True, config.attestation.kms_root)
    pinned = ConnectTo(config.discovery.connect_to)
    timeout = config.attestation.timeout

    async def probe(replica: Replica) -> AttestationVerdict:
        leaf = None
        if replica.scheme == "https":
            host, port = pinned.lookup(replica.host) or (replica.host, replica.port)
            try:
                async with asyncio.timeout(timeout):
                    _, writer = await asyncio.open_connection(
                        host, port, ssl=context, server_hostname=replica.host
                    )
            except (OSError, TimeoutError) as exc:
                error = AttestationError("unreachable", f"{host}:{port}: {exc or 'timed out'}")
                return failed(replica.id, error, time.monotonic(), time.time())
            leaf = peer_leaf(writer.transport)
            writer.close()
        return await gate.verify(replica, leaf)  # no TLS (http): ra_tls_no_tls

    return list(await asyncio.gather(*(probe(r) for r in candidates)))
