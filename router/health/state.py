"""Pure health state machines: (previous state, observation, now) -> new state.

Nothing here does I/O or reads a clock; callers pass `now` and a `random.Random`, so every
rule is tested with plain values.

Active checks (Envoy-like):
- A new replica is `pending`. Its first check decides at once: a pass makes it `healthy`
  (routable without waiting for `healthy_threshold`, like Envoy at startup), a failure makes
  it `unhealthy` (it never served, so there is nothing to protect by waiting for
  `unhealthy_threshold`); from then on it needs `healthy_threshold` passes in a row.
- A healthy replica turns unhealthy after `unhealthy_threshold` failures in a row; an
  unhealthy one turns healthy after `healthy_threshold` passes in a row.
- `healthy_since` is set when a replica turns healthy; slow start ramps from it.

Passive checks (outlier detection, Envoy semantics): see `observe_traffic`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from router.health.settings import HealthConfig, PassiveConfig, status_ranges
from router.models import CheckResult, HealthView, ReplicaState

# A delay never drops below this, whatever the jitter, so a scheduler cannot spin.
MIN_DELAY = 0.001


@dataclass(frozen=True, slots=True)
class ActiveState:
    """What active checks know about one replica."""

    state: ReplicaState = ReplicaState.PENDING
    successes: int = 0  # consecutive passes
    failures: int = 0  # consecutive failures
    last_check: CheckResult | None = None
    healthy_since: float | None = None
    changed_at: float | None = None  # when `state` last changed

    @property
    def transitioning(self) -> bool:
        """On the way to a flip: a healthy replica failing, or an unhealthy one passing."""
        if self.state is ReplicaState.HEALTHY:
            return self.failures > 0
        if self.state is ReplicaState.UNHEALTHY:
            return self.successes > 0
        return False


@dataclass(frozen=True, slots=True)
class Thresholds:
    healthy: int = 2
    unhealthy: int = 3

    @classmethod
    def of(cls, cfg: HealthConfig) -> Thresholds:
        return cls(cfg.healthy_threshold, cfg.unhealthy_threshold)


def observe_check(prev: ActiveState, result: CheckResult, limits: Thresholds) -> ActiveState:
    """Fold one active check result into the state."""
    now = result.at
    if result.ok:
        successes, failures = prev.successes + 1, 0
        flip = prev.state is ReplicaState.PENDING or (
            prev.state is ReplicaState.UNHEALTHY and successes >= limits.healthy
        )
        if flip:
            return ActiveState(ReplicaState.HEALTHY, successes, 0, result, now, now)
        return replace(prev, successes=successes, failures=failures, last_check=result)
    successes, failures = 0, prev.failures + 1
    flip = prev.state is ReplicaState.PENDING or (
        prev.state is ReplicaState.HEALTHY and failures >= limits.unhealthy
    )
    if flip:
        return ActiveState(ReplicaState.UNHEALTHY, 0, failures, result, None, now)
    return replace(prev, successes=successes, failures=failures, last_check=result)


# -- judging a response -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a passing response looks like. Redirects are not followed, so a 3xx passes only
    if `expected_status` lists it (the default 200-299 does not)."""

    ranges: tuple[tuple[int, int], ...] = ((200, 299),)
    body: str | None = None

    @classmethod
    def of(cls, cfg: HealthConfig) -> Expectation:
        return cls(status_ranges(cfg.expected_status), cfg.expected_body or None)


def judge(status: int, body: str | None, expect: Expectation) -> str | None:
    """None when the response passes, else a short reason for the status page."""
    if not any(low <= status <= high for low, high in expect.ranges):
        if 300 <= status < 400:
            return f"status {status} (redirects are not followed)"
        return f"status {status}"
    if expect.body is not None and (body is None or expect.body not in body):
        return f"status {status} but body lacks {expect.body!r}"
    return None


# -- scheduling ---------------------------------------------------------------------------


def jittered(base: float, jitter_percent: int, rng: random.Random) -> float:
    """`base` spread uniformly by +/- `jitter_percent` (the mean stays `base`)."""
    spread = base * jitter_percent / 100
    return max(MIN_DELAY, base + rng.uniform(-spread, spread))


def first_delay(cfg: HealthConfig, rng: random.Random) -> float:
    """Random offset before a new replica's first check: within `unhealthy_interval` (a new
    replica takes no traffic until it passes, so don't keep it waiting a full interval), and
    random so replicas found together don't probe in step."""
    return max(MIN_DELAY, rng.uniform(0, min(cfg.unhealthy_interval, cfg.interval)))


def next_delay(prev: ActiveState, new: ActiveState, cfg: HealthConfig, rng: random.Random) -> float:
    """Seconds until the next check after moving from `prev` to `new`."""
    if prev.state is ReplicaState.PENDING:
        # After the first check, land at a random point of one interval: this is what keeps
        # a thousand replicas discovered at once from probing in lockstep afterwards.
        if new.transitioning:
            return jittered(cfg.unhealthy_interval, cfg.interval_jitter_percent, rng)
        return max(MIN_DELAY, rng.uniform(0, cfg.interval))
    if new.transitioning:
        return jittered(cfg.unhealthy_interval, cfg.interval_jitter_percent, rng)
    return jittered(cfg.interval, cfg.interval_jitter_percent, rng)


# -- passive: outlier detection -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutlierState:
    """What live traffic says about one replica."""

    failures: int = 0  # consecutive failed attempts
    ejections: int = 0  # the backoff multiplier; decays while the replica behaves
    ejected_until: float | None = None
    decay_at: float | None = None  # when `ejections` next drops by one

    def ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until


def ejection_time(ejections: int, cfg: PassiveConfig) -> float:
    """Envoy: base_ejection x number of ejections, capped at max_ejection."""
    return float(min(cfg.base_ejection * ejections, cfg.max_ejection))


def may_eject(ejected_now: int, total: int, max_percent: int) -> bool:
    """Ejecting one more keeps the ejected share within `max_percent`; one replica may
    always be ejected (Envoy's behaviour, so a single bad replica among two still goes)."""
    if ejected_now == 0:
        return total > 0
    return 100 * (ejected_now + 1) <= max_percent * total


def decay(state: OutlierState, now: float, cfg: PassiveConfig) -> OutlierState:
    """Drop the ejection count by one per `decay` seconds spent out of ejection."""
    if state.decay_at is None or state.ejected(now) or now < state.decay_at:
        return state
    steps = 1 + int((now - state.decay_at) // cfg.decay)
    ejections = max(0, state.ejections - steps)
    decay_at = state.decay_at + steps * cfg.decay if ejections else None
    return replace(state, ejections=ejections, decay_at=decay_at)


@dataclass(frozen=True, slots=True)
class TrafficOutcome:
    state: OutlierState
    ejected: bool = False  # this observation ejected the replica
    refused: bool = False  # the threshold was hit but max_ejected_percent forbade ejection


def observe_traffic(
    prev: OutlierState, ok: bool, now: float, cfg: PassiveConfig, *, allowed: bool
) -> TrafficOutcome:
    """Fold one upstream attempt into the state. `allowed` is `may_eject(...)` for this
    moment; it is only consulted when the failure threshold is reached.

    Attempts finishing while the replica is ejected are ignored (they were sent before it).
    Reaching the threshold resets the count whether or not ejection was allowed, as in
    Envoy, so a refused replica needs a fresh run of failures to be considered again.
    """
    state = decay(prev, now, cfg)
    if state.ejected(now):
        return TrafficOutcome(state)
    if ok:
        return TrafficOutcome(replace(state, failures=0) if state.failures else state)
    failures = state.failures + 1
    if failures < cfg.consecutive_failures:
        return TrafficOutcome(replace(state, failures=failures))
    if not allowed:
        return TrafficOutcome(replace(state, failures=0), refused=True)
    ejections = state.ejections + 1
    until = now + ejection_time(ejections, cfg)
    return TrafficOutcome(OutlierState(0, ejections, until, until + cfg.decay), ejected=True)


def end_ejection_on_pass(state: OutlierState, now: float) -> OutlierState:
    """An active check passed: an ejection whose time is up is over (cleared from view)."""
    if state.ejected_until is not None and now >= state.ejected_until:
        return replace(state, ejected_until=None)
    return state


# -- the view the reconciler reads --------------------------------------------------------


def view_of(active: ActiveState, outlier: OutlierState) -> HealthView:
    """Combine both into the `HealthView` the snapshot builder reads.

    A replica back from ejection ramps up again under slow start: its `healthy_since` is
    the later of turning healthy and the end of its last ejection.
    """
    since = active.healthy_since
    if since is not None and outlier.ejected_until is not None:
        since = max(since, outlier.ejected_until)
    return HealthView(
        state=active.state,
        last_check=active.last_check,
        ejected_until=outlier.ejected_until,
        ejections=outlier.ejections,
        healthy_since=since,
    )


def worth_publishing(old: HealthView | None, new: HealthView) -> bool:
    """Whether the reconciler needs this view: routing fields changed, or an unhealthy
    replica fails for a new reason (the status page shows it). A passing probe that changes
    nothing else is not published, so 1,000 replicas don't cause 200 rebuilds a second."""
    if old is None:
        return True
    if (old.state, old.ejected_until, old.healthy_since) != (
        new.state,
        new.ejected_until,
        new.healthy_since,
    ):
        return True
    if new.state is ReplicaState.UNHEALTHY:
        return _cause(old.last_check) != _cause(new.last_check)
    return False


def _cause(check: CheckResult | None) -> tuple[int | None, str | None]:
    return (check.status, check.error) if check else (None, None)
