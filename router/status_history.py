"""What /status remembers between snapshots: since when each replica is in its state, and
its request and error rates over the last minutes (the status page draws them as
sparklines).

A snapshot says what a replica's state is, not since when; and the per-replica counters only
say how much so far. This keeps both over time, off the request path: it listens to
published snapshots and samples the counters every `interval` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from router.snapshot import Snapshot

Totals = Mapping[str, tuple[int, int]]  # replica id -> (requests, 5xx responses) so far
HISTORY_INTERVAL = 10.0
HISTORY_POINTS = 30  # 30 x 10 s: the last five minutes


class StatusHistory:
    def __init__(
        self,
        totals: Callable[[], Totals],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        interval: float = HISTORY_INTERVAL,
        points: int = HISTORY_POINTS,
    ) -> None:
        self._totals = totals
        self._clock = clock
        self._wall = wall
        self.interval = interval
        self._since: dict[str, tuple[str, float]] = {}  # id -> (state, wall time entered)
        self._samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=points + 1)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Reconciler listener: note each state change with the time it happened."""
        now = self._wall()
        current = {}
        for status in snapshot.statuses:
            rid = status.replica.id
            before = self._since.get(rid)
            same = before is not None and before[0] == status.state
            current[rid] = before if same and before is not None else (status.state, now)
        self._since = current

    def sample(self) -> None:
        self._samples.append((self._clock(), dict(self._totals())))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def series(self, replica_id: str) -> tuple[list[float], list[float]]:
        """(requests per second, fraction of 5xx) per interval, oldest first."""
        rates: list[float] = []
        errors: list[float] = []
        samples = list(self._samples)
        for (t0, before), (t1, after) in itertools.pairwise(samples):
            n0, e0 = before.get(replica_id, (0, 0))
            n1, e1 = after.get(replica_id, (0, 0))
            sent, failed = max(n1 - n0, 0), max(e1 - e0, 0)
            rates.append(round(sent / (t1 - t0), 3) if t1 > t0 else 0.0)
            errors.append(round(failed / sent, 4) if sent else 0.0)
        return rates, errors

    def annotate(self, document: dict[str, Any]) -> dict[str, Any]:
        """Add `state_since`, `state_seconds` and `history` to each replica row."""
        now = self._wall()
        for row in document.get("replicas", []):
            since = self._since.get(row["id"])
            row["state_since"] = round(since[1], 3) if since else None
            row["state_seconds"] = round(now - since[1], 3) if since else None
            rates, errors = self.series(row["id"])
            row["history"] = {
                "interval_seconds": self.interval,
                "requests_per_second": rates,
                "error_ratio": errors,
            }
        return document
