"""The retry policy's pure decisions: what is retryable, the budget, Retry-After pauses,
the candidate walk, the settings' errors, and the access-log line of a retried request."""

from __future__ import annotations

import logging
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.access_log import AccessLog
from router.config import parse_config
from router.errors import ConfigError
from router.proxy.base import RequestRecord
from router.proxy.retry import RetryPolicy, retry_reason
from router.proxy.retry_budget import (
    MAX_PAUSE,
    Candidates,
    Retrier,
    RetryAfterPauses,
    RetryBudget,
    parse_retry_after,
)
from tests.balancing_support import replica
from tests.support import static_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(**proxy: object) -> RetryPolicy:
    config = parse_config(static_config([("a", "http://a.test")], proxy=proxy), {})
    return RetryPolicy.from_config(config.proxy)


# -- what is retryable ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "sent", "idempotent", "expected"),
    [
        ("connect", False, False, True),  # nothing left: any method moves on
        ("tls", False, False, True),
        ("connect", True, False, False),  # a body started streaming
        ("reset", True, True, True),
        ("reset", True, False, False),
        ("timeout", True, True, True),
        ("per_try_timeout", True, True, True),
        ("timeout", True, False, False),
    ],
)
def test_default_policy_retries_connection_failures_as_before(
    kind: str, sent: bool, idempotent: bool, expected: bool
) -> None:
    assert policy().retryable(kind, sent=sent, idempotent=idempotent) is expected


def test_reset_and_timeout_follow_retry_on_but_connect_failure_is_always_on() -> None:
    narrow = policy(retry_on=["gateway-error"])
    assert narrow.retry_on == {"connect-failure", "gateway-error"}
    assert not narrow.retryable("reset", sent=True, idempotent=True)
    assert not narrow.retryable("timeout", sent=True, idempotent=True)
    assert narrow.retryable("connect", sent=False, idempotent=False)


def test_gateway_errors_and_chosen_statuses_are_replica_failures() -> None:
    chosen = policy(
        retry_on=["gateway-error", "retriable-status-codes"], retriable_status_codes=[429]
    )
    assert chosen.statuses == {429, 502, 503, 504}
    assert chosen.status_verdict(502, count_5xx=False) == (False, "gateway_error")
    assert chosen.status_verdict(429, count_5xx=False) == (False, "retriable_status")
    assert chosen.status_verdict(500, count_5xx=False) == (True, None)  # the app's own 500
    assert chosen.status_verdict(500, count_5xx=True) == (False, "5xx")
    assert chosen.status_verdict(200, count_5xx=True) == (True, None)
    off = policy(retry_on=["reset"])
    assert off.statuses == frozenset()
    assert off.status_verdict(502, count_5xx=True) == (False, "5xx")


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("connect", "connect-failure"),
        ("connect_timeout", "connect-failure"),
        ("reset", "reset"),
        ("timeout", "timeout"),
        ("per_try_timeout", "per-try-timeout"),
        ("503", "gateway-error"),
        ("429", "retriable-status-codes"),
    ],
)
def test_retries_are_counted_under_retry_on_names(outcome: str, reason: str) -> None:
    assert retry_reason(outcome) == reason


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ({"retry_on": ["5xx"]}, "retry_on"),
        ({"retriable_status_codes": [200], "retry_on": ["retriable-status-codes"]}, "400 to 599"),
        ({"retriable_status_codes": [429]}, "does not list retriable-status-codes"),
        ({"retry_on": ["retriable-status-codes"]}, "retriable_status_codes is"),
        ({"retry_budget": {"budget_percent": 150}}, "budget_percent"),
        ({"per_try_timeout": "0s"}, "per_try_timeout"),
    ],
)
def test_bad_retry_settings_are_named(proxy: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(static_config([("a", "http://a.test")], proxy=proxy), {})


# -- the budget -------------------------------------------------------------------------------


@given(
    active=st.integers(min_value=0, max_value=10_000),
    percent=st.floats(min_value=0, max_value=100),
    minimum=st.integers(min_value=0, max_value=50),
)
def test_budget_admits_exactly_up_to_its_limit(active: int, percent: float, minimum: int) -> None:
    budget = RetryBudget(percent, minimum, lambda: active)
    limit = max(minimum, int(active * percent / 100))
    granted = 0
    while granted <= limit and budget.try_acquire():
        granted += 1
    assert granted == limit
    budget.release()
    assert budget.try_acquire() is (limit > 0)


def test_connection_level_retries_are_never_refused_but_fill_the_budget() -> None:
    budget = RetryBudget(20, 3, lambda: 10)
    for _ in range(3):
        budget.acquire()
    assert not budget.try_acquire()
    budget.acquire()  # still allowed
    assert budget.held == 4


# -- Retry-After ------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**9))
def test_retry_after_seconds_parse(seconds: int) -> None:
    assert parse_retry_after(str(seconds), 0.0) == seconds


def test_retry_after_http_date_and_garbage() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


def test_pause_lasts_retry_after_capped_and_then_ends() -> None:
    clock = Clock()
    pauses = RetryAfterPauses(clock, wall=lambda: 0.0)
    pauses.pause("a", "30")
    pauses.pause("b", "86400")
    pauses.pause("c", "garbled")
    assert pauses.paused("a")
    assert pauses.paused("b")
    assert not pauses.paused("c")
    clock.now += 30
    assert not pauses.paused("a")
    assert pauses.paused("b")
    clock.now += MAX_PAUSE
    assert not pauses.paused("b")


def test_retries_skip_paused_replicas_but_a_first_attempt_does_not() -> None:
    pauses = RetryAfterPauses(Clock(), wall=lambda: 0.0)
    pauses.pause("a", "30")
    pauses.pause("c", "30")
    walk = Candidates(iter([replica("a"), replica("b"), replica("c")]), pauses)
    assert [r.id for r in walk] == ["a", "b"]


@given(
    ids=st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8),
    paused=st.sets(st.sampled_from("abcdefgh")),
)
def test_the_walk_keeps_order_and_skips_only_paused_retries(
    ids: list[str], paused: set[str]
) -> None:
    pauses = RetryAfterPauses(Clock(), wall=lambda: 0.0)
    for rid in paused:
        pauses.pause(rid, "30")
    walk = Candidates(iter([replica(i) for i in ids]), pauses)
    expected = ids[:1] + [i for i in ids[1:] if i not in paused]
    assert [r.id for r in walk] == expected
    assert walk.peek() is None


# -- the decisions ----------------------------------------------------------------------------


def decide_503(
    retrier: Retrier, *, idempotent: bool = True, attempts: int = 1, left: int = 1
) -> tuple[str | None, bool]:
    walk = Candidates(iter([replica(f"r{i}") for i in range(left)]), retrier.pauses)
    decision = retrier.on_status(
        503,
        None,
        replica("x"),
        idempotent=idempotent,
        attempts=attempts,
        candidates=walk,
        holds_token=False,
    )
    return decision.retry, decision.exhausted


def test_a_status_is_retried_only_when_a_retry_is_possible() -> None:
    retrier = Retrier(policy(), lambda: 100)
    assert decide_503(retrier) == ("503", False)
    assert decide_503(retrier, idempotent=False) == (None, False)
    assert decide_503(retrier, attempts=3) == (None, False)  # proxy.retries (2) spent
    assert decide_503(retrier, left=0) == (None, False)  # nobody left: relay it


def test_an_exhausted_budget_relays_the_response_and_says_so() -> None:
    retrier = Retrier(policy(retry_budget={"min_retry_concurrency": 1}), lambda: 1)
    assert decide_503(retrier) == ("503", False)
    assert decide_503(retrier) == (None, True)


def test_per_try_timeout_waits_when_no_retry_is_possible() -> None:
    retrier = Retrier(policy(per_try_timeout="1s"), lambda: 100)

    def due(idempotent: bool, left: int) -> str | None:
        walk = Candidates(iter([replica(f"r{i}") for i in range(left)]), retrier.pauses)
        return retrier.on_per_try_timeout(
            idempotent=idempotent, attempts=1, candidates=walk, holds_token=False
        ).retry

    assert due(True, 1) == "per_try_timeout"
    assert due(False, 1) is None  # a POST is waited on
    assert due(True, 0) is None


# -- the access log ---------------------------------------------------------------------------


def test_access_log_lists_the_attempts_given_up(caplog: pytest.LogCaptureFixture) -> None:
    record = RequestRecord(
        method="GET",
        path="/x",
        status=200,
        client="127.0.0.1",
        replica=replica("b"),
        retries=2,
        upstream_seconds=0.01,
        total_seconds=0.02,
        bytes_in=0,
        bytes_out=2,
        attempts=(("a", "503"), ("c", "connect")),
    )
    with caplog.at_level(logging.INFO, logger="router.access"):
        AccessLog().request_done(record)
    access = caplog.records[-1].access  # type: ignore[attr-defined]
    assert access["attempts"] == "a:503,c:connect"
    assert access["replica"] == "b"
