"""Selection cost per request for each routing policy at 3, 100 and 1,000 routable replicas,
and the sticky hash tables' build time, memory, remapping and balance.

    python -m bench.selection [--seconds 0.5] [--repeat 3] [--skip-picks] [--skip-tables]
                              [--out bench/results/selection.json]

Times `next(picker.candidates(ctx))` (the pick a request makes first) on prebuilt request
contexts, so the numbers are the policy's own cost (the best of `--repeat` runs); the picker
is built once per run, off the clock, as `build_snapshot` does. The goal is a flat row: O(1) or O(log n) per request.
Then, for each `routing.sticky.hash`, bench.hash_tables measures the table build at 1,000
and 10,000 replicas and the keys that move when one of N replicas leaves.
Absolute numbers drift +-30% on these shared machines; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import hash_tables
from router.balancing.base import Member, RequestContext
from router.balancing.factory import make_picker_factory
from router.balancing.locate import FastGeoIP, GeoIP
from router.balancing.settings import RoutingConfig
from router.balancing.sticky import sign_replica
from router.models import Replica

SIZES = (3, 100, 1000)
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1")
COUNTRIES = ("US", "DE", "FR", "GB", "JP", "IN", "BR", "AU", "SG", "CA", "NL", "KR")
KEY = "0123456789abcdef0123456789abcdef"


def make_members(n: int) -> list[Member]:
    return [
        Member(
            Replica(
                id=f"r{i}",
                url=f"http://r{i}.test",
                scheme="http",
                host=f"r{i}.test",
                port=80,
                region=REGIONS[i % len(REGIONS)],
                weight=100,
            ),
            100.0,
            (n + len(REGIONS) - 1) // len(REGIONS),
        )
        for i in range(n)
    ]


ContextMaker = Callable[[int, random.Random], RequestContext]


def plain(i: int, rng: random.Random) -> RequestContext:
    return RequestContext(client_ip="198.51.100.7")


def country(i: int, rng: random.Random) -> RequestContext:
    headers = {"CF-IPCountry": COUNTRIES[i % len(COUNTRIES)]}
    return RequestContext(client_ip="198.51.100.7", headers=headers, peer_trusted=True)


def public_ip(i: int, rng: random.Random) -> RequestContext:
    return RequestContext(client_ip=f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.7.9")


def session(distinct: int) -> ContextMaker:
    def make(i: int, rng: random.Random) -> RequestContext:
        return RequestContext(
            client_ip="198.51.100.7", headers={"X-Session-Id": f"s{i % distinct}"}
        )

    return make


def cookie(n: int) -> ContextMaker:
    values = [sign_replica(KEY.encode(), f"r{i}") for i in range(n)]

    def make(i: int, rng: random.Random) -> RequestContext:
        return RequestContext(
            client_ip="198.51.100.7",
            headers={"Cookie": f"theme=dark; router_replica={values[i % n]}"},
        )

    return make


# (label, routing config, context maker factory taking the replica count)
CASES: list[tuple[str, dict[str, Any], Callable[[int], ContextMaker]]] = [
    ("round_robin", {}, lambda n: plain),
    ("least_request (p2c)", {"policy": "least_request"}, lambda n: plain),
    ("geo, country header", {"policy": "geo"}, lambda n: country),
    ("geo, geoip lookup", {"policy": "geo"}, lambda n: public_ip),
    (
        "geo + least_request within",
        {"policy": "geo", "geo": {"within_region": "least_request"}},
        lambda n: country,
    ),
    ("sticky header, returning keys", {"sticky": {"mode": "header"}}, lambda n: session(1000)),
    (
        "sticky header, new key (maglev)",
        {"sticky": {"mode": "header"}},
        lambda n: session(10**9),
    ),
    (
        "sticky header, new key (ring)",
        {"sticky": {"mode": "header", "hash": "ring"}},
        lambda n: session(10**9),
    ),
    (
        "sticky header, new key (rendezvous)",
        {"sticky": {"mode": "header", "hash": "rendezvous"}},
        lambda n: session(10**9),
    ),
    (
        "sticky cookie, valid cookie",
        {"sticky": {"mode": "cookie", "key_env": "BENCH_KEY"}},
        cookie,
    ),
    (
        "geo + sticky ip (maglev)",
        {"policy": "geo", "sticky": {"mode": "ip"}},
        lambda n: public_ip,
    ),
    (
        "geo + sticky ip (rendezvous)",
        {"policy": "geo", "sticky": {"mode": "ip", "hash": "rendezvous"}},
        lambda n: public_ip,
    ),
]


def measure(
    cfg: dict[str, Any], make_ctx: ContextMaker, n: int, seconds: float, geoip: GeoIP
) -> float:
    """Nanoseconds per pick."""
    routing = RoutingConfig.model_validate(cfg)
    factory = make_picker_factory(
        routing, environ={"BENCH_KEY": KEY}, rng=random.Random(1), geoip=geoip
    )
    members = make_members(n)
    in_flight = {m.replica.id: i % 4 for i, m in enumerate(members)}
    picker = factory(members, in_flight)
    rng = random.Random(2)
    batch = 2000
    # Warm up (plan caches fill, as they do in a running router), then calibrate.
    contexts = [make_ctx(i, rng) for i in range(batch)]
    for context in contexts:
        next(iter(picker.candidates(context)))
    spent, picks, offset = 0.0, 0, batch
    while spent < seconds:
        contexts = [make_ctx(offset + i, rng) for i in range(batch)]
        offset += batch
        started = time.perf_counter()
        for context in contexts:
            next(iter(picker.candidates(context)))
        spent += time.perf_counter() - started
        picks += batch
    return spent / picks * 1e9


def measure_picks(seconds: float, repeat: int) -> list[dict[str, Any]]:
    geoip = FastGeoIP()
    rows: list[dict[str, Any]] = []
    header = f"{'policy':36}" + "".join(f"{f'{n} replicas':>14}" for n in SIZES)
    print(header)
    print("-" * len(header))
    for label, cfg, maker in CASES:
        # The best of `repeat` runs: other processes on a shared machine only add time.
        cells = {
            n: min(measure(cfg, maker(n), n, seconds, geoip) for _ in range(repeat)) for n in SIZES
        }
        rows.append(
            {
                "policy": label,
                "config": cfg,
                "ns_per_pick": {str(n): round(v) for n, v in cells.items()},
            }
        )
        print(f"{label:36}" + "".join(f"{cells[n] / 1000:>11.2f} us" for n in SIZES))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per cell")
    parser.add_argument("--out", type=Path, default=Path("bench/results/selection.json"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the best counts")
    parser.add_argument("--skip-picks", action="store_true", help="only the hash tables")
    parser.add_argument("--skip-tables", action="store_true", help="only the per-pick costs")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "selection cost per request",
        "unit": "ns per pick (first candidate)",
        "sizes": list(SIZES),
        "seconds_per_cell": args.seconds,
        "repeat": args.repeat,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not args.skip_picks:
        result["rows"] = measure_picks(args.seconds, args.repeat)
    if not args.skip_tables:
        result["tables"] = hash_tables.measure_builds()
        result["remapping"] = hash_tables.measure_remapping()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
