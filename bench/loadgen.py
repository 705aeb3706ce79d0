"""One headless locust run against a URL, with the CPU of chosen processes sampled meanwhile.

Locust runs as a subprocess (`--processes N` forks N workers under a master), writes its
final stats with `--json-file` (per request name: counts and the latency histogram) and
its live history with `--csv`, which feeds the progress display while it runs.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.analysis import Latency, summarise
from bench.procs import CpuWindow, free_port

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
TICK = 0.5  # seconds between CPU samples and progress updates


@dataclass(frozen=True)
class Load:
    users: int = 64
    spawn_rate: float = 64.0
    run_time: float = 20.0  # seconds, after which locust stops
    processes: int = 1  # locust worker processes; 1 = a single process
    scenario: str = "small"
    think_ms: float = 0.0
    env: Mapping[str, str] = field(default_factory=dict)  # more BENCH_* settings


@dataclass
class LocustRun:
    latency: Latency
    entries: list[dict[str, Any]]  # locust's per-name stats (per-replica names included)
    cpu: dict[str, dict[str, float]]  # label -> utilisation over the steady part of the run
    exit_code: int
    log_tail: str


Progress = Callable[[float, float | None], None]  # (elapsed seconds, live rps or None)


def locust_command(host: str, load: Load, prefix: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        host,
        "--headless",
        "--users",
        str(load.users),
        "--spawn-rate",
        str(load.spawn_rate),
        "--run-time",
        f"{max(1, round(load.run_time))}s",
        "--stop-timeout",
        "2",
        "--reset-stats",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
        "--csv",
        str(prefix),
        "--json-file",
        str(prefix),
    ]
    if load.processes > 1:
        # A port of our own: another locust (someone else's sweep) may hold the default.
        port = str(free_port())
        command += ["--processes", str(load.processes), "--master-bind-host", "127.0.0.1"]
        command += ["--master-bind-port", port, "--master-host", "127.0.0.1", "--master-port", port]
    return command


def _live_rps(history: Path, users: int) -> tuple[float | None, bool]:
    """The last aggregated rps locust wrote, and whether all users were running then."""
    try:
        with history.open(newline="") as file:
            rows = [r for r in csv.DictReader(file) if r.get("Name") == "Aggregated"]
    except OSError:
        return None, False
    if not rows:
        return None, False
    last = rows[-1]
    try:
        return float(last["Requests/s"]), int(last["User Count"]) >= users
    except (KeyError, ValueError):
        return None, False


def run_locust(
    host: str,
    load: Load,
    workdir: Path,
    *,
    watch: Mapping[str, int] | None = None,
    progress: Progress | None = None,
) -> LocustRun:
    """Runs the load once; CPU of `watch` (label -> pid) and of locust itself is averaged
    from the moment all users run until locust stops."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = workdir / "locust"
    for stale in workdir.glob("locust*"):
        stale.unlink()
    env = {
        **os.environ,
        "BENCH_SCENARIO": load.scenario,
        "BENCH_WAIT_MS": str(round(load.think_ms)),
        **load.env,
    }
    log_path = workdir / "locust.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            locust_command(host, load, prefix),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        start = time.monotonic()
        window = CpuWindow()
        spawned_at: float | None = None
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - start
                rps, spawned = _live_rps(prefix.with_name("locust_stats_history.csv"), load.users)
                # Samples count once every user runs until locust starts stopping; the CSV
                # says so up to a second late, hence the margin at the end.
                if spawned and spawned_at is None:
                    spawned_at = elapsed
                if spawned_at is not None and elapsed <= spawned_at + load.run_time - 1.0:
                    window.sample(time.monotonic(), {"locust": proc.pid, **(watch or {})})
                if progress is not None:
                    progress(elapsed, rps)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(TICK)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    entries = _entries(prefix.with_suffix(".json"))
    cpu = window.utilisation()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    return LocustRun(summarise(entries), entries, cpu, proc.returncode, tail)


def _entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
