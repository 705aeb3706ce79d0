"""Smoke run of `bench.proxy`: one short round, to check the table and result files come out
well formed for the pure and (when installed) compiled builds. Measures nothing: the real
run is `python -m bench.proxy` (bench/README.md), and no test asserts a speed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import proxy
from router.native import build_kind

TOOLS = ("nginx", "haproxy", "wrk", "taskset")


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason="needs nginx, haproxy, wrk and taskset (apt-get install nginx haproxy wrk)",
)
@pytest.mark.timeout(180)
def test_one_round_writes_table_and_result_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(proxy, "RESULTS", tmp_path)
    targets = ["haproxy", "fast-pure"] + (["fast-compiled"] if build_kind() == "compiled" else [])
    quick = ["--rounds", "1", "--duration", "1", "--warmup", "1", "--scenario", "small"]
    proxy.main([*quick, "--targets", ",".join(targets)])
    [result] = tmp_path.glob("proxy-*.json")
    report = json.loads(result.read_text())
    rows = {row["target"]: row for row in report["scenarios"]["small"]["rows"]}
    assert set(rows) == set(targets)
    assert rows["haproxy"]["ratio"] == 1.0
    assert all(row["rps"] > 0 for row in rows.values())
    table = result.with_suffix(".md").read_text()
    assert "| fast-pure |" in table
    assert "| fast-pure |" in capsys.readouterr().out
