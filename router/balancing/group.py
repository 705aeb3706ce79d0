"""A group of members that one request picks from, and the pick rules shared by policies.

Every policy reduces to: choose a group (all members, or one region), pick one member of
it (weighted round-robin, least-request, or a sticky key's rendezvous winner), then fail
over through the rest of the group. Groups are built once per snapshot.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol

from router.balancing.base import InFlight, Member, RequestContext
from router.balancing.least_request import LeastRequestSelector
from router.balancing.round_robin import RoundRobin
from router.models import Replica

Within = Literal["round_robin", "least_request"]

_MASK = (1 << 64) - 1
# Rendezvous winners per key are remembered per group (the group lives as long as its
# snapshot), so a returning sticky key costs O(1) instead of O(n).
_STICKY_MEMO = 16384


def hash64(text: str) -> int:
    """A stable 64-bit hash (the same in every process and every router instance)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


def _mix(value: int) -> int:
    """splitmix64's finaliser: spreads a 64-bit value over all bits."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def unit_interval(key: int, salt: int = 0) -> float:
    """A key's deterministic draw from (0, 1)."""
    return ((_mix(key ^ salt) >> 11) + 0.5) / float(1 << 53)


class Selector(Protocol):
    def next_index(self) -> int: ...


def make_selector(
    within: Within, members: Sequence[Member], in_flight: InFlight, rng: random.Random
) -> Selector:
    if within == "least_request":
        return LeastRequestSelector(members, in_flight, rng)
    return RoundRobin(members)


class Memos:
    """Rendezvous winners per group, kept across snapshots while a group's members and
    weights are unchanged: snapshots are rebuilt on every health change anywhere, and a
    returning key should stay O(1) through them. Holds the current and previous build."""

    __slots__ = ("_current", "_previous")

    def __init__(self) -> None:
        self._current: dict[tuple[tuple[str, float], ...], dict[int, int]] = {}
        self._previous: dict[tuple[tuple[str, float], ...], dict[int, int]] = {}

    def next_generation(self) -> None:
        self._previous, self._current = self._current, {}

    def get(self, members: Sequence[Member]) -> dict[int, int]:
        signature = tuple((m.replica.id, m.weight) for m in members)
        memo = self._current.get(signature)
        if memo is None:
            memo = self._previous.get(signature)
            if memo is None:
                memo = {}
            self._current[signature] = memo
        return memo


class Group:
    """Members picked together. `first()` applies the group's rule; `keyed(key)` the
    weighted rendezvous winner for a sticky key; `ring(i)` the failover order from i."""

    __slots__ = (
        "_memo",
        "_seeds",
        "_selector",
        "_uniform",
        "_weights",
        "name",
        "replicas",
        "weight",
    )

    def __init__(
        self,
        name: str,
        members: Sequence[Member],
        within: Within,
        in_flight: InFlight,
        rng: random.Random,
        memos: Memos | None = None,
    ) -> None:
        self.name = name
        self.replicas: tuple[Replica, ...] = tuple(m.replica for m in members)
        self.weight = sum(m.weight for m in members)
        self._weights = tuple(max(m.weight, 1e-9) for m in members)
        self._seeds = tuple(hash64(m.replica.id) for m in members)
        self._selector = make_selector(within, members, in_flight, rng) if members else None
        self._uniform = len(set(self._weights)) <= 1
        self._memo: dict[int, int] = memos.get(members) if memos is not None else {}

    def first(self) -> int:
        assert self._selector is not None
        return self._selector.next_index()

    def keyed(self, key: int) -> int:
        """Weighted rendezvous (highest random weight) hashing: each member scores
        `weight / -ln(u)` with u a hash of (key, member); the top score wins. A member
        wins with probability weight/total, and removing one member moves only the keys
        it won. O(n) for a new key, O(1) for a remembered one."""
        found = self._memo.get(key)
        if found is not None:
            return found
        best, best_score = 0, -1.0
        weights = self._weights
        mask = _MASK
        if self._uniform:
            # Equal weights: the largest hash wins (no logarithms needed).
            best_hash = -1
            for index, seed in enumerate(self._seeds):
                # splitmix64's finaliser, inlined: this loop is the O(n) part.
                v = key ^ seed
                v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & mask
                v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & mask
                v ^= v >> 31
                if v > best_hash:
                    best, best_hash = index, v
        else:
            log = math.log
            for index, seed in enumerate(self._seeds):
                v = key ^ seed
                v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & mask
                v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & mask
                v ^= v >> 31
                score = weights[index] / -log(((v >> 11) + 0.5) / 9007199254740992.0)
                if score > best_score:
                    best, best_score = index, score
        if len(self._memo) >= _STICKY_MEMO:
            self._memo.clear()
        self._memo[key] = best
        return best

    def ring(self, first: int) -> Iterator[Replica]:
        replicas = self.replicas
        count = len(replicas)
        for offset in range(count):
            yield replicas[(first + offset) % count]


class KeyedPicker(Protocol):
    """A picker that can also place a sticky key (a 64-bit hash) consistently."""

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]: ...

    def keyed_candidates(self, ctx: RequestContext, key: int) -> Iterator[Replica]: ...


class FlatPicker:
    """round_robin and least_request: one group holding every routable member."""

    __slots__ = ("_explanation", "_group")

    def __init__(
        self,
        members: Sequence[Member],
        within: Within,
        in_flight: InFlight,
        rng: random.Random,
        memos: Memos | None = None,
    ) -> None:
        self._group = Group("all", members, within, in_flight, rng, memos)
        self._explanation = "least_request: p2c" if within == "least_request" else "round_robin"

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        if not self._group.replicas:
            return
        ctx.explanation = self._explanation
        yield from self._group.ring(self._group.first())

    def keyed_candidates(self, ctx: RequestContext, key: int) -> Iterator[Replica]:
        if not self._group.replicas:
            return
        ctx.explanation = "rendezvous"
        yield from self._group.ring(self._group.keyed(key))
