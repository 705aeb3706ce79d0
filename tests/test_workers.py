"""Worker processes: overrides made on worker 0 reach the others; workers fork and stop."""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

from router.snapshot import Overrides
from router.workers import WorkerLink, run_workers
from tests.support import eventually


async def test_overrides_published_by_worker_0_reach_another_worker() -> None:
    read, write = os.pipe()
    leader = WorkerLink(0, 2, outboxes=(write,))
    follower = WorkerLink(1, 2, inbox=read)
    received: list[Overrides] = []
    follower.listen(received.append)
    try:
        leader.publish(Overrides(frozenset({"b", "a"}), 3))
        leader.publish(Overrides(frozenset(), None))
        await eventually(lambda: len(received) == 2)
    finally:
        follower.close()
        os.close(read)
        os.close(write)
    assert received == [Overrides(frozenset({"a", "b"}), 3), Overrides(frozenset(), None)]
    assert leader.serves_admin
    assert not follower.serves_admin


def test_run_workers_runs_each_index_once_and_stops_the_others(tmp_path: Path) -> None:
    ready_read, ready_write = os.pipe()

    def run_one(link: WorkerLink) -> None:
        (tmp_path / f"worker-{link.index}").write_text(str(link.count))
        if link.index == 0:
            # Worker 0 returns once both others reported in (waiting on the pipe, bounded).
            reported = b""
            deadline = time.monotonic() + 10
            while len(reported) < 2:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "workers did not start"
                readable, _, _ = select.select([ready_read], [], [], remaining)
                if readable:
                    reported += os.read(ready_read, 2)
        else:
            os.write(ready_write, b"x")
            signal.pause()  # until worker 0 stops us with SIGTERM

    started = time.monotonic()
    try:
        run_workers(3, run_one)
    finally:
        os.close(ready_read)
        os.close(ready_write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-0", "worker-1", "worker-2"]
    assert time.monotonic() - started < 10


async def test_another_apps_overrides_reach_another_worker_by_name() -> None:
    read, write = os.pipe()
    leader = WorkerLink(0, 2, outboxes=(write,))
    follower = WorkerLink(1, 2, inbox=read)
    primary: list[Overrides] = []
    by_app: list[tuple[str, Overrides]] = []
    follower.listen(primary.append, lambda app, overrides: by_app.append((app, overrides)))
    try:
        leader.publish(Overrides(frozenset({"ui-0"}), None), "ui")
        leader.publish(Overrides(frozenset({"api-1"}), 2))
        await eventually(lambda: len(primary) + len(by_app) == 2)
    finally:
        follower.close()
        os.close(read)
        os.close(write)
    assert by_app == [("ui", Overrides(frozenset({"ui-0"}), None))]
    assert primary == [Overrides(frozenset({"api-1"}), 2)]
