"""least_request (P2C on in-flight counts) and weights under every flat policy."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.balancing.base import Member
from router.balancing.least_request import LeastRequest
from tests.balancing_support import ctx, factory, first, replica

LR = {"policy": "least_request"}


def weighted(weights: dict[str, float]) -> list[Member]:
    return [Member(replica(rid), w) for rid, w in weights.items()]


def test_p2c_always_prefers_the_idle_replica_of_two() -> None:
    picker = factory(LR)(weighted({"a": 100, "b": 100}), {"a": 3, "b": 0})
    assert {first(picker, ctx()).id for _ in range(200)} == {"b"}


def test_p2c_never_picks_the_one_busy_replica_among_ten() -> None:
    pool = weighted({f"r{i}": 100 for i in range(10)})
    picker = factory(LR)(pool, {"r3": 5})
    picks = Counter(first(picker, ctx()).id for _ in range(5000))
    assert picks["r3"] == 0
    assert len(picks) == 9


def test_p2c_favours_the_least_loaded() -> None:
    pool = weighted({f"r{i}": 100 for i in range(10)})
    load = {f"r{i}": i for i in range(10)}  # r0 idle ... r9 busiest
    picker = factory(LR)(pool, load)
    picks = Counter(first(picker, ctx()).id for _ in range(20000))
    # r0 wins whenever it is drawn: 2 draws of 10 (distinct) -> ~20%; r9 never wins.
    assert picks["r0"] / 20000 == pytest.approx(0.2, abs=0.015)
    assert picks["r9"] == 0
    assert picks["r0"] > picks["r4"] > picks["r8"]


def test_weight_over_active_decides_between_unequal_replicas() -> None:
    # b has twice the weight and 2 requests in flight, a has 1: 200/3 > 100/2, so b.
    picker = factory(LR)(weighted({"a": 100, "b": 200}), {"a": 1, "b": 2})
    assert {first(picker, ctx()).id for _ in range(100)} == {"b"}
    # With 4 in flight, b's score 200/5 drops below a's 100/2.
    picker = factory(LR)(weighted({"a": 100, "b": 200}), {"a": 1, "b": 4})
    assert {first(picker, ctx()).id for _ in range(100)} == {"a"}


@pytest.mark.parametrize("policy", ["round_robin", "least_request"])
def test_weights_are_honoured_within_two_percent(policy: str) -> None:
    weights = {"a": 100.0, "b": 200.0, "c": 300.0, "d": 400.0}
    picker = factory({"policy": policy}, seed=11)(weighted(weights), {})
    n = 100_000
    picks = Counter(first(picker, ctx()).id for _ in range(n))
    total = sum(weights.values())
    for rid, weight in weights.items():
        expected = weight / total
        assert abs(picks[rid] / n - expected) / expected < 0.02, (rid, picks)


def test_failover_order_covers_every_replica_once() -> None:
    pool = weighted({f"r{i}": 100 for i in range(5)})
    picker = factory(LR)(pool, {})
    order = [r.id for r in picker.candidates(ctx())]
    assert sorted(order) == [f"r{i}" for i in range(5)]


def test_standalone_least_request_picker() -> None:
    pool = weighted({"a": 100, "b": 100, "c": 100})
    picker = LeastRequest(pool, {"a": 9, "c": 9}, random.Random(1))
    picks = Counter(first(picker, ctx()).id for _ in range(3000))
    assert picks["b"] / 3000 == pytest.approx(2 / 3, abs=0.03)  # b wins whenever drawn
    assert list(LeastRequest([], {}).candidates(ctx())) == []
    assert len(list(picker.candidates(ctx()))) == 3


def test_single_replica_and_empty_sets() -> None:
    assert first(factory(LR)(weighted({"only": 1}), {"only": 99}), ctx()).id == "only"
    assert list(factory(LR)([], {}).candidates(ctx())) == []
    assert list(factory()([], {}).candidates(ctx())) == []
