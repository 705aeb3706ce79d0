"""Pure health state machines: no sockets, a fake clock (plain numbers) and seeded RNGs."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from router.balancing.round_robin import RoundRobin
from router.health.settings import HealthConfig, PassiveConfig, status_ranges
from router.health.state import (
    ActiveState,
    Expectation,
    OutlierState,
    Thresholds,
    decay,
    ejection_time,
    end_ejection_on_pass,
    first_delay,
    jittered,
    judge,
    may_eject,
    next_delay,
    observe_check,
    observe_traffic,
    view_of,
    worth_publishing,
)
from router.models import CheckResult, HealthView, Replica, ReplicaState
from router.snapshot import Overrides, Policy, Snapshot, build_snapshot

H, U, P = ReplicaState.HEALTHY, ReplicaState.UNHEALTHY, ReplicaState.PENDING
LIMITS = Thresholds(healthy=2, unhealthy=3)


def run_checks(outcomes: str, start: ActiveState | None = None) -> list[ActiveState]:
    """Feed a string of '+' (pass) and '-' (fail) checks, one per second."""
    state = start or ActiveState()
    states = []
    for t, c in enumerate(outcomes, start=1):
        result = CheckResult(at=float(t), ok=c == "+", status=200 if c == "+" else 500)
        state = observe_check(state, result, LIMITS)
        states.append(state)
    return states


def states_of(outcomes: str) -> list[ReplicaState]:
    return [s.state for s in run_checks(outcomes)]


# -- rise and fall --------------------------------------------------------------------------


def test_new_replica_is_routable_after_its_first_pass() -> None:
    assert states_of("+") == [H]


def test_new_replica_failing_its_first_check_is_unhealthy_then_needs_the_threshold() -> None:
    assert states_of("-++") == [U, U, H]


def test_healthy_replica_falls_only_after_unhealthy_threshold_failures_in_a_row() -> None:
    assert states_of("+--+---") == [H, H, H, H, H, H, U]


def test_unhealthy_replica_rises_only_after_healthy_threshold_passes_in_a_row() -> None:
    assert states_of("+----+-++") == [H, H, H, U, U, U, U, U, H]


def test_healthy_since_marks_the_moment_it_turned_healthy_for_slow_start() -> None:
    states = run_checks("+++---++")
    assert [s.healthy_since for s in states] == [1.0, 1.0, 1.0, 1.0, 1.0, None, None, 8.0]
    assert states[5].changed_at == 6.0


def test_transitioning_means_a_streak_against_the_current_state() -> None:
    states = run_checks("+-+---+")
    assert [s.transitioning for s in states] == [False, True, False, True, True, False, True]


# -- judging responses ----------------------------------------------------------------------


def test_default_expectation_passes_2xx_and_fails_redirects_and_errors() -> None:
    expect = Expectation.of(HealthConfig())
    assert judge(200, None, expect) is None
    assert judge(204, None, expect) is None
    assert judge(500, None, expect) == "status 500"
    reason = judge(302, None, expect)
    assert reason is not None
    assert "redirects are not followed" in reason


def test_expected_status_ranges_and_single_codes() -> None:
    expect = Expectation(status_ranges("200-204, 418"))
    assert [judge(s, None, expect) is None for s in (200, 204, 205, 418, 419)] == [
        True,
        True,
        False,
        True,
        False,
    ]


def test_expected_body_must_appear_in_a_passing_status() -> None:
    expect = Expectation.of(HealthConfig(expected_body='"ok"'))
    assert judge(200, '{"status": "ok"}', expect) is None
    assert judge(200, '{"status": "starting"}', expect) == ("status 200 but body lacks '\"ok\"'")
    assert judge(503, '{"status": "ok"}', expect) == "status 503"


@pytest.mark.parametrize("spec", ["2xx", "200-", "99", "300-200", "200-700"])
def test_bad_expected_status_is_a_config_error_naming_the_rule(spec: str) -> None:
    with pytest.raises(ValueError, match="status"):
        HealthConfig(expected_status=spec)


# -- scheduling -----------------------------------------------------------------------------


def test_jitter_stays_within_the_percent_and_averages_to_the_interval() -> None:
    rng = random.Random(7)
    delays = [jittered(5.0, 10, rng) for _ in range(2000)]
    assert min(delays) >= 4.5
    assert max(delays) <= 5.5
    assert abs(sum(delays) / len(delays) - 5.0) < 0.05
    assert max(delays) - min(delays) > 0.9  # it really spreads


def test_zero_jitter_is_exact_and_full_jitter_never_reaches_zero() -> None:
    rng = random.Random(1)
    assert jittered(5.0, 0, rng) == 5.0
    assert min(jittered(1.0, 100, rng) for _ in range(5000)) > 0


def test_first_check_of_a_new_replica_is_spread_within_the_unhealthy_interval() -> None:
    cfg = HealthConfig(interval=5, unhealthy_interval=1)
    rng = random.Random(3)
    offsets = [first_delay(cfg, rng) for _ in range(1000)]
    assert 0 < min(offsets) < 0.05
    assert 0.95 < max(offsets) <= 1.0


def test_transitioning_replicas_are_rechecked_at_the_unhealthy_interval() -> None:
    cfg = HealthConfig(interval=5, unhealthy_interval=1, interval_jitter_percent=0)
    rng = random.Random(0)
    healthy = run_checks("+++")[-1]
    failing = observe_check(healthy, CheckResult(at=9, ok=False), LIMITS)
    assert next_delay(healthy, failing, cfg, rng) == 1.0
    recovering = run_checks("-")[-1]
    passing = observe_check(recovering, CheckResult(at=9, ok=True), LIMITS)
    assert next_delay(recovering, passing, cfg, rng) == 1.0
    steady = observe_check(healthy, CheckResult(at=9, ok=True), LIMITS)
    assert next_delay(healthy, steady, cfg, rng) == 5.0


def test_after_the_first_check_replicas_spread_over_one_interval() -> None:
    cfg = HealthConfig(interval=5, unhealthy_interval=1)
    rng = random.Random(5)
    pending = ActiveState()
    healthy = observe_check(pending, CheckResult(at=1, ok=True), LIMITS)
    delays = [next_delay(pending, healthy, cfg, rng) for _ in range(1000)]
    assert min(delays) < 0.1
    assert 4.9 < max(delays) <= 5.0


# -- passive: outlier detection -------------------------------------------------------------

PASSIVE = PassiveConfig(consecutive_failures=5, base_ejection=30, max_ejection=300, decay=300)


def fail_n(state: OutlierState, n: int, now: float, allowed: bool = True) -> OutlierState:
    for _ in range(n):
        state = observe_traffic(state, False, now, PASSIVE, allowed=allowed).state
    return state


def test_ejected_at_the_fifth_consecutive_failure_for_base_ejection() -> None:
    state = fail_n(OutlierState(), 4, now=100)
    assert not state.ejected(100)
    outcome = observe_traffic(state, False, 100, PASSIVE, allowed=True)
    assert outcome.ejected
    assert outcome.state.ejected_until == 130
    assert outcome.state.ejections == 1
    assert outcome.state.ejected(129.9)
    assert not outcome.state.ejected(130)


def test_a_success_resets_the_failure_run() -> None:
    state = fail_n(OutlierState(), 4, now=100)
    state = observe_traffic(state, True, 100, PASSIVE, allowed=True).state
    state = fail_n(state, 4, now=100)
    assert state.ejected_until is None
    assert state.failures == 4


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    assert [ejection_time(n, PASSIVE) for n in (1, 2, 3, 10, 11, 50)] == [
        30,
        60,
        90,
        300,
        300,
        300,
    ]
    state, now = OutlierState(), 0.0
    durations = []
    for _ in range(3):
        state = fail_n(state, 5, now)
        assert state.ejected_until is not None
        durations.append(state.ejected_until - now)
        now = state.ejected_until + 1  # back, and failing again at once
    assert durations == [30, 60, 90]


def test_attempts_finishing_during_an_ejection_are_ignored() -> None:
    state = fail_n(OutlierState(), 5, now=0)
    assert fail_n(state, 20, now=10) == state


@pytest.mark.parametrize(
    ("ejected", "total", "percent", "allowed"),
    [
        (0, 2, 50, True),
        (1, 2, 50, False),  # a second of two would be 100%
        (1, 4, 50, True),
        (2, 4, 50, False),
        (0, 10, 0, True),  # one may always be ejected
        (1, 10, 0, False),
        (9, 10, 100, True),
        (0, 0, 50, False),
    ],
)
def test_max_ejected_percent_with_at_least_one(
    ejected: int, total: int, percent: int, allowed: bool
) -> None:
    assert may_eject(ejected, total, percent) is allowed


def test_refused_ejection_resets_the_count_and_says_so() -> None:
    state = fail_n(OutlierState(), 4, now=0)
    outcome = observe_traffic(state, False, 0, PASSIVE, allowed=False)
    assert outcome.refused
    assert not outcome.ejected
    assert outcome.state.ejected_until is None
    assert outcome.state.failures == 0


def test_ejection_count_decays_one_step_per_decay_period_out_of_ejection() -> None:
    state = OutlierState()
    now = 0.0
    for _ in range(3):  # three ejections in a row: 30 + 60 + 90 s
        state = fail_n(state, 5, now)
        assert state.ejected_until is not None
        now = state.ejected_until
    assert state.ejections == 3
    back = now  # when the third ejection (90 s) ended
    assert decay(state, back + 299, PASSIVE).ejections == 3
    assert decay(state, back + 300, PASSIVE).ejections == 2
    assert decay(state, back + 900, PASSIVE).ejections == 0
    assert decay(state, back + 5000, PASSIVE).decay_at is None
    # Decayed to one ejection, the next one lasts 2 x base again, not 4 x.
    again = fail_n(decay(state, back + 600, PASSIVE), 5, back + 600)
    assert again.ejections == 2
    assert again.ejected_until == back + 600 + 60


def test_an_active_pass_ends_an_ejection_only_once_its_time_is_up() -> None:
    state = fail_n(OutlierState(), 5, now=0)
    assert end_ejection_on_pass(state, 29) == state
    cleared = end_ejection_on_pass(state, 31)
    assert cleared.ejected_until is None
    assert cleared.ejections == 1  # the backoff memory stays


# -- the view the reconciler reads, and what it does with it --------------------------------


def test_view_combines_active_and_passive_and_restarts_slow_start_after_ejection() -> None:
    active = run_checks("+")[-1]
    outlier = fail_n(OutlierState(), 5, now=50)
    view = view_of(active, outlier)
    assert view.state is H
    assert view.ejected_until == 80
    assert view.ejections == 1
    assert view.healthy_since == 80


def test_only_routing_changes_or_new_failure_reasons_are_published() -> None:
    healthy = view_of(run_checks("+")[-1], OutlierState())
    again = view_of(run_checks("++")[-1], OutlierState())
    assert worth_publishing(None, healthy)
    assert not worth_publishing(healthy, again)
    down = HealthView(U, CheckResult(at=1, ok=False, error="connect: refused"))
    same = HealthView(U, CheckResult(at=2, ok=False, error="connect: refused"))
    other = HealthView(U, CheckResult(at=3, ok=False, status=500, error="status 500"))
    assert not worth_publishing(down, same)
    assert worth_publishing(down, other)
    assert worth_publishing(healthy, down)


def replicas(n: int) -> list[Replica]:
    return [
        Replica(id=f"r{i}", url=f"http://r{i}.test", scheme="http", host=f"r{i}.test", port=80)
        for i in range(n)
    ]


def snapshot(
    views: dict[str, HealthView], now: float, reps: Sequence[Replica], **policy: float
) -> Snapshot:
    return build_snapshot(
        version=1,
        now=now,
        replicas=reps,
        health=views,
        verdicts={},
        policy=Policy(picker_factory=RoundRobin, **policy),  # type: ignore[arg-type]
        overrides=Overrides(),
        in_flight={},
    )


def test_panic_routes_to_every_replica_when_the_healthy_share_falls_below_the_threshold() -> None:
    reps = replicas(4)
    good = view_of(run_checks("+")[-1], OutlierState())
    bad = view_of(run_checks("-")[-1], OutlierState())
    views = {"r0": good, "r1": bad, "r2": bad, "r3": bad}
    off = snapshot(views, 10, reps)
    assert not off.panic
    assert [r.id for r in off.routable] == ["r0"]
    assert off.by_id["r1"].reason == "unhealthy: status 500"
    on = snapshot(views, 10, reps, panic_threshold=50)
    assert on.panic
    assert len(on.routable) == 4
    assert on.by_id["r1"].reason.startswith("panic")


def test_slow_start_ramps_a_freshly_healthy_replica_from_ten_percent() -> None:
    reps = replicas(1)
    views = {"r0": view_of(run_checks("+")[-1], OutlierState())}  # healthy since t=1
    weights = [snapshot(views, t, reps, slow_start=30).by_id["r0"].weight for t in (1, 11, 31)]
    assert weights == [10.0, 40.0, 100.0]


def test_an_ejected_replica_is_out_until_its_time_is_up_then_ramps_back() -> None:
    reps = replicas(2)
    healthy = run_checks("+")[-1]
    views = {
        "r0": view_of(healthy, fail_n(OutlierState(), 5, now=10)),
        "r1": view_of(healthy, OutlierState()),
    }
    during = snapshot(views, 20, reps, slow_start=10)
    assert during.by_id["r0"].state == "ejected"
    assert [r.id for r in during.routable] == ["r1"]
    assert during.next_change_at == 40
    after = snapshot(views, 40, reps, slow_start=10)
    assert after.by_id["r0"].routable
    assert after.by_id["r0"].weight == 10.0
