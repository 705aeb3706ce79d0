"""The routing policies as `build_snapshot` drives them: region totals reach the geo policy."""

from __future__ import annotations

from collections import Counter

import pytest

from router.models import HealthView, ReplicaState
from router.snapshot import Overrides, Policy, build_snapshot
from tests.balancing_support import ctx, factory, first, replica


def snapshot(healthy_in_frankfurt: int, drained: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    replicas = [replica(f"fra-{i}", "eu-central-1") for i in range(10)]
    replicas += [replica(f"iad-{i}", "us-east-1") for i in range(10)]
    health = {
        r.id: HealthView(
            state=ReplicaState.HEALTHY
            if not r.id.startswith("fra") or int(r.id.split("-")[1]) < healthy_in_frankfurt
            else ReplicaState.UNHEALTHY
        )
        for r in replicas
    }
    return build_snapshot(
        version=1,
        now=0.0,
        replicas=replicas,
        health=health,
        verdicts={},
        policy=Policy(picker_factory=factory({"policy": "geo"})),
        overrides=Overrides(drained=drained),
        in_flight={},
    )


def frankfurt_share(snap) -> float:  # type: ignore[no-untyped-def]
    picks = Counter(
        first(snap.picker, ctx(headers={"CF-IPCountry": "DE"}, trusted=True)).region
        for _ in range(10000)
    )
    return picks["eu-central-1"] / 10000


def test_unhealthy_replicas_count_toward_the_region_total() -> None:
    # 4 of 10 healthy: 1.4 x 40% = 56% stays in Frankfurt, 44% spills to Virginia.
    assert frankfurt_share(snapshot(4)) == pytest.approx(0.56, abs=0.02)
    assert frankfurt_share(snapshot(8)) == 1.0


def test_drained_replicas_do_not_count_toward_the_region_total() -> None:
    # 6 drained by an operator, 4 healthy: the region is 4/4 healthy and keeps its traffic.
    drained = frozenset(f"fra-{i}" for i in range(4, 10))
    assert frankfurt_share(snapshot(10, drained)) == 1.0
