"""The immutable routing state a request reads once, and the pure function that builds it.

`build_snapshot()` takes everything the control plane knows (discovered replicas, health
views, attestation verdicts, operator overrides) and decides, for every replica, its state,
whether it is routable and why not. It builds the policy's picker here, off the hot path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from router.balancing.base import InFlight, Member, Picker, PickerFactory
from router.balancing.regions import normalise_region
from router.models import AttestationVerdict, HealthView, Replica, ReplicaState

SLOW_START_FLOOR = 0.1


@dataclass(frozen=True, slots=True)
class Policy:
    """The routing-relevant settings, so `build_snapshot` needs no config object."""

    picker_factory: PickerFactory
    attestation_required: bool = False
    attestation_max_age: float = 1200.0
    panic_threshold: int = 0
    slow_start: float = 0.0
    compose_hashes: frozenset[str] | None = None  # routing.compose_hashes; None = any


@dataclass(frozen=True, slots=True)
class Overrides:
    """Operator actions from the admin API."""

    drained: frozenset[str] = frozenset()
    active_limit: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica's place in a snapshot. Equality covers only what routing depends on, so
    the reconciler can tell whether a rebuild changed anything."""

    replica: Replica
    state: str
    routable: bool
    reason: str
    weight: float
    health: HealthView | None = field(default=None, compare=False)
    attestation: AttestationVerdict | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    built_at: float
    statuses: tuple[ReplicaStatus, ...]
    routable: tuple[Replica, ...]
    picker: Picker
    panic: bool = False
    compose_hashes: Mapping[str, int] = field(default_factory=dict)
    # The earliest clock time at which a rebuild would change something by itself
    # (an ejection ends, a verdict expires, a slow-start ramp steps).
    next_change_at: float | None = None
    by_id: Mapping[str, ReplicaStatus] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        """Replicas of the app run different compose hashes."""
        return len(self.compose_hashes) > 1

    def same_routing(self, other: Snapshot) -> bool:
        return self.statuses == other.statuses and self.panic == other.panic


def _attestation_block(
    replica: Replica, verdict: AttestationVerdict | None, policy: Policy, now: float
) -> tuple[str, float | None] | None:
    """(reason, expiry) when attestation keeps the replica out, else None."""
    if not policy.attestation_required:
        return None
    if verdict is None:
        return "unattested: not attested yet", None
    if not verdict.ok:
        return f"unattested: {verdict.reason}", None
    expires = verdict.at + policy.attestation_max_age
    if now >= expires:
        return "unattested: verdict older than attestation.max_age", None
    return None


def _slow_start_weight(
    health: HealthView | None, policy: Policy, now: float
) -> tuple[float, float | None]:
    """Linear ramp from 10% to 100% over `slow_start` after the replica turned healthy."""
    if policy.slow_start <= 0 or health is None or health.healthy_since is None:
        return 1.0, None
    elapsed = now - health.healthy_since
    if elapsed < 0:  # the ramp starts when an ejection ends: nothing to step before
        return SLOW_START_FLOOR, health.healthy_since
    if elapsed >= policy.slow_start:
        return 1.0, None
    ramp = SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * max(elapsed, 0.0) / policy.slow_start
    # Step the ramp in tenths so a rebuild happens ~10 times, not continuously.
    step = policy.slow_start / 10
    return round(ramp, 1), now + step


def _active_subset(ids: Sequence[tuple[str | None, str]], limit: int) -> set[str]:
    """A stable choice of `limit` replicas spread over regions: lowest ids of each region
    first, taking one region at a time."""
    by_region: dict[str, list[str]] = {}
    for region, rid in sorted(ids, key=lambda x: (x[0] or "", x[1])):
        by_region.setdefault(region or "", []).append(rid)
    chosen: list[str] = []
    queues = [list(v) for _, v in sorted(by_region.items())]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return set(chosen)


@dataclass(frozen=True, slots=True)
class _Row:
    """One replica with what the control plane knows of it, before its health is weighed."""

    replica: Replica
    view: HealthView | None
    verdict: AttestationVerdict | None
    exclusion: str | None  # why it is out whatever its health, e.g. "draining: ..."
    weight: float  # its slow-start factor


def exclusion_reason(
    replica: Replica,
    verdict: AttestationVerdict | None,
    policy: Policy,
    drained: frozenset[str],
    now: float,
) -> str | None:
    """Why a replica is out whatever its health (platform status, an operator's drain,
    attestation, a compose hash not allowed), or None when only its health decides."""
    if not replica.is_candidate:
        return f"platform:{replica.platform_status}"
    if replica.id in drained:
        return "draining: drained by an operator"
    attest = _attestation_block(replica, verdict, policy, now)
    if attest is not None:
        return attest[0]
    if policy.compose_hashes is not None and replica.compose_hash not in policy.compose_hashes:
        return "compose_not_allowed: compose hash not in routing.compose_hashes"
    return None


def excluded_state(reason: str, policy: Policy) -> str:
    """The state shown for a replica kept out by `exclusion_reason`."""
    if reason.startswith("platform:"):
        return reason
    state = reason.split(":", 1)[0]
    if state == "compose_not_allowed":
        return ReplicaState.UNATTESTED if policy.attestation_required else "excluded"
    return state


def health_block(view: HealthView | None, now: float, enabled: bool) -> tuple[str, str] | None:
    """(state, reason) when its health keeps a replica out, None when health lets it route
    (always None with health checking off)."""
    if not enabled:
        return None
    if view is None or view.state is ReplicaState.PENDING:
        return ReplicaState.PENDING, "pending: no health check passed yet"
    if view.ejected_until is not None and view.ejected_until > now:
        return ReplicaState.EJECTED, "ejected: failing live traffic (outlier detection)"
    if view.state is ReplicaState.UNHEALTHY:
        check = view.last_check
        why = (check.error or f"status {check.status}") if check else "failing checks"
        return ReplicaState.UNHEALTHY, f"unhealthy: {why}"
    return None


def in_panic(eligible: int, healthy: int, threshold: int) -> bool:
    """Panic mode: fewer than `threshold` percent of the eligible replicas are healthy, so
    every eligible one routes (spreading load beats piling it on the few survivors)."""
    return threshold > 0 and eligible > 0 and 100 * healthy < threshold * eligible


def _is_ejected(block: tuple[str, str] | None) -> bool:
    return block is not None and block[0] == ReplicaState.EJECTED


def _rows(
    replicas: Sequence[Replica],
    health: Mapping[str, HealthView],
    verdicts: Mapping[str, AttestationVerdict],
    policy: Policy,
    overrides: Overrides,
    now: float,
) -> list[_Row]:
    rows = []
    for replica in sorted(replicas, key=lambda r: r.id):
        view, verdict = health.get(replica.id), verdicts.get(replica.id)
        exclusion = exclusion_reason(replica, verdict, policy, overrides.drained, now)
        weight, _ = _slow_start_weight(view, policy, now)
        rows.append(_Row(replica, view, verdict, exclusion, weight))
    return rows


def next_change_at(
    rows: Sequence[_Row], ejection_ends: Sequence[float], policy: Policy, now: float
) -> float | None:
    """The earliest time a rebuild would change something by itself: a verdict reaching
    max_age, a slow-start step, the end of an ejection of a replica otherwise eligible."""
    deadlines = list(ejection_ends)
    for row in rows:
        if row.verdict is not None and row.verdict.ok and policy.attestation_required:
            deadlines.append(row.verdict.at + policy.attestation_max_age)
        _, step_at = _slow_start_weight(row.view, policy, now)
        if step_at is not None:
            deadlines.append(step_at)
    return min((d for d in deadlines if d > now), default=None)


def _region_totals(eligible: Sequence[_Row], routable: set[str], active: set[str]) -> Counter[str]:
    """Per region, the replicas that would take traffic if healthy (those left out by the
    admin active-limit excepted): the geo policy's spill-over compares routable with this."""
    return Counter(
        normalise_region(row.replica.region or "")
        for row in eligible
        if row.replica.id not in routable or row.replica.id in active
    )


def _status_of(
    row: _Row, block: tuple[str, str] | None, routable: set[str], active: set[str], policy: Policy
) -> ReplicaStatus:
    """One replica's state, routability and reason, given the decisions taken before."""
    replica, view, verdict = row.replica, row.view, row.verdict
    if row.exclusion is not None:
        state = excluded_state(row.exclusion, policy)
        return ReplicaStatus(replica, state, False, row.exclusion, 0.0, view, verdict)
    if replica.id not in routable:
        assert block is not None
        return ReplicaStatus(replica, block[0], False, block[1], 0.0, view, verdict)
    if replica.id not in active:
        reason = "inactive: outside the admin active-limit"
        return ReplicaStatus(replica, ReplicaState.INACTIVE, False, reason, 0.0, view, verdict)
    state = block[0] if block is not None else ReplicaState.HEALTHY
    reason = "panic: routed despite failing health" if block is not None else ""
    return ReplicaStatus(replica, state, True, reason, replica.weight * row.weight, view, verdict)


def build_snapshot(
    *,
    version: int,
    now: float,
    replicas: Sequence[Replica],
    health: Mapping[str, HealthView],
    verdicts: Mapping[str, AttestationVerdict],
    policy: Policy,
    overrides: Overrides,
    in_flight: InFlight,
    health_enabled: bool = True,
) -> Snapshot:
    """Decide, in order: who is excluded whatever its health, who health keeps out, panic,
    the admin active-limit, then each replica's status and the picker's members."""
    rows = _rows(replicas, health, verdicts, policy, overrides, now)
    eligible = [row for row in rows if row.exclusion is None]
    blocks = {row.replica.id: health_block(row.view, now, health_enabled) for row in eligible}
    healthy = [row for row in eligible if blocks[row.replica.id] is None]
    panic = in_panic(len(eligible), len(healthy), policy.panic_threshold)
    routable = {row.replica.id for row in (eligible if panic else healthy)}
    active = routable
    if overrides.active_limit is not None:
        candidates = [(row.replica.region, row.replica.id) for row in rows]
        active = _active_subset([c for c in candidates if c[1] in routable], overrides.active_limit)
    totals = _region_totals(eligible, routable, active)
    statuses = tuple(
        _status_of(row, blocks.get(row.replica.id), routable, active, policy) for row in rows
    )
    members = [
        Member(s.replica, s.weight, totals[normalise_region(s.replica.region or "")])
        for s in statuses
        if s.routable
    ]
    ejection_ends = [
        row.view.ejected_until
        for row in eligible
        if row.view is not None and row.view.ejected_until is not None
        if _is_ejected(blocks[row.replica.id])
    ]
    hashes = Counter(
        row.replica.compose_hash
        for row in rows
        if row.replica.compose_hash and row.replica.is_candidate
    )
    return Snapshot(
        version=version,
        built_at=now,
        statuses=statuses,
        routable=tuple(m.replica for m in members),
        picker=policy.picker_factory(members, in_flight),
        panic=panic,
        compose_hashes=MappingProxyType(dict(hashes)),
        next_change_at=next_change_at(rows, ejection_ends, policy, now),
        by_id=MappingProxyType({s.replica.id: s for s in statuses}),
    )


SnapshotListener = Callable[[Snapshot], None]
