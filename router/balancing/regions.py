"""Where a region is: region ids, their coordinates and the distance between two points.

Country and region coordinates come from the tables in `router/geodata/` (see its README
for sources and licences). Pure: no I/O beyond reading those packaged tables.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Protocol

EARTH_RADIUS_KM = 6371.0088


def normalise_region(name: str) -> str:
    """Region ids are compared case-insensitively with `_` and `-` treated alike."""
    return name.strip().lower().replace("_", "-")


class LatLon(Protocol):
    """A configured region position (`routing.geo.regions`)."""

    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Point:
    lat: float
    lon: float


def haversine_km(a: Point, b: Point) -> float:
    """Great-circle distance in kilometres."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("router.geodata").joinpath(name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


@cache
def country_table() -> Mapping[str, Point]:
    """ISO 3166 alpha-2 code -> coordinates of the country's principal city."""
    return {
        row["code"]: Point(float(row["lat"]), float(row["lon"]))
        for row in _read_csv("countries.csv")
    }


@cache
def region_table() -> Mapping[str, Point]:
    """Built-in region id -> coordinates (AWS, GCP and common short ids)."""
    return {
        normalise_region(row["region"]): Point(float(row["lat"]), float(row["lon"]))
        for row in _read_csv("regions.csv")
    }


def region_coordinates(name: str, overrides: Mapping[str, LatLon] | None = None) -> Point | None:
    """Coordinates of a region id: config overrides, then the built-in table, then a
    two-letter country code, then the id without a trailing number (`eu-west-7` ->
    `eu-west`). None when nothing matches."""
    key = normalise_region(name)
    if overrides and key in overrides:
        given = overrides[key]
        return Point(given.lat, given.lon)
    table = region_table()
    if key in table:
        return table[key]
    if len(key) == 2 and key.upper() in country_table():
        return country_table()[key.upper()]
    stem = re.sub(r"-?\d+$", "", key)
    if stem != key and stem:
        return region_coordinates(stem, overrides)
    return None
