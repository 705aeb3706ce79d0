"""Locust scenarios for phala-router (FastHttpUser), configured by environment variables.

    BENCH_SCENARIO=mix locust -f bench/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 50 -r 50 -t 30s --processes 2

BENCH_SCENARIO    small | post | slow | mix                           (default small)
BENCH_SMALL_PATH  path of the small GET                              (default /)
BENCH_POST_PATH   path of the POST                                   (default /echo)
BENCH_POST_BYTES  size of the POST body in bytes                     (default 1024)
BENCH_SLOW_PATH   path of the slow endpoint                          (default /slow?ms=200)
BENCH_MIX         weights of the mix, e.g. small:6,post:3,slow:1     (default that)
BENCH_WAIT_MS     think time between a user's requests; 0 = closed loop at full speed
BENCH_REPLICA_HEADER  response header naming the replica that answered (default X-Replica;
                  empty to turn off). When a response carries it, the request is named
                  "<scenario> @<replica>" so locust's table and CSV show per-replica rows;
                  the scenario's own rows come from the router's metrics or the simulator.
BENCH_HOST_HEADER Host header to send (a router routing by name)

Request names are the scenario names ("small", "post", "slow"), so results group by
scenario whatever the paths are.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import locust.stats
from locust import FastHttpUser, TaskSet, constant

# Flush the CSV history every second (default 5 s): the sweep's live display reads it.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

SCENARIOS = ("small", "post", "slow", "mix")
DEFAULT_MIX = "small:6,post:3,slow:1"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip() or default


def _env_int(name: str, default: int) -> int:
    text = _env(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise SystemExit(f"{name}={text!r}: expected a whole number") from None
    if value < 0:
        raise SystemExit(f"{name}={text!r}: must be >= 0")
    return value


def parse_mix(text: str) -> dict[str, int]:
    """'small:6,post:3,slow:1' -> weights; names must be scenarios, weights whole numbers."""
    weights: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        if name not in ("small", "post", "slow") or not weight.strip().isdigit():
            raise SystemExit(
                f"BENCH_MIX={text!r}: expected name:weight pairs with names small, post, slow"
            )
        weights[name] = int(weight)
    if not any(weights.values()):
        raise SystemExit(f"BENCH_MIX={text!r}: at least one weight must be > 0")
    return weights


SCENARIO = _env("BENCH_SCENARIO", "small")
if SCENARIO not in SCENARIOS:
    raise SystemExit(f"BENCH_SCENARIO={SCENARIO!r}: use one of {', '.join(SCENARIOS)}")
SMALL_PATH = _env("BENCH_SMALL_PATH", "/")
POST_PATH = _env("BENCH_POST_PATH", "/echo")
POST_BODY = b"x" * _env_int("BENCH_POST_BYTES", 1024)
SLOW_PATH = _env("BENCH_SLOW_PATH", "/slow?ms=200")
WAIT_SECONDS = _env_int("BENCH_WAIT_MS", 0) / 1000
REPLICA_HEADER = os.environ.get("BENCH_REPLICA_HEADER", "X-Replica").strip()
HOST_HEADER = os.environ.get("BENCH_HOST_HEADER", "").strip()
HEADERS = {"Host": HOST_HEADER} if HOST_HEADER else {}


def _call(
    user: FastHttpUser,
    method: str,
    path: str,
    name: str,
    extra: dict[str, str] | None = None,
    **kwargs: Any,
) -> None:
    headers = {**HEADERS, **extra} if extra else HEADERS
    with user.client.request(
        method, path, name=name, headers=headers, catch_response=True, **kwargs
    ) as response:
        # No headers at all when the connection failed (locust records that as a failure).
        replica = (response.headers or {}).get(REPLICA_HEADER) if REPLICA_HEADER else None
        if replica:
            response.request_meta["name"] = f"{name} @{replica[:12]}"


def small(user: FastHttpUser) -> None:
    _call(user, "GET", SMALL_PATH, "small")


def post(user: FastHttpUser) -> None:
    _call(
        user,
        "POST",
        POST_PATH,
        "post",
        data=POST_BODY,
        extra={"Content-Type": "application/octet-stream"},
    )


def slow(user: FastHttpUser) -> None:
    _call(user, "GET", SLOW_PATH, "slow")


TASKS: dict[str, Callable[[FastHttpUser], None]] = {"small": small, "post": post, "slow": slow}


def _tasks() -> list[TaskSet | Callable[..., Any]]:
    """Each task repeated by its weight (what locust does with a weight dict)."""
    weights = parse_mix(_env("BENCH_MIX", DEFAULT_MIX)) if SCENARIO == "mix" else {SCENARIO: 1}
    return [TASKS[name] for name, weight in weights.items() for _ in range(weight)]


class RouterUser(FastHttpUser):
    """One client connection issuing the scenario's requests back to back (closed loop)."""

    wait_time = constant(WAIT_SECONDS)
    tasks = _tasks()
