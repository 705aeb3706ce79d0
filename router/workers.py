"""Worker processes (`proxy.workers`): several full routers sharing one listener.

Each worker is a whole router (its own event loop, discovery, health checks, snapshots and
upstream pools) and the kernel spreads connections over them with SO_REUSEPORT. Nothing on
the request path is shared, so nothing needs locks or IPC per request. What must agree
across workers is what an operator changes at run time: worker 0 alone serves the admin
listener and forwards every override (drain, active limit; with `apps:`, naming the app) to
the others over a pipe. In
the other direction, each worker reports its counters to worker 0 once a second over a
second pipe, so /metrics and /status count all workers (see `router.worker_reports`).

Why not a leader that builds snapshots for the workers: a snapshot carries its picker, and
a picker carries per-process state (round-robin cursor, in-flight counts), so the workers
would rebuild them anyway; the leader would only save N-1 copies of discovery and health
probes, which cost a few requests per replica per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from router.config import RouterConfig
from router.snapshot import Overrides

log = logging.getLogger(__name__)


def worker_count(config: RouterConfig) -> int:
    """`proxy.workers`: a number, or auto = the CPU cores this process may run on."""
    workers = config.proxy.workers
    if workers == "auto":
        return max(len(os.sched_getaffinity(0)), 1)
    return workers


def warn_if_unsupervised(workers: int, link: WorkerLink) -> None:
    """Say so when proxy.workers asks for several processes but this one runs alone."""
    if workers > 1 and link.count == 1:
        log.warning(
            "proxy.workers is %d but this process was not started by "
            "router.workers.run_workers: serving with one process",
            workers,
        )


@dataclass
class WorkerLink:
    """One worker's place among the others. Worker 0 publishes overrides; the others
    listen for them."""

    index: int = 0
    count: int = 1
    inbox: int | None = None  # read end of the pipe from worker 0
    outboxes: tuple[int, ...] = ()  # worker 0: write ends, one per other worker
    report_out: int | None = None  # the others: write end of their report pipe to worker 0
    report_ins: dict[int, int] = field(default_factory=dict)  # worker 0: index -> read end
    _buffer: bytes = b""

    @property
    def serves_admin(self) -> bool:
        return self.index == 0

    def publish(self, overrides: Overrides, app: str | None = None) -> None:
        """Send `overrides` to the other workers; `app`: of that app (`apps:`), None: of the
        primary (or only) app."""
        message: dict[str, object] = {
            "drained": sorted(overrides.drained),
            "active_limit": overrides.active_limit,
        }
        if app is not None:
            message["app"] = app
        line = json.dumps(message).encode()
        for fd in self.outboxes:
            try:
                os.write(fd, line + b"\n")
            except OSError as exc:  # that worker is gone; the others still get it
                log.warning("could not forward overrides to a worker: %s", exc)

    def listen(
        self,
        apply: Callable[[Overrides], None],
        apply_to_app: Callable[[str, Overrides], None] | None = None,
    ) -> None:
        """Apply what worker 0 publishes: the primary app's overrides with `apply`, another
        app's with `apply_to_app(name, overrides)`."""
        if self.inbox is None:
            return
        inbox = self.inbox
        os.set_blocking(inbox, False)

        def readable() -> None:
            try:
                data = os.read(inbox, 65536)
            except BlockingIOError:
                return
            if not data:  # worker 0 is gone
                asyncio.get_running_loop().remove_reader(inbox)
                return
            *lines, self._buffer = (self._buffer + data).split(b"\n")
            for line in lines:
                message = json.loads(line)
                overrides = Overrides(frozenset(message["drained"]), message["active_limit"])
                app = message.get("app")
                if app is None:
                    apply(overrides)
                elif apply_to_app is not None:
                    apply_to_app(app, overrides)

        asyncio.get_running_loop().add_reader(inbox, readable)

    def close(self) -> None:
        if self.inbox is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self.inbox)


def run_workers(count: int, run_one: Callable[[WorkerLink], object]) -> None:
    """Run `run_one(link)` in `count` processes. Worker 0 is this process; when it returns
    it stops the others (SIGTERM: they drain like a single router would).

    Call before any event loop exists, so the children start from a clean fork."""
    if count <= 1:
        run_one(WorkerLink())
        return
    pipes = [os.pipe() for _ in range(count - 1)]
    reports = [os.pipe() for _ in range(count - 1)]  # worker i -> worker 0
    children: list[int] = []
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                for i, ((read, write), (report_read, report_write)) in enumerate(
                    zip(pipes, reports, strict=True)
                ):
                    os.close(write)
                    os.close(report_read)
                    if i != index - 1:
                        os.close(read)
                        os.close(report_write)
                run_one(
                    WorkerLink(
                        index,
                        count,
                        inbox=pipes[index - 1][0],
                        report_out=reports[index - 1][1],
                    )
                )
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    for read, _ in pipes:
        os.close(read)
    for _, report_write in reports:
        os.close(report_write)
    try:
        run_one(
            WorkerLink(
                0,
                count,
                outboxes=tuple(write for _, write in pipes),
                report_ins={i + 1: read for i, (read, _) in enumerate(reports)},
            )
        )
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for _, write in pipes:
            with contextlib.suppress(OSError):
                os.close(write)
        for read, _ in reports:
            with contextlib.suppress(OSError):
                os.close(read)
