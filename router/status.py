"""The `/status` document: every replica, its state and why it is (not) routable.

Pure: built from a snapshot plus live details the control plane keeps (last check, verdict
age, in-flight), so it can be tested without sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from router.attestation.report import checks_dict
from router.models import AttestationVerdict, CheckResult, HealthView
from router.snapshot import Snapshot


def _check(check: CheckResult | None, to_wall: Callable[[float], float]) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "at": to_wall(check.at),
        "ok": check.ok,
        "status": check.status,
        "error": check.error,
        "latency_seconds": check.latency,
    }


def _verdict(verdict: AttestationVerdict | None, now: float) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {
        "ok": verdict.ok,
        "reason": verdict.reason,
        "detail": verdict.detail,
        "mode": verdict.mode,
        "age_seconds": round(now - verdict.at, 3),
        "tcb_status": verdict.tcb_status,
        "advisory_ids": list(verdict.advisory_ids),
        "compose_hash": verdict.compose_hash,
        # Which checks ran (ok / failed / not_reached) and which are unchecked.
        "checks": checks_dict(verdict),
        "os_measurement": verdict.os_measurement,
    }


def status_document(
    snapshot: Snapshot,
    *,
    now: float,
    to_wall: Callable[[float], float],
    health: Callable[[str], HealthView | None],
    verdicts: Callable[[str], AttestationVerdict | None],
    in_flight: Mapping[str, int],
    facts: Mapping[str, Any],
) -> dict[str, Any]:
    replicas = []
    for status in snapshot.statuses:
        replica = status.replica
        view = health(replica.id)
        replicas.append(
            {
                "id": replica.id,
                "url": replica.url,
                "host": replica.host,
                "port": replica.port,
                "region": replica.region,
                "weight": replica.weight,
                "effective_weight": status.weight,
                "state": status.state,
                "routable": status.routable,
                "reason": status.reason,
                "platform_status": replica.platform_status,
                "compose_hash": replica.compose_hash,
                "last_check": _check(view.last_check if view else None, to_wall),
                "ejections": view.ejections if view else 0,
                "attestation": _verdict(verdicts(replica.id), now),
                "in_flight": in_flight.get(replica.id, 0),
                "metadata": dict(replica.metadata),
            }
        )
    return {
        **facts,
        "snapshot_version": snapshot.version,
        "panic": snapshot.panic,
        "drift": snapshot.drift,
        "compose_hashes": dict(snapshot.compose_hashes),
        "replica_count": len(snapshot.statuses),
        "routable_count": len(snapshot.routable),
        "replicas": replicas,
    }


def router_facts(
    *,
    version: str,
    build: str,
    started_at: float,
    now: float,
    addresses: Sequence[tuple[str, int]],
    tls: bool,
    workers: int,
    verifier: str | None,
    last_reload: Mapping[str, Any] | None,
    certificate_expires_at: float | None,
) -> dict[str, Any]:
    """Who is answering: version, build, uptime, listeners (the TLS one first when there is one),
    workers, the attestation verifier, the last reload and the certificate's expiry."""
    scheme = "https" if tls else "http"
    return {
        "version": version,
        # Which hot path runs: compiled (mypyc) or pure Python (router.native).
        "build": build,
        "started_at": round(started_at, 3),
        "uptime_seconds": round(now - started_at, 3),
        "listeners": [
            f"{scheme if i == 0 else 'http'}://{h}:{p}" for i, (h, p) in enumerate(addresses)
        ],
        "workers": workers,
        "verifier": verifier,
        "last_reload": dict(last_reload) if last_reload is not None else None,
        "certificate_expires_at": certificate_expires_at,
    }
