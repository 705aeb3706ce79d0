"""What several apps cost the data plane and the control plane: 200 apps with 3 replicas each
against one app with 3 replicas.

    python -m bench.apps [--apps 200] [--seconds 0.5] [--repeat 5] [--out bench/results/apps.json]

Per request the engines do `AppDirectory.resolve(host, target, sni)` and then the app's pick,
`next(snapshot.picker.candidates(ctx))`; this times exactly that pair, on prebuilt requests
whose hosts hit exact names, wildcards and path prefixes (the best of `--repeat` runs, the
cases interleaved so machine noise hits each). Three cases: one app routed by the same kinds
of host (the ratio to it says whether the cost is flat in the number of apps), and the
directory every config without `apps:` runs with (no host lookup at all; the ratio to it is
the whole price of host routing). The control-plane side builds each app's snapshot as its reconciler does and
reports the CPU time of one rebuild of every app and the resident memory the apps add.
Absolute numbers drift on shared machines; compare the ratio measured in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.apps.hosts import parse_route
from router.balancing.base import RequestContext
from router.balancing.factory import make_picker_factory
from router.balancing.settings import RoutingConfig
from router.models import Replica
from router.proxy.apps import AppDirectory, AppEntry
from router.proxy.base import InFlightCounter
from router.snapshot import Overrides, Policy, Snapshot, build_snapshot

Request = tuple[str, str, RequestContext]


def app_snapshot(app: int, in_flight: InFlightCounter) -> Snapshot:
    replicas = [
        Replica(
            id=f"a{app}-r{i}",
            url=f"http://a{app}-r{i}.test",
            scheme="http",
            host=f"a{app}-r{i}.test",
            port=80,
        )
        for i in range(3)
    ]
    policy = Policy(picker_factory=make_picker_factory(RoutingConfig(), environ={}))
    return build_snapshot(
        version=1,
        now=0.0,
        replicas=replicas,
        health={},
        verdicts={},
        policy=policy,
        overrides=Overrides(),
        in_flight=in_flight,
        health_enabled=False,
    )


def directory(snapshots: list[Snapshot]) -> AppDirectory:
    """App i answers app-i.example.com, *.app-i.example.com and (for even i) a /v2 prefix."""
    routes = []
    for i, snapshot in enumerate(snapshots):
        entry = AppEntry(f"app-{i}", (lambda s: lambda: s)(snapshot))
        routes += [(parse_route(f"app-{i}.example.com"), entry)]
        routes += [(parse_route(f"*.app-{i}.example.com"), entry)]
        if i % 2 == 0:
            routes += [(parse_route(f"app-{i}.example.com/v2"), entry)]
    return AppDirectory(routes)


def requests(apps: int, count: int = 4096) -> list[Request]:
    made = []
    for n in range(count):
        i = (n * 7919) % apps
        host, target = [
            (f"app-{i}.example.com", "/items"),
            (f"eu.app-{i}.example.com:443", "/items?page=2"),
            (f"app-{i}.example.com", "/v2/users"),
        ][n % 3]
        made.append((host, target, RequestContext("203.0.113.7", "GET", target, {}, False)))
    return made


def per_request(resolve: AppDirectory, reqs: list[Request], seconds: float) -> float:
    """Nanoseconds per request for resolve + first pick."""
    done, spent = 0, 0.0
    while spent < seconds:
        started = time.perf_counter()
        for host, target, ctx in reqs:
            next(resolve.resolve(host, target).snapshots().picker.candidates(ctx))
        spent += time.perf_counter() - started
        done += len(reqs)
    return spent / done * 1e9


def rss_mib() -> float:
    """Resident memory now (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return pages * resource.getpagesize() / 2**20


def control_plane(apps: int) -> dict[str, float]:
    in_flight = InFlightCounter()
    before = rss_mib()
    cpu = time.process_time()
    snapshots = [app_snapshot(i, in_flight) for i in range(apps)]
    build = time.process_time() - cpu
    held = directory(snapshots)
    added = rss_mib() - before
    del held
    return {
        "rebuild_all_apps_ms": build * 1e3,
        "rebuild_one_app_us": build / apps * 1e6,
        "rss_added_mib": added,
        "routes": float(2 * apps + (apps + 1) // 2),
    }


def run(apps: int, seconds: float, repeat: int) -> dict[str, Any]:
    plane = control_plane(apps)  # first, before the cases' allocations hide its memory
    in_flight = InFlightCounter()
    first = app_snapshot(0, in_flight)
    implicit = AppDirectory.single((lambda s: lambda: s)(first))
    one = directory([first])
    many = directory([first] + [app_snapshot(i, in_flight) for i in range(1, apps)])
    cases: dict[str, Callable[[], float]] = {
        "implicit": lambda: per_request(implicit, requests(1), seconds),
        "single": lambda: per_request(one, requests(1), seconds),
        "many": lambda: per_request(many, requests(apps), seconds),
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for name, case in cases.items():
            best[name] = min(best[name], case())
    return {
        "apps": apps,
        "replicas_per_app": 3,
        "ns_per_request_implicit_app": best["implicit"],
        "ns_per_request_single_app": best["single"],
        "ns_per_request_many_apps": best["many"],
        "ratio": best["many"] / best["single"],
        "ratio_to_implicit": best["many"] / best["implicit"],
        "control_plane": plane,
        "python": platform.python_version(),
    }


def table(result: dict[str, Any]) -> str:
    cp = result["control_plane"]
    return "\n".join(
        [
            "| case | ns per request (resolve + pick) |",
            "|---|---|",
            f"| 1 app, no hosts (no apps: key) | {result['ns_per_request_implicit_app']:.0f} |",
            f"| 1 app x 3 replicas, by host | {result['ns_per_request_single_app']:.0f} |",
            f"| {result['apps']} apps x 3 replicas, by host | {result['ns_per_request_many_apps']:.0f} |",
            f"| ratio {result['apps']} apps / 1 app by host | {result['ratio']:.2f} |",
            f"| ratio {result['apps']} apps / no hosts | {result['ratio_to_implicit']:.2f} |",
            "",
            f"control plane, {result['apps']} apps: one rebuild of every snapshot "
            f"{cp['rebuild_all_apps_ms']:.1f} ms CPU ({cp['rebuild_one_app_us']:.0f} us per app), "
            f"{cp['rss_added_mib']:.1f} MiB RSS added, {cp['routes']:.0f} routes",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="bench/results/apps.json")
    args = parser.parse_args(argv)
    result = run(args.apps, args.seconds, args.repeat)
    print(table(result))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
