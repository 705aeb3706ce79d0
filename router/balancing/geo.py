"""Geographic proximity with Envoy-style priority spill-over.

Regions are ranked by great-circle distance from the client; each region is one Envoy
priority level. A level's health is `min(1, overprovisioning x routable / total)`, and
levels take load in order:

    normalised = min(1, sum(health))
    load[0]    = health[0] / normalised
    load[i]    = min(1 - sum(load[:i]), health[i] / normalised)

so with the default factor 1.4 the nearest region keeps all traffic while >= ~72% of its
replicas are routable, sheds the excess to the next regions below that, and an empty region
(no routable replica) fails over completely. A plan (ordered groups and cumulative loads)
is computed once per client location key and snapshot, so a request costs a dict lookup,
one random draw and the group's own pick.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from router.balancing.base import InFlight, Member, RequestContext
from router.balancing.group import Group, Within
from router.balancing.keyhash import unit_interval
from router.balancing.locate import ClientLocation, Locator
from router.balancing.regions import Point, haversine_km, normalise_region, region_coordinates
from router.balancing.settings import GeoConfig
from router.balancing.tables import KeyTables
from router.models import Replica

log = logging.getLogger(__name__)

_PLAN_CACHE = 4096
_LEVEL_SALT = 0x5EED_0F_1E7E1
_UNKNOWN = "(no region)"
# Unknown regions are warned about once per process, not once per snapshot.
_warned: set[str] = set()


def priority_loads(health: Sequence[float]) -> list[float]:
    """Envoy's priority load split: the share of traffic each level (in order) takes,
    given each level's health in [0, 1] (already multiplied by overprovisioning and
    capped). Sums to 1 unless every level has health 0."""
    normalised = min(1.0, sum(health))
    if normalised <= 0:
        return [0.0] * len(health)
    loads: list[float] = []
    remaining = 1.0
    for value in health:
        load = max(0.0, min(remaining, value / normalised))
        loads.append(load)
        remaining -= load
    return loads


def level_health(routable: int, total: int, overprovisioning: float) -> float:
    if total <= 0:
        return 1.0 if routable else 0.0
    return min(1.0, overprovisioning * routable / total)


@dataclass(frozen=True, slots=True)
class _Region:
    name: str
    point: Point | None
    group: Group
    health: float
    routable: int
    total: int


@dataclass(frozen=True, slots=True)
class _Plan:
    regions: tuple[_Region, ...]
    cumulative: tuple[float, ...]
    explanations: tuple[str, ...]


def _printable(text: str) -> str:
    return re.sub(r"[^\x21-\x7e]", "?", text)[:64]


class GeoPicker:
    __slots__ = ("_all", "_default", "_hash_name", "_locator", "_plans", "_random", "_regions")

    def __init__(
        self,
        members: Sequence[Member],
        in_flight: InFlight,
        cfg: GeoConfig,
        locator: Locator,
        rng: random.Random,
        tables: KeyTables | None = None,
        hash_name: str = "rendezvous",
    ) -> None:
        self._locator = locator
        self._hash_name = hash_name
        self._random = rng.random
        self._plans: dict[str, _Plan] = {}
        self._all = Group("all", members, "round_robin", in_flight, rng, tables)
        by_region: dict[str, list[Member]] = {}
        for member in members:
            name = normalise_region(member.replica.region or "") or _UNKNOWN
            by_region.setdefault(name, []).append(member)
        regions: list[_Region] = []
        within: Within = cfg.within_region
        for name, group_members in sorted(by_region.items()):
            point = None if name == _UNKNOWN else region_coordinates(name, cfg.regions)
            if point is None and name not in _warned:
                _warned.add(name)
                log.warning(
                    "region %r has no known coordinates: ranked farthest for every client; "
                    "add it under routing.geo.regions (lat, lon)",
                    name,
                )
            total = max([m.region_total for m in group_members] + [len(group_members)])
            health = level_health(len(group_members), total, cfg.overprovisioning)
            # One sticky table per region group, built here with the snapshot.
            group = Group(_printable(name), group_members, within, in_flight, rng, tables)
            regions.append(_Region(name, point, group, health, len(group_members), total))
        self._regions = tuple(regions)
        self._default = (
            locator.region_location(cfg.default_region, "default_region")
            if cfg.default_region
            else None
        )

    def _plan(self, where: ClientLocation) -> _Plan:
        plan = self._plans.get(where.key)
        if plan is not None:
            return plan

        def distance(region: _Region) -> float:
            return math.inf if region.point is None else haversine_km(where.point, region.point)

        ranked = sorted(self._regions, key=lambda r: (distance(r), r.name))
        loads = priority_loads([r.health for r in ranked])
        cumulative: list[float] = []
        total = 0.0
        for load in loads:
            total += load
            cumulative.append(total)
        nearest = ranked[0]
        explanations = []
        client = f"client={where.label} via {where.via}"
        for index, region in enumerate(ranked):
            km = distance(region)
            far = "unknown distance" if math.isinf(km) else f"{km:.0f} km"
            line = f"geo: {client} -> {region.group.name} ({far})"
            if index > 0:
                line += (
                    f"; spill-over from {nearest.group.name} "
                    f"({nearest.routable}/{nearest.total} routable)"
                )
            explanations.append(line)
        plan = _Plan(tuple(ranked), tuple(cumulative), tuple(explanations))
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.clear()
        self._plans[where.key] = plan
        return plan

    def _choose(self, ctx: RequestContext, draw: float | None) -> tuple[_Plan, int] | None:
        where = self._locator.locate(ctx) or self._default
        if where is None:
            return None
        plan = self._plan(where)
        if plan.cumulative[0] >= 1.0:
            return plan, 0
        value = self._random() if draw is None else draw
        level = bisect.bisect_right(plan.cumulative, value * plan.cumulative[-1])
        return plan, min(level, len(plan.regions) - 1)

    def _walk(self, plan: _Plan, level: int, chosen: Iterator[Replica]) -> Iterator[Replica]:
        yield from chosen
        for index, region in enumerate(plan.regions):
            if index != level:
                yield from region.group.ring(0)

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        if not self._regions:
            return
        chosen = self._choose(ctx, None)
        if chosen is None:
            ctx.explanation = "geo: client location unknown -> round-robin over all regions"
            yield from self._all.ring(self._all.first())
            return
        plan, level = chosen
        ctx.explanation = plan.explanations[level]
        group = plan.regions[level].group
        yield from self._walk(plan, level, group.ring(group.first()))

    def keyed_candidates(self, ctx: RequestContext, key: int) -> Iterator[Replica]:
        """A sticky key keeps its region (its spill-over draw is derived from the key)
        and its replica within the region (the region's sticky table)."""
        if not self._regions:
            return iter(())
        chosen = self._choose(ctx, unit_interval(key, _LEVEL_SALT))
        if chosen is None:
            ctx.explanation = f"geo: client location unknown -> {self._hash_name} over all regions"
            return self._all.keyed_order(key)
        plan, level = chosen
        ctx.explanation = plan.explanations[level]
        return self._walk(plan, level, plan.regions[level].group.keyed_order(key))
