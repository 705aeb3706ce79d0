"""`bench.profile_proxy`'s summary of py-spy's raw stacks: the shares it prints are of the
busy samples (idle time in the event loop's poll left out), inclusive and self. The
profiling run itself needs py-spy and ptrace rights; a smoke run does it when both exist."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import profile_proxy

# py-spy --format raw: one stack per line, root first, then the sample count.
RAW = """\
main (bench/proxy.py:1);run (uvloop/__init__.py:92);uv__io_poll (linux.c:1546) 50
main (bench/proxy.py:1);run (uvloop/__init__.py:92);Exchange.start (router/proxy/fast/exchange.py:109) 30
main (bench/proxy.py:1);run (uvloop/__init__.py:92);Exchange.start (router/proxy/fast/exchange.py:120);request_id (router/proxy/headers.py:104) 10
main (bench/proxy.py:1);run (uvloop/__init__.py:92);writev (libc.so.6) 10
not a stack line
"""


def test_summary_counts_busy_samples_only_and_merges_lines_of_one_function() -> None:
    total, idle, rows = profile_proxy.summarise(RAW)
    assert (total, idle) == (100, 50)
    shares = {name: (incl, own) for name, incl, own in rows}
    # 50 busy samples: start is on 40 of them (two lines merged), at the top of 30.
    assert shares["Exchange.start (exchange.py)"] == pytest.approx((80.0, 60.0))
    assert shares["request_id (headers.py)"] == pytest.approx((20.0, 20.0))
    assert shares["writev (libc.so.6)"] == pytest.approx((20.0, 20.0))
    # Frames on every busy stack (the loop itself) say nothing and are left out.
    assert "run (__init__.py)" not in shares


def test_markdown_reports_idle_share_and_a_row_per_function() -> None:
    text = profile_proxy.report_markdown("title", RAW)
    assert "100 samples, 50 idle in the event loop's poll (50%)" in text
    assert "| `Exchange.start (exchange.py)` | 80.0 | 60.0 |" in text


@pytest.mark.skipif(
    profile_proxy.py_spy() is None
    or any(shutil.which(t) is None for t in ("nginx", "wrk", "taskset")),
    reason="needs py-spy (bench extra), nginx, wrk and taskset",
)
@pytest.mark.timeout(120)
def test_profiling_run_writes_stacks_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profile_proxy, "RESULTS", tmp_path)
    probe = subprocess.run(
        [str(profile_proxy.py_spy()), "dump", "--pid", str(os.getpid())],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"py-spy cannot attach here (ptrace not permitted): {probe.stderr[-200:]!r}")
    profile_proxy.main(["--target", "fast-pure", "--seconds", "1", "--rate", "100"])
    summaries = list(tmp_path.glob("pyspy-fast-pure-small-*.md"))
    assert len(summaries) == 1
    assert "idle in the event loop's poll" in summaries[0].read_text()
    assert summaries[0].with_suffix(".txt").stat().st_size > 0
