"""`make bench`: every benchmark, one after the other, results under bench/results/.

    python -m bench.all [--run-time 20] [--backend-rps 200] [--price-per-replica-hour P]
                        [--skip-proxy]

1. The scaling sweep on the simulator at 1, 2, 4, 8 replicas (each 4 concurrent x 50 ms =
   80 req/s), first without and then with a shared backend capped at --backend-rps: the
   first should scale near-linearly, the second saturate at the backend's rate, which is
   what Phala's docs warn about. Both land in scaling_sim.{md,json,csv,png}.
2. `python -m bench.proxy` (router vs nginx/HAProxy with wrk), when that module exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.report import markdown, write_all
from bench.scaling import RESULTS, SweepOptions, progress_for, run_sweep
from bench.targets import TargetError


def scaling_sweeps(
    run_time: float, backend_rps: float, out: Path, progress: bool, price: float | None
) -> int:
    sweeps = []
    for label, backend in (
        ("no shared backend", None),
        (f"shared backend {backend_rps:g} req/s", backend_rps),
    ):
        options = SweepOptions(
            run_time=run_time, backend_rps=backend, label=label, price_per_replica_hour=price
        )
        try:
            with progress_for(options, progress) as reporter:
                sweeps.append(run_sweep(options, reporter))
        except TargetError as exc:
            print(f"bench.all: scaling sweep ({label}) failed: {exc}", file=sys.stderr)
            return 1
    paths = write_all(sweeps, out, "scaling_sim")
    print("\n\n".join(markdown(s) for s in sweeps))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def proxy_benchmark() -> int:
    if importlib.util.find_spec("bench.proxy") is None:
        print("bench.all: bench/proxy.py is not there yet; skipping the proxy comparison")
        return 0
    return subprocess.call([sys.executable, "-m", "bench.proxy"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__)
    parser.add_argument("--run-time", type=float, default=20.0, help="seconds per point")
    parser.add_argument("--backend-rps", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--price-per-replica-hour", type=float, help="adds $ per M requests")
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.run_time <= 0 or args.backend_rps <= 0:
        parser.error("--run-time and --backend-rps must be > 0")
    price = args.price_per_replica_hour
    if price is not None and price < 0:
        parser.error("--price-per-replica-hour must be >= 0")
    status = scaling_sweeps(args.run_time, args.backend_rps, args.out, args.progress, price)
    if not args.skip_proxy:
        status = proxy_benchmark() or status
    return status


if __name__ == "__main__":
    sys.exit(main())
