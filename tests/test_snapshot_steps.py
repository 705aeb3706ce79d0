"""The steps `build_snapshot` takes, each a pure function: who is excluded whatever its
health, who health keeps out, when panic mode routes everyone eligible, and the
invariants the whole build keeps for any mix of replicas, health and operator actions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router.models import AttestationVerdict, CheckResult, HealthView, Replica, ReplicaState
from router.snapshot import (
    Overrides,
    Policy,
    build_snapshot,
    excluded_state,
    exclusion_reason,
    health_block,
    in_panic,
)
from tests.balancing_support import factory, replica

NOW = 1000.0
ROUND_ROBIN = Policy(picker_factory=factory({"policy": "round_robin"}))


@given(eligible=st.integers(0, 50), healthy_share=st.floats(0, 1), threshold=st.integers(0, 100))
def test_panic_means_the_healthy_share_is_below_the_threshold(
    eligible: int, healthy_share: float, threshold: int
) -> None:
    healthy = round(eligible * healthy_share)
    panic = in_panic(eligible, healthy, threshold)
    if threshold == 0 or eligible == 0 or healthy == eligible:
        assert not panic
    else:
        assert panic == (healthy / eligible < threshold / 100)


def test_an_operator_drain_outranks_attestation_and_compose_hash() -> None:
    policy = Policy(
        picker_factory=ROUND_ROBIN.picker_factory,
        attestation_required=True,
        compose_hashes=frozenset({"good"}),
    )
    drained = replica("a")
    reason = exclusion_reason(drained, None, policy, frozenset({"a"}), NOW)
    assert reason == "draining: drained by an operator"
    assert excluded_state(reason, policy) == ReplicaState.DRAINING


def test_a_compose_hash_not_allowed_shows_as_unattested_only_when_attestation_gates() -> None:
    reason = "compose_not_allowed: compose hash not in routing.compose_hashes"
    gated = Policy(picker_factory=ROUND_ROBIN.picker_factory, attestation_required=True)
    assert excluded_state(reason, gated) == ReplicaState.UNATTESTED
    assert excluded_state(reason, ROUND_ROBIN) == "excluded"
    assert excluded_state("platform:stopped", ROUND_ROBIN) == "platform:stopped"


def test_an_ejection_shows_only_while_it_lasts_and_health_off_blocks_nothing() -> None:
    ejected = HealthView(state=ReplicaState.HEALTHY, ejected_until=NOW + 5)
    assert health_block(ejected, NOW, enabled=True) == (
        ReplicaState.EJECTED,
        "ejected: failing live traffic (outlier detection)",
    )
    assert health_block(ejected, NOW + 5, enabled=True) is None
    failing = HealthView(
        state=ReplicaState.UNHEALTHY, last_check=CheckResult(at=NOW, ok=False, status=503)
    )
    assert health_block(failing, NOW, enabled=True) == (
        ReplicaState.UNHEALTHY,
        "unhealthy: status 503",
    )
    assert health_block(None, NOW, enabled=False) is None


_HEALTH = st.sampled_from(
    [
        None,
        HealthView(state=ReplicaState.PENDING),
        HealthView(state=ReplicaState.HEALTHY),
        HealthView(state=ReplicaState.UNHEALTHY),
        HealthView(state=ReplicaState.HEALTHY, ejected_until=NOW + 30),
        HealthView(state=ReplicaState.HEALTHY, healthy_since=NOW - 3),
    ]
)
_REPLICA = st.builds(
    lambda i, status, region: Replica(
        id=f"r{i}",
        url=f"http://r{i}.test:80",
        scheme="http",
        host=f"r{i}.test",
        port=80,
        region=region,
        platform_status=status,
    ),
    st.integers(0, 30),
    st.sampled_from(["running", "running", "stopped"]),
    st.sampled_from([None, "us-east-1", "eu-central-1"]),
)


@given(
    replicas=st.lists(_REPLICA, max_size=12, unique_by=lambda r: r.id),
    health=st.lists(_HEALTH, min_size=31, max_size=31),
    drained=st.frozensets(st.integers(0, 30).map(lambda i: f"r{i}")),
    panic_threshold=st.integers(0, 100),
    active_limit=st.none() | st.integers(0, 5),
    slow_start=st.sampled_from([0.0, 10.0]),
    attested=st.frozensets(st.integers(0, 30).map(lambda i: f"r{i}")),
)
def test_every_replica_gets_one_status_and_only_routable_ones_reach_the_picker(
    replicas: list[Replica],
    health: list[HealthView | None],
    drained: frozenset[str],
    panic_threshold: int,
    active_limit: int | None,
    slow_start: float,
    attested: frozenset[str],
) -> None:
    policy = Policy(
        picker_factory=ROUND_ROBIN.picker_factory,
        attestation_required=True,
        attestation_max_age=60.0,
        panic_threshold=panic_threshold,
        slow_start=slow_start,
    )
    views = {r.id: view for r in replicas if (view := health[int(r.id[1:])]) is not None}
    verdicts = {rid: AttestationVerdict(rid, True, "ok", at=NOW - 10) for rid in attested}
    snap = build_snapshot(
        version=1,
        now=NOW,
        replicas=replicas,
        health=views,
        verdicts=verdicts,
        policy=policy,
        overrides=Overrides(drained=drained, active_limit=active_limit),
        in_flight={},
    )
    assert sorted(s.replica.id for s in snap.statuses) == sorted(r.id for r in replicas)
    routable = {s.replica.id for s in snap.statuses if s.routable}
    assert {r.id for r in snap.routable} == routable
    for status in snap.statuses:
        excluded = exclusion_reason(
            status.replica, verdicts.get(status.replica.id), policy, drained, NOW
        )
        if excluded is not None:  # drained, stopped or unattested never route, even in panic
            assert not status.routable
            assert status.reason == excluded
        if status.routable:
            assert status.weight > 0
    if active_limit is not None:
        assert len(routable) <= active_limit
    assert snap.next_change_at is None or snap.next_change_at > NOW
