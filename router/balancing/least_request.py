"""Least-request balancing: power of two choices on the in-flight counts the data plane keeps.

Per pick: two weighted draws (O(log n) each) and two dict reads, so the cost stays flat as
the replica count grows, while still steering away from busy or slow replicas.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from router.balancing.base import InFlight, Member, RequestContext
from router.models import Replica


class LeastRequestSelector:
    """Power of two choices on in-flight counts, weight-aware.

    Two distinct members are drawn in proportion to their weights, and the one with the
    higher `weight / (active + 1)` (Envoy's score) wins; equal in-flight counts keep the
    first draw, so an idle group still splits traffic exactly by weight.
    """

    __slots__ = ("_cum", "_ids", "_in_flight", "_n", "_random", "_uniform", "_weights")

    def __init__(self, members: Sequence[Member], in_flight: InFlight, rng: random.Random) -> None:
        self._ids = tuple(m.replica.id for m in members)
        self._weights = tuple(max(m.weight, 1e-9) for m in members)
        self._n = len(members)
        self._in_flight = in_flight
        self._random = rng.random
        self._uniform = min(self._weights, default=1) == max(self._weights, default=1)
        total = 0.0
        cum: list[float] = []
        for weight in self._weights:
            total += weight
            cum.append(total)
        self._cum = cum

    def _draw(self) -> int:
        if self._uniform:
            return int(self._random() * self._n)
        target = self._random() * self._cum[-1]
        # Binary search on cumulative weights: O(log n).
        lo, hi = 0, self._n - 1
        cum = self._cum
        while lo < hi:
            mid = (lo + hi) // 2
            if cum[mid] <= target:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def next_index(self) -> int:
        n = self._n
        if n == 1:
            return 0
        first = self._draw()
        second = self._draw()
        tries = 0
        while second == first and tries < 3:
            second = self._draw()
            tries += 1
        if second == first:
            second = (first + 1) % n
        active_first = self._in_flight.get(self._ids[first], 0)
        active_second = self._in_flight.get(self._ids[second], 0)
        if active_first == active_second:
            return first
        score_first = self._weights[first] / (active_first + 1)
        score_second = self._weights[second] / (active_second + 1)
        return first if score_first >= score_second else second


class LeastRequest:
    """A standalone least-request picker: the P2C pick, then the ring after it."""

    __slots__ = ("_replicas", "_selector")

    def __init__(
        self, members: Sequence[Member], in_flight: InFlight, rng: random.Random | None = None
    ) -> None:
        self._replicas = tuple(m.replica for m in members)
        self._selector = LeastRequestSelector(members, in_flight, rng or random.Random())

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        replicas = self._replicas
        count = len(replicas)
        if not count:
            return
        first = self._selector.next_index()
        for offset in range(count):
            yield replicas[(first + offset) % count]
