"""Worker processes: overrides made on worker 0 reach the others; workers fork and stop."""

from __future__ import annotations

import os
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
    def run_one(link: WorkerLink) -> None:
        (tmp_path / f"worker-{link.index}").write_text(str(link.count))
        if link.index == 0:
            # Worker 0 returns only once the others have started (deadline, not a sleep).
            deadline = time.monotonic() + 10
            while not all((tmp_path / f"worker-{i}").exists() for i in (1, 2)):
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.01)
        else:
            time.sleep(30)  # stopped by SIGTERM from worker 0

    started = time.monotonic()
    run_workers(3, run_one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-0", "worker-1", "worker-2"]
    assert time.monotonic() - started < 10
