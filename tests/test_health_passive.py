"""Passive outlier detection as the data plane drives it: a fake clock, a real reconciler,
no sockets. Ejections must reach the snapshot before the next request is routed."""

from __future__ import annotations

import logging
import random

import pytest

from router.balancing.round_robin import RoundRobin
from router.health.active import HealthChecker
from router.health.settings import HealthConfig, PassiveConfig
from router.models import CheckResult, HealthView, Replica, ReplicaState
from router.reconciler import Reconciler
from router.snapshot import Policy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(rid: str) -> Replica:
    return Replica(id=rid, url=f"http://{rid}.test", scheme="http", host=f"{rid}.test", port=80)


class Harness:
    """A checker (active checks off: replicas start healthy) feeding a reconciler."""

    def __init__(self, n: int, **passive: object) -> None:
        self.clock = FakeClock()
        self.reconciler = Reconciler(Policy(picker_factory=RoundRobin), {}, clock=self.clock)
        self.urgent: list[str] = []
        cfg = HealthConfig(enabled=False, passive=PassiveConfig(**passive))
        self.checker = HealthChecker(
            cfg,
            self.sink,
            lambda: pytest.fail("passive checks need no session"),
            clock=self.clock,
            rng=random.Random(0),
        )
        self.replicas = [replica(f"r{i}") for i in range(n)]
        self.reconciler.set_replicas(self.replicas)
        self.checker.update_replicas(self.replicas)
        self.reconciler.rebuild()

    def sink(self, rid: str, view: HealthView, urgent: bool) -> None:
        if urgent:
            self.urgent.append(rid)
        self.reconciler.set_health(rid, view, urgent=urgent)

    def fail(self, rid: str, times: int, kind: str = "reset") -> None:
        for _ in range(times):
            self.checker.passive.record(rid, False, kind)

    def routable(self) -> list[str]:
        # No rebuild here: an ejection must already be in the published snapshot.
        return [r.id for r in self.reconciler.current.routable]


def test_consecutive_failures_eject_at_once_without_waiting_for_a_rebuild() -> None:
    h = Harness(3)
    h.fail("r1", 4)
    assert h.routable() == ["r0", "r1", "r2"]
    h.fail("r1", 1)
    assert h.urgent == ["r1"]
    assert h.routable() == ["r0", "r2"]
    status = h.reconciler.current.by_id["r1"]
    assert status.state == ReplicaState.EJECTED
    assert status.reason == "ejected: failing live traffic (outlier detection)"


def test_successes_in_between_keep_a_replica_in() -> None:
    h = Harness(2)
    for _ in range(10):
        h.fail("r0", 4)
        h.checker.passive.record("r0", True)
    assert h.urgent == []
    assert h.routable() == ["r0", "r1"]


def test_ejection_ends_when_its_time_is_up_and_backs_off_on_repeat() -> None:
    h = Harness(3, base_ejection=30, max_ejection=50)
    h.fail("r0", 5)
    details = h.checker.view("r0")
    assert details is not None
    assert "r0" not in h.routable()
    assert details.ejected_until == 1030

    h.clock.now = 1030
    h.reconciler.rebuild()  # what the reconciler's timer does at next_change_at
    assert h.routable() == ["r0", "r1", "r2"]

    h.fail("r0", 5)  # second ejection: 2 x 30 s, capped at 50 s
    details = h.checker.view("r0")
    assert details is not None
    assert details.ejections == 2
    assert details.ejected_until == 1080


def test_no_more_than_max_ejected_percent_but_always_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(4, max_ejected_percent=50)
    for rid in ("r0", "r1", "r2"):
        h.fail(rid, 5)
    assert h.urgent == ["r0", "r1"]
    assert h.routable() == ["r2", "r3"]
    assert any("max_ejected_percent" in r.getMessage() for r in caplog.records)

    lone = Harness(2, max_ejected_percent=10)
    lone.fail("r0", 5)
    lone.fail("r1", 5)
    assert lone.routable() == ["r1"]  # 50% > 10%, yet one bad replica may always go


def test_5xx_counts_only_when_configured() -> None:
    counting = Harness(2)
    for _ in range(5):
        counting.checker.passive.record_status("r0", 502)
    assert counting.routable() == ["r1"]

    ignoring = Harness(2, count_5xx=False)
    for _ in range(5):
        ignoring.checker.passive.record_status("r0", 502)
    assert ignoring.routable() == ["r0", "r1"]


def test_engine_hook_and_unknown_replicas() -> None:
    h = Harness(2)
    for _ in range(5):
        h.checker.passive.attempt_done(h.replicas[0], False, "timeout", None)
    h.checker.passive.record("not-a-replica", False)
    h.checker.passive.request_done(object())
    assert h.routable() == ["r1"]


def test_disabled_passive_checks_never_eject() -> None:
    h = Harness(2, enabled=False)
    h.fail("r0", 50)
    assert h.routable() == ["r0", "r1"]


def test_an_active_pass_after_the_time_is_up_clears_the_ejection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="router.health")  # the INFO line is the reconciler's
    h = Harness(2)
    h.fail("r0", 5)
    assert sum("r0 ejected for 30s" in r.getMessage() for r in caplog.records) == 1
    # An active check passing during the ejection does not end it...
    h.checker.apply_check("r0", CheckResult(at=1010, ok=True, status=200))
    details = h.checker.view("r0")
    assert details is not None
    assert details.ejected_until == 1030
    # ...one after the time is up does, and the ejection count is kept for backoff.
    h.clock.now = 1031
    h.checker.apply_check("r0", CheckResult(at=1031, ok=True, status=200))
    details = h.checker.view("r0")
    assert details is not None
    assert details.ejected_until is None
    assert details.ejections == 1
    assert details.state is ReplicaState.HEALTHY
