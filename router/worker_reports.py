"""With `proxy.workers > 1`, /metrics and /status count every worker, not worker 0 alone.

How: each other worker sends worker 0 a report once a second over a pipe (one JSON line:
its metric families, per-replica request totals and in-flight counts), and worker 0 merges
the latest report of each worker into what it serves. Counters and histograms are summed
by series; gauges that describe the shared routing view (replica states, panic, routable
count, snapshot version) are worker 0's own, since every worker reaches the same view.

Why reports and not prometheus-client's multiprocess mode: that mode only handles
prometheus-client's own metric objects (one memory-mapped file per process and metric),
while the router keeps plain counters on the request path and builds families at scrape
time with a custom collector, which multiprocess mode cannot aggregate. It would also need
a shared directory cleaned up on every start, and it cannot carry /status' per-replica
rates. The reports reuse the pipes workers already have, cost one small write per second
off the request path, and a report is at most a second old.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from router.workers import WorkerLink

log = logging.getLogger(__name__)

REPORT_INTERVAL = 1.0
_MAX_BUFFERED = 4 * 1024 * 1024  # worker 0 not reading: drop reports rather than grow
# Families whose samples add up across workers; the rest are worker 0's own.
SUMMED_PREFIXES = (
    "router_requests",
    "router_request_duration_seconds",
    "router_request_total_duration_seconds",
    "router_upstream_errors",
    "router_health_checks",
    "router_health_check_duration_seconds",
    "router_ejections",
    "router_attestation_verdicts",
    "router_retries",
    "router_discovery_refresh",
    "router_in_flight_requests",
    "router_client_",
    "router_failed_requests",
    "router_overload_rejections",
)
SUMMED_PROCESS = frozenset(
    {
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
    }
)


def summed(name: str) -> bool:
    return name in SUMMED_PROCESS or name.startswith(SUMMED_PREFIXES)


def encode_report(
    families: Iterable[Metric],
    totals: Mapping[str, tuple[int, int]],
    in_flight: Mapping[str, int],
) -> bytes:
    """One report line: only the families worker 0 adds up."""
    encoded = [
        [f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]]
        for f in families
        if summed(f.name)
    ]
    message = {"families": encoded, "totals": totals, "in_flight": dict(in_flight)}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class Report:
    """The latest report of one worker."""

    def __init__(self, message: Mapping[str, Any]) -> None:
        self.families: list[Metric] = []
        for name, kind, documentation, samples in message["families"]:
            family = Metric(name, documentation, kind)
            family.samples = [Sample(n, labels, value) for n, labels, value in samples]
            self.families.append(family)
        self.totals: dict[str, tuple[int, int]] = {
            rid: (n, e) for rid, (n, e) in message["totals"].items()
        }
        self.in_flight: dict[str, int] = dict(message["in_flight"])


def merge_families(own: Iterable[Metric], reports: Iterable[Report]) -> list[Metric]:
    """Worker 0's families with every summed series added up over the reports."""
    merged = list(own)
    by_name = {f.name: f for f in merged}
    for report in reports:
        for theirs in report.families:
            mine = by_name.get(theirs.name)
            if mine is None:
                mine = by_name[theirs.name] = Metric(theirs.name, theirs.documentation, theirs.type)
                merged.append(mine)
            index = {
                (s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(mine.samples)
            }
            for sample in theirs.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                at = index.get(key)
                if at is None:
                    index[key] = len(mine.samples)
                    mine.samples.append(sample)
                else:
                    old = mine.samples[at]
                    mine.samples[at] = Sample(old.name, old.labels, old.value + sample.value)
    return merged


class ReportInbox:
    """Worker 0's side: the latest report from each other worker."""

    def __init__(self) -> None:
        self.reports: dict[int, Report] = {}
        self._buffers: dict[int, bytes] = {}

    def listen(self, fds: Mapping[int, int]) -> None:
        """Read reports from `fds` (worker index -> read end of its report pipe)."""
        loop = asyncio.get_running_loop()
        for index, fd in fds.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._readable, index, fd)

    def _readable(self, index: int, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:  # that worker is gone: its counts go with it
            asyncio.get_running_loop().remove_reader(fd)
            self.reports.pop(index, None)
            return
        *lines, self._buffers[index] = (self._buffers.get(index, b"") + data).split(b"\n")
        if lines:
            try:
                self.reports[index] = Report(json.loads(lines[-1]))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("worker %d sent an unreadable report: %s", index, exc)

    def close(self, fds: Iterable[int]) -> None:
        loop = asyncio.get_running_loop()
        for fd in fds:
            loop.remove_reader(fd)

    def totals(self) -> list[dict[str, tuple[int, int]]]:
        return [r.totals for r in self.reports.values()]

    def in_flight(self) -> list[dict[str, int]]:
        return [r.in_flight for r in self.reports.values()]


def start_reports(
    link: WorkerLink,
    report_line: Callable[[], bytes],
    spawn: Callable[[Coroutine[Any, Any, None]], None],
) -> ReportInbox | None:
    """A worker > 0 starts sending its reports (None); worker 0 of several starts reading
    theirs (the inbox its metrics merge); a single process does neither (None)."""
    if link.report_out is not None:
        spawn(send_reports(link.report_out, report_line))
    elif link.report_ins:
        inbox = ReportInbox()
        inbox.listen(link.report_ins)
        return inbox
    return None


async def send_reports(fd: int, report: Callable[[], bytes]) -> None:
    """Another worker's side: write `report()` to worker 0 every REPORT_INTERVAL."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", 0))
    try:
        while True:
            if transport.is_closing():
                return
            if transport.get_write_buffer_size() < _MAX_BUFFERED:
                transport.write(report())
            await asyncio.sleep(REPORT_INTERVAL)
    finally:
        transport.close()
