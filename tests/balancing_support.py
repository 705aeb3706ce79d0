"""Builders shared by the balancing tests: members, contexts, and counting picks."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

from router.balancing.base import Member, Picker, PickerFactory, RequestContext
from router.balancing.factory import make_picker_factory
from router.balancing.locate import GeoIP
from router.balancing.regions import Point
from router.balancing.settings import RoutingConfig
from router.models import Replica


def replica(rid: str, region: str | None = None, weight: int = 100) -> Replica:
    return Replica(
        id=rid,
        url=f"http://{rid}.test:80",
        scheme="http",
        host=f"{rid}.test",
        port=80,
        region=region,
        weight=weight,
    )


def members(
    spec: Mapping[str, int], *, totals: Mapping[str, int] | None = None, weight: float = 100.0
) -> list[Member]:
    """{region: routable count} -> members named `<region>-<i>`; `totals` sets each
    region's candidate count (routable + not yet/no longer healthy)."""
    out: list[Member] = []
    for region, count in spec.items():
        total = (totals or {}).get(region, count)
        for i in range(count):
            out.append(Member(replica(f"{region}-{i}", region), weight, total))
    return out


def ctx(
    ip: str = "192.0.2.10",
    headers: Mapping[str, str] | None = None,
    *,
    trusted: bool = False,
) -> RequestContext:
    return RequestContext(client_ip=ip, headers=dict(headers or {}), peer_trusted=trusted)


class FakeGeoIP:
    """IP -> country (or coordinates) from a fixed table."""

    def __init__(self, table: Mapping[str, str | Point]) -> None:
        self.table = dict(table)

    def lookup(self, ip: str) -> tuple[str | None, Point | None]:
        found = self.table.get(ip)
        if isinstance(found, Point):
            return None, found
        return found, None


def factory(
    data: Mapping[str, object] | None = None,
    *,
    geoip: GeoIP | None = None,
    seed: int = 7,
    environ: Mapping[str, str] | None = None,
) -> PickerFactory:
    cfg = RoutingConfig.model_validate(data or {})
    return make_picker_factory(
        cfg, environ=environ or {}, rng=random.Random(seed), geoip=geoip or FakeGeoIP({})
    )


def first(picker: Picker, context: RequestContext) -> Replica:
    return next(iter(picker.candidates(context)))


def count_regions(picker: Picker, make_ctx: object, n: int) -> Counter[str]:
    """How many of `n` requests land in each region."""
    assert callable(make_ctx)
    seen: Counter[str] = Counter()
    for _ in range(n):
        chosen = first(picker, make_ctx())
        seen[chosen.region or ""] += 1
    return seen


def shares(counts: Counter[str], keys: Sequence[str]) -> list[float]:
    total = sum(counts.values())
    return [counts[k] / total for k in keys]
