"""Process plumbing for the benchmarks: free ports, CPU accounting from /proc, pinning.

CPU use is read from /proc (Linux); elsewhere the CPU columns are simply left empty.
"""

from __future__ import annotations

import os
import resource
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


class CpuWindow:
    """CPU use of watched processes (and their descendants) over a window of samples.

    A process seen for the last time before the window ends (a locust worker that quit
    first) is rated over the time it was seen, so its share is not diluted."""

    def __init__(self) -> None:
        self._start = 0.0
        self._first: dict[str, dict[int, float]] = {}
        self._last: dict[str, dict[int, tuple[float, float]]] = {}  # pid -> (seconds, at)
        self._machine: list[tuple[float, float]] = []
        self.samples = 0

    def sample(self, at: float, watched: Mapping[str, int]) -> None:
        if self.samples == 0:
            self._start = at
        for label, root in watched.items():
            first = self._first.setdefault(label, {})
            last = self._last.setdefault(label, {})
            for pid in descendants(root):
                seconds = process_cpu(pid)
                if seconds is None:
                    continue
                if self.samples == 0:
                    first[pid] = seconds
                last[pid] = (seconds, at)
        machine = machine_cpu()
        if machine is not None:
            self._machine.append(machine)
        self.samples += 1

    def utilisation(self) -> dict[str, dict[str, float]]:
        """Per label: `total` (cores used, 1.0 = one full core) and `busiest` (the busiest
        single process, as a fraction of one core); `machine`: the share of all cores that
        were busy and `others` the cores used by processes not watched."""
        result: dict[str, dict[str, float]] = {}
        if self.samples < 2:
            return result
        for label, last in self._last.items():
            first = self._first.get(label, {})
            rates = [
                max(0.0, seconds - first.get(pid, 0.0)) / (at - self._start)
                for pid, (seconds, at) in last.items()
                if at > self._start
            ]
            result[label] = {
                "total": round(sum(rates), 3),
                "busiest": round(max(rates, default=0.0), 3),
            }
        if len(self._machine) >= 2:
            (busy0, total0), (busy1, total1) = self._machine[0], self._machine[-1]
            if total1 > total0:
                share = (busy1 - busy0) / (total1 - total0)
                cores = float(os.cpu_count() or 1)
                ours = sum(r["total"] for r in result.values())
                result["machine"] = {
                    "total": round(share, 3),
                    "busiest": 0.0,
                    "cores": cores,
                    "others": round(max(0.0, share * cores - ours), 3),
                }
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


def rss_mib() -> float:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
