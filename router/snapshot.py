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
    deadlines: list[float] = []
    # First pass: everything except health, which panic mode may override.
    rows: list[tuple[Replica, str | None, HealthView | None, float]] = []
    for replica in sorted(replicas, key=lambda r: r.id):
        view = health.get(replica.id)
        verdict = verdicts.get(replica.id)
        block: str | None = None
        if not replica.is_candidate:
            block = f"platform:{replica.platform_status}"
        elif replica.id in overrides.drained:
            block = "draining: drained by an operator"
        elif (attest := _attestation_block(replica, verdict, policy, now)) is not None:
            block = attest[0]
        elif (
            policy.compose_hashes is not None and replica.compose_hash not in policy.compose_hashes
        ):
            block = "compose_not_allowed: compose hash not in routing.compose_hashes"
        if verdict is not None and verdict.ok and policy.attestation_required:
            deadlines.append(verdict.at + policy.attestation_max_age)
        weight, step_at = _slow_start_weight(view, policy, now)
        if step_at is not None:
            deadlines.append(step_at)
        rows.append((replica, block, view, weight))

    def health_block(view: HealthView | None) -> tuple[str, str] | None:
        if not health_enabled:
            return None
        if view is None or view.state is ReplicaState.PENDING:
            return ReplicaState.PENDING, "pending: no health check passed yet"
        if view.ejected_until is not None and view.ejected_until > now:
            deadlines.append(view.ejected_until)
            return ReplicaState.EJECTED, "ejected: failing live traffic (outlier detection)"
        if view.state is ReplicaState.UNHEALTHY:
            check = view.last_check
            why = (check.error or f"status {check.status}") if check else "failing checks"
            return ReplicaState.UNHEALTHY, f"unhealthy: {why}"
        return None

    eligible = [r for r in rows if r[1] is None]
    healthy = [r for r in eligible if health_block(r[2]) is None]
    panic = (
        policy.panic_threshold > 0
        and bool(eligible)
        and 100 * len(healthy) < policy.panic_threshold * len(eligible)
    )
    routable_ids = {r[0].id for r in (eligible if panic else healthy)}
    if overrides.active_limit is not None:
        active = _active_subset(
            [(r[0].region, r[0].id) for r in rows if r[0].id in routable_ids],
            overrides.active_limit,
        )
    else:
        active = routable_ids

    # Per region, the replicas that would take traffic if healthy (those left out by the
    # admin active-limit excepted): the geo policy's spill-over compares routable with this.
    region_totals = Counter(
        normalise_region(r[0].region or "")
        for r in eligible
        if r[0].id not in routable_ids or r[0].id in active
    )
    statuses: list[ReplicaStatus] = []
    members: list[Member] = []
    for replica, block, view, weight in rows:
        verdict = verdicts.get(replica.id)
        if block is not None:
            state = block.split(":", 1)[0] if not block.startswith("platform:") else block
            if state == "compose_not_allowed":
                state = ReplicaState.UNATTESTED if policy.attestation_required else "excluded"
            statuses.append(ReplicaStatus(replica, state, False, block, 0.0, view, verdict))
            continue
        hb = health_block(view)
        if replica.id not in routable_ids:
            assert hb is not None
            statuses.append(ReplicaStatus(replica, hb[0], False, hb[1], 0.0, view, verdict))
            continue
        if replica.id not in active:
            reason = "inactive: outside the admin active-limit"
            statuses.append(
                ReplicaStatus(replica, ReplicaState.INACTIVE, False, reason, 0.0, view, verdict)
            )
            continue
        state = hb[0] if hb is not None else ReplicaState.HEALTHY
        effective = replica.weight * weight
        reason = "panic: routed despite failing health" if hb is not None else ""
        statuses.append(ReplicaStatus(replica, state, True, reason, effective, view, verdict))
        members.append(
            Member(replica, effective, region_totals[normalise_region(replica.region or "")])
        )

    hashes = Counter(r.compose_hash for r, *_ in rows if r.compose_hash and r.is_candidate)
    frozen_statuses = tuple(statuses)
    return Snapshot(
        version=version,
        built_at=now,
        statuses=frozen_statuses,
        routable=tuple(m.replica for m in members),
        picker=policy.picker_factory(members, in_flight),
        panic=panic,
        compose_hashes=MappingProxyType(dict(hashes)),
        next_change_at=min((d for d in deadlines if d > now), default=None),
        by_id=MappingProxyType({s.replica.id: s for s in frozen_statuses}),
    )


SnapshotListener = Callable[[Snapshot], None]
