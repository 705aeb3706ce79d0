"""The scaling benchmark runs end to end and says what it measured; speed is never asserted.

The smoke run starts the real pieces (simulator and router in their own processes, locust
headless) with a tiny load for a second or two per replica count.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.analysis import (
    Latency,
    Point,
    Sweep,
    finish,
    limited_by,
    load_flags,
    percentile,
    summarise,
    tagged_counts,
)
from bench.report import markdown
from bench.scaling import SweepOptions, main
from bench.targets import LiveTarget, TargetError

# find_spec, not importorskip: importing locust here would let gevent monkey-patch
# sockets and SSL for every other test in this process. Locust runs in its own process.
if importlib.util.find_spec("locust") is None:
    pytest.skip("the bench extra (locust) is not installed", allow_module_level=True)


def test_simulated_sweep_writes_table_json_csv_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--replicas",
            "1,2",
            "--run-time",
            "2",
            "--users",
            "4",
            "--latency-ms",
            "20",
            "--scenario",
            "post",
            "--price-per-replica-hour",
            "0.5",
            "--no-pin",
            "--no-progress",
            "--out",
            str(tmp_path),
            "--name",
            "smoke",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| replicas | req/s | model req/s | efficiency")
    assert "$ / M req" in rows[0]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["1", "2"]
    assert "knee" in table.lower()

    [sweep] = json.loads((tmp_path / "smoke.json").read_text())
    assert sweep["target"] == "simulated"
    assert sweep["environment"]["versions"]["locust"]
    points = sweep["points"]
    assert [p["replicas"] for p in points] == [1, 2]
    for point in points:
        latency = point["latency"]
        assert latency["requests"] > 0
        assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
        assert point["model_rps"] > 0
        assert point["cost_per_million"] > 0
        # The simulator counted who served: both replicas at 2, one at 1.
        assert len(point["per_replica"]) == point["replicas"]
        assert point["per_replica_from"] == "simulator"
        # Responses naming their replica (the echo POST) are tagged per replica by locust.
        tagged = {name.partition(" @")[2] for name in point["by_name"] if " @" in name}
        assert tagged
        assert tagged <= {rid[:12] for rid in point["per_replica"]}
    assert points[0]["efficiency"] == 1.0

    with (tmp_path / "smoke.csv").open() as file:
        csv_rows = list(csv.DictReader(file))
    assert [r["replicas"] for r in csv_rows] == ["1", "2"]
    assert all(float(r["rps"]) > 0 for r in csv_rows)

    png = (tmp_path / "smoke.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5000


def test_bad_replica_counts_are_refused_with_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--replicas", "0,2"])
    assert exit_info.value.code == 2
    assert "replica counts must be >= 1" in capsys.readouterr().err


def test_unreachable_live_router_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["--target", "http://127.0.0.1:9", "--admin", "http://127.0.0.1:9", "--no-progress"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("bench.scaling: GET http://127.0.0.1:9/status")
    assert "Traceback" not in err


# -- live target against a fake router admin API -------------------------------------------


class FakeAdmin(BaseHTTPRequestHandler):
    state: dict[str, Any]

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        limit = self.state["limit"]
        if self.path == "/status":
            replicas = [
                {"id": f"r{i}", "routable": limit is None or i < limit, "state": "healthy"}
                for i in range(3)
            ]
            doc = {"active_limit": limit, "replicas": replicas}
            self._send(200, json.dumps(doc).encode())
        elif self.path == "/metrics":
            text = (
                "# TYPE router_requests counter\n"
                'router_requests_total{replica="r0",code="200"} 5.0\n'
                'router_requests_total{replica="r0",code="502"} 1.0\n'
                'router_requests_total{replica="r1",code="200"} 7.0\n'
            )
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != "Bearer s3cret":
            self._send(401, b"{}")
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.state["posts"].append(body["count"])
        self.state["limit"] = body["count"]
        self._send(200, b"{}")


@pytest.fixture
def fake_admin() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"limit": None, "posts": []}
    handler = type("Handler", (FakeAdmin,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_live_target_sets_counts_with_the_token_and_restores_the_limit(
    fake_admin: tuple[str, dict[str, Any]],
) -> None:
    url, state = fake_admin
    target = LiveTarget("http://app.example", url, token="s3cret")
    target.open()
    assert target.max_replicas == 3
    target.activate(2)
    assert state["limit"] == 2
    assert target.served() == {"r0": 6, "r1": 7}
    target.close()
    assert state["posts"] == [2, None]  # lifted again, as it was before the sweep


def test_live_target_without_the_token_says_how_to_fix_it(
    fake_admin: tuple[str, dict[str, Any]],
) -> None:
    url, _ = fake_admin
    target = LiveTarget("http://app.example", url)
    with pytest.raises(TargetError, match=r"HTTP 401 \(set --admin-token-env\)"):
        target.activate(1)


# -- what the numbers mean -------------------------------------------------------------------


def _point(replicas: int, rps: float, mean_ms: float = 100.0, **kw: Any) -> Point:
    latency = Latency(1000, 0, 10.0, rps, mean_ms, mean_ms, mean_ms, mean_ms)
    return Point(replicas=replicas, latency=latency, locust_processes=1, **kw)


def test_efficiency_knee_and_cost_follow_the_definitions() -> None:
    points = [_point(4, 200), _point(1, 80), _point(2, 160), _point(8, 210)]
    knee = finish(points, price_per_replica_hour=0.36)
    assert [p.replicas for p in points] == [1, 2, 4, 8]
    assert [p.efficiency for p in points] == [1.0, 1.0, 0.625, 0.328]
    assert points[3].gain == 0.05
    assert knee == 4  # 4 -> 8 gains 5% (< 10%)
    # 0.36 $/h per replica = 0.0001 $/s; 1 replica at 80 req/s: 1e6 requests cost 1.25 $
    assert points[0].cost_per_million == 1.25


def test_no_knee_when_every_step_gains_enough() -> None:
    points = [_point(1, 80), _point(2, 150)]
    assert finish(points, None) is None
    assert points[1].cost_per_million is None


def test_percentiles_and_totals_from_locust_json() -> None:
    entries = [
        {
            "num_requests": 90,
            "num_failures": 1,
            "total_response_time": 900.0,
            "response_times": {"10": 90},
            "start_time": 100.0,
            "last_request_timestamp": 110.0,
        },
        {
            "num_requests": 10,
            "num_failures": 0,
            "total_response_time": 1000.0,
            "response_times": {"100": 10},
            "start_time": 101.0,
            "last_request_timestamp": 109.0,
        },
    ]
    lat = summarise(entries)
    assert (lat.requests, lat.failures, lat.rps, lat.mean_ms) == (100, 1, 10.0, 19.0)
    assert (lat.p50_ms, lat.p95_ms, lat.p99_ms) == (10.0, 100.0, 100.0)
    assert percentile({}, 0.5) == 0.0


def test_a_lagging_load_generator_is_reported() -> None:
    # 64 users at 10 ms each could send 6,400 req/s; 1,000 means locust could not keep up.
    lagging = _point(8, 1000, mean_ms=10.0, cpu={"locust": {"busiest": 0.97, "total": 0.97}})
    flags = load_flags(lagging, users=64, think_ms=0)
    assert any("a locust process used 97% of a core" in f for f in flags)
    assert any("load generator lagging" in f for f in flags)
    healthy = _point(8, 620, mean_ms=100.0)
    assert load_flags(healthy, users=64, think_ms=0) == []

    sweep = Sweep("s", "live", {"users": 64, "scenario": "small", "run_time": 5.0}, [lagging])
    sweep.points[0].flags = flags
    assert "Caveats:" in markdown(sweep)


def test_per_replica_counts_from_tagged_locust_names() -> None:
    entries = [
        {"name": "post @abc", "num_requests": 3},
        {"name": "post @def", "num_requests": 4},
        {"name": "small @abc", "num_requests": 1},
        {"name": "small", "num_requests": 50},
    ]
    assert tagged_counts(entries) == {"abc": 4, "def": 4}


def test_limited_by_names_the_simulated_bottleneck_before_cpu_caveats() -> None:
    busy = "machine CPU 95% busy: throughput here is a lower bound"
    at_replicas = _point(4, 310, model_rps=320.0, flags=[busy])
    assert limited_by(at_replicas, backend_rps=None) == "replicas"
    at_backend = _point(8, 201, model_rps=200.0)
    assert limited_by(at_backend, backend_rps=200.0) == "shared backend"
    short_of_model = _point(8, 300, model_rps=640.0, flags=[busy])
    assert limited_by(short_of_model, backend_rps=None) == "machine CPU"


def test_model_capacity_only_where_it_holds() -> None:
    small = SweepOptions(capacity=4, latency_ms=50, backend_rps=200)
    assert [small.model(n) for n in (1, 2, 4, 8)] == [80, 160, 200, 200]
    assert small.resolved_users() == 64  # twice the slots of 8 replicas
    assert SweepOptions(scenario="mix").model(2) is None  # /slow holds a slot longer
    assert SweepOptions(target="http://x", admin="http://y").model(2) is None
