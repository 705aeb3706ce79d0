"""Regenerate countries.csv from the tz database (public domain).

    python -m router.geodata.build_countries /usr/share/zoneinfo > router/geodata/countries.csv

Each country gets the coordinates of one tz zone's principal city: the first zone listed in
`zone.tab`, except for countries spanning several zones, where the zone of the most populous
area is chosen by hand below (a client's country then maps near where most of its users are,
which is what proximity routing wants, rather than to a geometric centroid).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

PREFERRED_ZONE = {
    "AR": "America/Argentina/Buenos_Aires",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "CD": "Africa/Kinshasa",
    "CL": "America/Santiago",
    "CN": "Asia/Shanghai",
    "CY": "Asia/Nicosia",
    "DE": "Europe/Berlin",
    "EC": "America/Guayaquil",
    "ES": "Europe/Madrid",
    "GL": "America/Nuuk",
    "ID": "Asia/Jakarta",
    "KI": "Pacific/Tarawa",
    "KZ": "Asia/Almaty",
    "MH": "Pacific/Majuro",
    "MN": "Asia/Ulaanbaatar",
    "MX": "America/Mexico_City",
    "MY": "Asia/Kuala_Lumpur",
    "NZ": "Pacific/Auckland",
    "PF": "Pacific/Tahiti",
    "PG": "Pacific/Port_Moresby",
    "PS": "Asia/Hebron",
    "PT": "Europe/Lisbon",
    "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv",
    "US": "America/Chicago",
    "UZ": "Asia/Tashkent",
}


def _degrees(text: str, degree_digits: int) -> float:
    """ISO 6709 `+DDMM[SS]` / `+DDDMM[SS]` -> decimal degrees."""
    sign = -1.0 if text[0] == "-" else 1.0
    digits = text[1:]
    degrees = int(digits[:degree_digits])
    minutes = int(digits[degree_digits : degree_digits + 2])
    seconds = int(digits[degree_digits + 2 :] or 0)
    return sign * (degrees + minutes / 60 + seconds / 3600)


def _split(coords: str) -> tuple[float, float]:
    cut = max(coords.rfind("+"), coords.rfind("-"))
    lat, lon = coords[:cut], coords[cut:]
    return _degrees(lat, 2), _degrees(lon, 3)


def main(zoneinfo: Path) -> None:
    names: dict[str, str] = {}
    for line in (zoneinfo / "iso3166.tab").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            code, name = line.split("\t")[:2]
            names[code] = name
    chosen: dict[str, tuple[float, float, str]] = {}
    for line in (zoneinfo / "zone.tab").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        code, coords, zone = line.split("\t")[:3]
        lat, lon = _split(coords)
        if code not in chosen or PREFERRED_ZONE.get(code) == zone:
            chosen[code] = (lat, lon, zone)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["code", "lat", "lon", "zone", "name"])
    for code in sorted(chosen):
        lat, lon, zone = chosen[code]
        out.writerow([code, f"{lat:.3f}", f"{lon:.3f}", zone, names.get(code, "")])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/zoneinfo"))
