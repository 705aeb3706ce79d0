"""Scaling sweep: the same locust load at 1, 2, 4, 8... replicas; how throughput really scales.

    python -m bench.scaling                                   # simulated, no shared backend
    python -m bench.scaling --backend-rps 200                 # a database every replica shares
    python -m bench.scaling --target https://app.example.com --admin http://127.0.0.1:9090 \\
        --admin-token-env PHALA_ROUTER_ADMIN_TOKEN --replicas 1,2,3 --price-per-replica-hour 0.10

Simulated: starts the simulator (N replicas, each serving at most --capacity requests at
once for --latency-ms each, optionally a shared backend capped at --backend-rps) and the
router in front of it, each in its own process. Live: any running phala-router. Either
way each count is set with the router's `POST /admin/active-limit`, so a real deployment is
measured at 1..N replicas without redeploying; the original limit is restored at the end.

Prints a Markdown table (stdout) and writes NAME.json/.csv/.png/.md under --out.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from bench.analysis import (
    Point,
    Sweep,
    finish,
    limited_by,
    load_flags,
    model_rps,
    tagged_counts,
)
from bench.loadgen import Load, run_locust
from bench.procs import cpu_count
from bench.report import environment, markdown, write_all
from bench.targets import LiveTarget, SimulatedTarget, TargetError, simulated_workdir

RESULTS = Path(__file__).with_name("results")
# The locustfile's scenarios (not imported from it: importing locust monkey-patches sockets).
SCENARIOS = ("small", "post", "slow", "mix")
LOCUST_RPS_PER_PROCESS = 3000  # well under the ~7k/s one FastHttpUser process reaches here


@dataclass
class SweepOptions:
    counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    users: int | None = None  # None: twice the slots of the largest simulated count, or 64
    spawn_rate: float | None = None  # None: all users within a second
    run_time: float = 20.0
    processes: int | None = None  # None: chosen from the expected rate, raised if locust lags
    scenario: str = "small"
    think_ms: float = 0.0
    # simulated target
    capacity: int = 4
    latency_ms: float = 50.0
    backend_rps: float | None = None
    pin: bool = True
    # live target
    target: str | None = None
    admin: str | None = None
    admin_token_env: str | None = None
    price_per_replica_hour: float | None = None
    label: str | None = None
    workdir: Path | None = None

    @property
    def kind(self) -> str:
        return "live" if self.target else "simulated"

    def resolved_users(self) -> int:
        if self.users is not None:
            return self.users
        if self.kind == "simulated":
            return max(4, 2 * self.capacity * max(self.counts))
        return 64

    def model(self, count: int) -> float | None:
        # Only where every request costs the replica's service time: `slow` adds its own.
        if self.kind != "simulated" or self.scenario not in ("small", "post"):
            return None
        return model_rps(count, self.capacity, self.latency_ms, self.backend_rps)


Reporter = Callable[[str, int, float, float | None], None]  # (phase, count, elapsed, rps)


class RichProgress:
    """A live line per replica count on stderr: elapsed time and the current req/s."""

    def __init__(self, label: str, counts: Sequence[int], run_time: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[rps]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._tasks = {
            n: self._progress.add_task(
                f"{label}: {n} replica(s)", total=run_time, rps="waiting", start=False
            )
            for n in counts
        }

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, phase: str, count: int, elapsed: float, rps: float | None) -> None:
        task = self._tasks[count]
        self._progress.start_task(task)  # a no-op once started: the clock starts now
        text = f"{rps:,.0f} req/s" if rps is not None else phase
        self._progress.update(task, completed=elapsed, rps=text)


def _target(options: SweepOptions, workdir: Path) -> LiveTarget:
    if options.target:
        if not options.admin:
            raise TargetError("--target needs --admin (the router's admin URL) to set counts")
        token = None
        if options.admin_token_env:
            token = os.environ.get(options.admin_token_env)
            if not token:
                raise TargetError(
                    f"--admin-token-env: environment variable {options.admin_token_env} "
                    "is not set or empty"
                )
        return LiveTarget(options.target, options.admin, token)
    return SimulatedTarget(
        replicas=max(options.counts),
        capacity=options.capacity,
        latency_ms=options.latency_ms,
        backend_rps=options.backend_rps,
        pin=options.pin and cpu_count() >= 2,
        workdir=workdir,
    )


def _initial_processes(options: SweepOptions) -> int:
    if options.processes is not None:
        return options.processes
    expected = options.model(max(options.counts))
    if expected is None:
        return 1
    return max(1, min(cpu_count(), math.ceil(expected / LOCUST_RPS_PER_PROCESS)))


def run_sweep(options: SweepOptions, reporter: Reporter | None = None) -> Sweep:
    users = options.resolved_users()
    settings = {
        "counts": options.counts,
        "users": users,
        "spawn_rate": options.spawn_rate or users,
        "run_time": options.run_time,
        "scenario": options.scenario,
        "think_ms": options.think_ms,
    }
    if options.kind == "simulated":
        settings |= {
            "capacity": options.capacity,
            "latency_ms": options.latency_ms,
            "backend_rps": options.backend_rps,
        }
    else:
        settings |= {"url": options.target, "admin": options.admin}
    label = options.label or (
        f"{options.kind}, backend {options.backend_rps:g} req/s"
        if options.backend_rps
        else f"{options.kind}"
    )
    sweep = Sweep(label, options.kind, settings, [], environment=environment())
    processes = _initial_processes(options)
    adaptive = options.processes is None
    workdir = options.workdir or simulated_workdir()
    target = _target(options, workdir)
    try:
        target.open()
        available = target.max_replicas
        too_many = [n for n in options.counts if n > available]
        if too_many:
            raise TargetError(
                f"--replicas {','.join(map(str, too_many))}: the router has only "
                f"{available} replica(s) that can take traffic"
            )
        for count in sorted(options.counts):
            while True:
                point = _measure(target, count, options, users, processes, workdir, reporter)
                lagging = any("load generator" in f for f in point.flags)
                if adaptive and lagging and processes < cpu_count():
                    processes = min(cpu_count(), processes * 2)  # and measure again
                    continue
                break
            sweep.points.append(point)
    finally:
        target.close()
    if options.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)  # kept on failure: the logs say why
    sweep.settings["locust_processes"] = processes
    sweep.knee = finish(sweep.points, options.price_per_replica_hour)
    return sweep


def _measure(
    target: LiveTarget,
    count: int,
    options: SweepOptions,
    users: int,
    processes: int,
    workdir: Path,
    reporter: Reporter | None,
) -> Point:
    if reporter:
        reporter("activating", count, 0.0, None)
    target.activate(count)
    load = Load(
        users=users,
        spawn_rate=options.spawn_rate or users,
        run_time=options.run_time,
        processes=processes,
        scenario=options.scenario,
        think_ms=options.think_ms,
    )
    before = target.served()

    def tick(elapsed: float, rps: float | None) -> None:
        if reporter:
            reporter("starting locust", count, min(elapsed, options.run_time), rps)

    run = run_locust(
        target.url, load, workdir / f"locust-{count}", watch=target.pids, progress=tick
    )
    after = target.served()
    if run.latency.requests == 0:
        raise TargetError(
            f"locust sent no requests at {count} replica(s) (exit {run.exit_code}):\n{run.log_tail}"
        )
    per_replica, counted_by = {}, ""
    if before is not None and after is not None:
        per_replica = {
            rid: after[rid] - before.get(rid, 0)
            for rid in after
            if after[rid] - before.get(rid, 0) > 0
        }
        counted_by = target.served_by
    if not per_replica:
        per_replica = tagged_counts(run.entries)
        counted_by = "locust (responses naming their replica)" if per_replica else ""
    point = Point(
        replicas=count,
        latency=run.latency,
        locust_processes=processes,
        cpu=run.cpu,
        per_replica=per_replica,
        per_replica_from=counted_by,
        by_name={str(e["name"]): int(e["num_requests"]) for e in run.entries},
        model_rps=options.model(count),
    )
    point.flags = load_flags(point, users, options.think_ms)
    point.limited_by = limited_by(point, options.backend_rps)
    return point


def parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected replica counts like 1,2,4,8"
        ) from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: replica counts must be >= 1")
    return counts


def build_parser(prog: str = "python -m bench.scaling") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--replicas", type=parse_counts, default=[1, 2, 4, 8], help="e.g. 1,2,4,8")
    p.add_argument("--users", type=int, help="locust users (default: 2 x capacity x max count)")
    p.add_argument("--spawn-rate", type=float, help="users started per second (default: all)")
    p.add_argument("--run-time", type=float, default=20.0, help="seconds per replica count")
    p.add_argument("--locust-processes", type=int, help="locust workers (default: automatic)")
    p.add_argument("--scenario", choices=SCENARIOS, default="small")
    p.add_argument("--think-ms", type=float, default=0.0, help="wait between a user's requests")
    sim = p.add_argument_group("simulated target (the default)")
    sim.add_argument("--capacity", type=int, default=4, help="concurrent requests per replica")
    sim.add_argument("--latency-ms", type=float, default=50.0, help="service time per request")
    sim.add_argument("--backend-rps", type=float, help="shared backend cap (req/s)")
    sim.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    live = p.add_argument_group("live target")
    live.add_argument("--target", help="the router's URL, e.g. https://app.example.com")
    live.add_argument("--admin", help="the router's admin URL, e.g. http://127.0.0.1:9090")
    live.add_argument("--admin-token-env", help="env variable holding the admin token")
    p.add_argument("--price-per-replica-hour", type=float, help="adds $ per million requests")
    p.add_argument("--label", help="name of this sweep in the table and plot")
    p.add_argument(
        "--repeat", type=int, default=1, help="run the sweep N times; the plot shows the spread"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the result files")
    p.add_argument("--name", help="file name stem (default: scaling_<target>)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SweepOptions:
    positive = {
        "--users": args.users,
        "--locust-processes": args.locust_processes,
        "--capacity": args.capacity,
    }
    for flag, value in positive.items():
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1")
    for flag, number in {
        "--run-time": args.run_time,
        "--spawn-rate": args.spawn_rate,
        "--backend-rps": args.backend_rps,
    }.items():
        if number is not None and number <= 0:
            parser.error(f"{flag} must be > 0")
    if args.latency_ms < 0 or args.think_ms < 0:
        parser.error("--latency-ms and --think-ms must be >= 0")
    if args.price_per_replica_hour is not None and args.price_per_replica_hour < 0:
        parser.error("--price-per-replica-hour must be >= 0")
    if args.admin and not args.target:
        parser.error("--admin needs --target (the router URL the load goes to)")
    return SweepOptions(
        counts=args.replicas,
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        processes=args.locust_processes,
        scenario=args.scenario,
        think_ms=args.think_ms,
        capacity=args.capacity,
        latency_ms=args.latency_ms,
        backend_rps=args.backend_rps,
        pin=args.pin,
        target=args.target,
        admin=args.admin,
        admin_token_env=args.admin_token_env,
        price_per_replica_hour=args.price_per_replica_hour,
        label=args.label,
    )


def progress_for(options: SweepOptions, enabled: bool) -> AbstractContextManager[Reporter | None]:
    if not enabled:
        return nullcontext(None)
    label = options.label or options.kind
    return RichProgress(label, options.counts, options.run_time)


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench.scaling") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    options = options_from(args, parser)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    sweeps = []
    try:
        for _ in range(args.repeat):
            with progress_for(options, args.progress) as reporter:
                sweeps.append(run_sweep(options, reporter))
    except TargetError as exc:
        print(f"bench.scaling: {exc}", file=sys.stderr)
        return 1
    paths = write_all(sweeps, args.out, args.name or f"scaling_{options.kind}")
    print("\n\n".join(markdown(sweep) for sweep in sweeps))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
