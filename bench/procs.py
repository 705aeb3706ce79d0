"""Process plumbing for the benchmarks: free ports, CPU accounting from /proc, pinning.

CPU use is read from /proc (Linux); elsewhere the CPU columns are simply left empty.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    """An ephemeral port that was free a moment ago (the sweep's children bind it next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(command: Sequence[str], cores: str | None) -> list[str]:
    """`taskset -c CORES command` when asked for and available; the command as is otherwise."""
    if cores is None or shutil.which("taskset") is None:
        return list(command)
    return ["taskset", "-c", cores, *command]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (locust's forked workers), from /proc."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        for task in (PROC / str(current) / "task").glob("*/children"):
            try:
                found.extend(int(child) for child in task.read_text().split())
            except (OSError, ValueError):
                continue
    return found


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) one process has used so far; None once it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    try:
        first = (PROC / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return float(total - idle), float(total)


class CpuSample:
    """CPU seconds of watched processes (and their descendants) at one instant."""

    def __init__(self, at: float, watched: Mapping[str, int]) -> None:
        self.at = at
        self.per_pid: dict[str, dict[int, float]] = {}
        for label, root in watched.items():
            usage: dict[int, float] = {}
            for pid in descendants(root):
                seconds = process_cpu(pid)
                if seconds is not None:
                    usage[pid] = seconds
            self.per_pid[label] = usage
        self.machine = machine_cpu()


def utilisation(first: CpuSample, last: CpuSample) -> dict[str, dict[str, float]]:
    """Per label: `total` (cores used, 1.0 = one full core) and `busiest` (the busiest single
    process, as a fraction of one core) between two samples; `machine` the share of all
    cores that were busy."""
    wall = last.at - first.at
    result: dict[str, dict[str, float]] = {}
    if wall <= 0:
        return result
    for label, after in last.per_pid.items():
        before = first.per_pid.get(label, {})
        deltas = [max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items()]
        result[label] = {
            "total": round(sum(deltas) / wall, 3),
            "busiest": round(max(deltas, default=0.0) / wall, 3),
        }
    if first.machine and last.machine:
        busy = last.machine[0] - first.machine[0]
        total = last.machine[1] - first.machine[1]
        if total > 0:
            result["machine"] = {"total": round(busy / total, 3), "busiest": 0.0}
    return result


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: only ever the processes we started."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def all_alive(procs: Iterable[subprocess.Popen[str]]) -> bool:
    return all(p.poll() is None for p in procs)
