"""The benchmark plots say what they show: conditions in the scaling title, reference lines
apart from measurements, the shared backend's capacity, the spread of repeated runs, and a
router vs HAProxy vs nginx comparison drawn from the committed result files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="the plots need the bench extra (matplotlib)")

from matplotlib.colors import to_rgba

from bench.plots import (
    comparisons,
    conditions,
    load_sweeps,
    main,
    merged,
    proxy_figure,
    proxy_rows,
    scaling_figure,
)

RESULTS = Path(__file__).resolve().parent.parent / "bench/results"


def sweeps() -> list[Any]:
    return load_sweeps(RESULTS / "scaling_sim.json")


def lines(axis: Any) -> dict[str, Any]:
    return {line.get_label(): line for line in axis.get_lines()}


def test_the_scaling_title_states_capacity_users_and_seconds_per_step() -> None:
    text = conditions(sweeps())
    assert "per replica 4 x 50 ms = 80 req/s" in text
    assert "64 users" in text
    assert "20 s per step" in text
    figure = scaling_figure(sweeps())
    assert text in figure._suptitle.get_text()


def test_reference_lines_have_their_own_colours_and_the_backend_its_capacity() -> None:
    figure = scaling_figure(sweeps())
    left = figure.axes[0]
    drawn = lines(left)
    measured = {to_rgba(drawn[s.label].get_color()) for s in sweeps()}
    ideal = [line for label, line in drawn.items() if label.startswith("ideal linear")]
    models = [line for label, line in drawn.items() if label.startswith("model capacity")]
    assert len(ideal) == 1  # both sweeps start from the same point: one ideal line
    assert models
    reference = {to_rgba(line.get_color()) for line in ideal + models}
    assert not reference & measured
    assert to_rgba(ideal[0].get_color()) != to_rgba(models[0].get_color())
    capacity = drawn["shared backend capacity 200 req/s"]
    assert set(capacity.get_ydata()) == {200.0}


def test_repeated_runs_show_their_spread() -> None:
    first = sweeps()[0]
    slower = dataclasses.replace(
        first,
        points=[
            dataclasses.replace(p, latency=dataclasses.replace(p.latency, rps=p.rps * 0.9))
            for p in first.points
        ],
    )
    figure = scaling_figure([first, slower])
    left = figure.axes[0]
    assert f"{first.label} (median of 2 runs)" in lines(left)
    assert left.collections, "no band between the runs"
    band = left.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(max(p.rps for p in first.points))


def test_proxy_comparison_from_the_committed_results(tmp_path: Path) -> None:
    files = comparisons(RESULTS)
    assert files, "no committed proxy result compares the router with HAProxy and nginx"
    document = merged(files)
    figure = proxy_figure(document)
    throughput, p99 = figure.axes
    names = [t.get_text() for t in throughput.get_legend().get_texts()]
    assert {"HAProxy", "nginx"} <= set(names)
    assert names[0].startswith("phala-router")
    scenarios = len(throughput.get_xticks())
    assert scenarios >= 2
    bars = sum(len(rows) for rows in proxy_rows(document).values())
    assert len(throughput.patches) == len(p99.patches) == bars
    out = tmp_path / "proxy.png"
    assert main(["proxy", "-o", str(out), *map(str, files)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
