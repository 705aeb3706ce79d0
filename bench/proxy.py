"""Proxy throughput: phala-router's engines against nginx and HAProxy as proxies.

Targets: nginx, haproxy, fast, aiohttp, envoy (phala-router driving Envoy), minimal; a
`-w2` suffix runs two workers (router processes, or Envoy threads for envoy).

Method (/work/shared/BENCH-METHOD.md): one nginx upstream; each proxy pinned alone to core 0,
wrk and the upstream on core 1; several rounds alternating the order of the targets; for
each target the median over rounds of (its req/s / HAProxy's req/s in the same round).
Absolute numbers drift on shared VMs, ratios measured in the same round do not.

    python -m bench.proxy --rounds 3 --duration 5 --scenario small
    python -m bench.proxy --targets haproxy,fast --scenario 64k,post1m
    python -m bench.proxy --targets haproxy,nginx,fast-pure,fast-compiled,fast-compiled-w2 \
        --scenario small,64k,post1m,replicas1000,close

`fast-pure` runs the router with PHALA_ROUTER_PURE=1 (the pure-Python twin), `fast-compiled`
the mypyc-compiled hot path (it refuses to run when none is installed).

Needs Debian's nginx, haproxy and wrk. Writes bench/results/proxy-<time>.{json,md}.
Not a test: it measures and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SMALL_BODY = "x" * 99 + "\n"  # 100 bytes
PROXY_CORE, LOAD_CORE = "0", "1"


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    wrk_script: str | None = None  # lua, for POST bodies
    replicas: int = 1
    h2: bool = False  # HTTP/2 with prior knowledge (h2c), driven by h2load instead of wrk
    wrk_headers: tuple[str, ...] = ()


SCENARIOS = {
    "small": Scenario("small GET (100 B)", "/"),
    "64k": Scenario("64 KiB response", "/64k"),
    "post1m": Scenario(
        "1 MiB POST",
        "/upload",
        'wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n',
    ),
    "replicas1000": Scenario("small GET, 1,000 replicas in the table", "/", replicas=1000),
    "small-h2": Scenario("small GET over h2c (h2load -c50 -m1)", "/", h2=True),
    # A new client connection per request: accept, parse, close every time.
    "close": Scenario("small GET, keep-alive off", "/", wrk_headers=("Connection: close",)),
}
# Targets that accept HTTP/2 from clients (the Python engines speak HTTP/1.1 only).
H2_TARGETS = ("nginx", "haproxy", "envoy")


@dataclass
class Sample:
    rps: float
    p99_ms: float
    cpu_per_req_us: float
    rss_mb: float


@dataclass
class Row:
    target: str
    samples: list[Sample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    p99_ratios: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # polling a port another process opens: no event to wait on
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


# -- configs ---------------------------------------------------------------------------------


def upstream_nginx(work: Path, port: int) -> str:
    (work / "64k.bin").write_bytes(b"y" * 65536)
    return f"""
user root; worker_processes 1; daemon off; pid {work}/up.pid; error_log {work}/up.err;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {work}/up_body;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location = / {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
    location = /64k {{ default_type application/octet-stream; alias {work}/64k.bin; }}
    location = /upload {{ client_max_body_size 4m; client_body_buffer_size 2m;
                         default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
"""


def nginx_proxy(work: Path, port: int, upstream: int, h2: bool = False) -> str:
    http2 = " http2" if h2 else ""
    return f"""
user root; worker_processes 1; daemon off; pid {work}/px.pid; error_log {work}/px.err;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000;
  client_body_temp_path {work}/px_body; proxy_temp_path {work}/px_proxy;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port}{http2} backlog=4096; client_max_body_size 4m;
    location / {{ proxy_pass http://up; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
  }}
}}
"""


def haproxy_config(port: int, upstream: int, h2: bool = False) -> str:
    proto = " proto h2" if h2 else ""
    return f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}{proto}
  default_backend be
backend be
  server s1 127.0.0.1:{upstream}
"""


def router_config(
    port: int,
    upstream: int,
    engine: str,
    workers: int,
    replicas: int,
    policy: str = "round_robin",
    request_metrics: bool = True,
) -> str:
    static = [
        {"id": f"r{i}", "url": f"http://127.0.0.1:{upstream}"} for i in range(max(replicas, 1))
    ]
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "discovery": {"static": static},
        "health": {"enabled": False},
        "proxy": {"engine": engine, "workers": workers}
        if engine != "envoy"
        # One router process drives one Envoy; its worker threads are Envoy's concurrency.
        else {"engine": "envoy", "envoy": {"concurrency": workers}},
        "routing": {"policy": policy},
        "metrics": {"requests": request_metrics},
    }
    return json.dumps(config)  # JSON is YAML


# -- processes -------------------------------------------------------------------------------


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@contextlib.contextmanager
def process(argv: list[str], port: int, cores: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["taskset", "-c", cores, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        try:
            wait_port(port)
        except RuntimeError:
            proc.kill()
            raise RuntimeError(
                f"{argv[0]} did not start: {proc.communicate()[1][-2000:]!r}"
            ) from None
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(port: int, scenario: Scenario, seconds: float, work: Path) -> tuple[float, float]:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c50", f"-d{int(seconds)}s", "--latency"]
    if scenario.wrk_script:
        script = work / "post.lua"
        script.write_text(scenario.wrk_script)
        argv += ["-s", str(script)]
    for header in scenario.wrk_headers:
        argv += ["-H", header]
    argv.append(f"http://127.0.0.1:{port}{scenario.path}")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: {out.splitlines()[-4:]}", file=sys.stderr)
    return rps, float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan")


def run_h2load(port: int, scenario: Scenario, seconds: float) -> tuple[float, float]:
    """(req/s, nan): h2load reports mean request time, not a p99."""
    argv = ["taskset", "-c", LOAD_CORE, "h2load", "-c50", "-m1", "-t1", f"-D{int(seconds)}"]
    argv.append(f"http://127.0.0.1:{port}{scenario.path}")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"(\d+) failed", out)
    if failed and int(failed.group(1)):
        print(f"  warning: h2load: {failed.group(0)}", file=sys.stderr)
    return rps, float("nan")


def run_load(port: int, scenario: Scenario, seconds: float, work: Path) -> tuple[float, float]:
    if scenario.h2:
        return run_h2load(port, scenario, seconds)
    return run_wrk(port, scenario, seconds, work)


# -- the run ---------------------------------------------------------------------------------


_POLICIES = {"rr": "round_robin", "lr": "least_request", "geo": "geo"}


def target_workers(name: str, default: int) -> int:
    """`fast-w2` is the fast engine with two worker processes."""
    for part in name.split("-")[1:]:
        if part.startswith("w") and part[1:].isdigit():
            return int(part[1:])
    return default


def target_variant(name: str) -> tuple[str, bool]:
    """(policy, request metrics) from a target name: `fast-lr`, `fast-geo`, `aiohttp-nometrics`."""
    parts = name.split("-")[1:]
    policy = next((_POLICIES[p] for p in parts if p in _POLICIES), "round_robin")
    return policy, "nometrics" not in parts


def target_argv(
    name: str,
    work: Path,
    port: int,
    upstream: int,
    scenario: Scenario,
    workers: int,
    baseline: Path | None = None,
) -> list[str]:
    if name == "nginx":
        conf = work / "nginx-proxy.conf"
        conf.write_text(nginx_proxy(work, port, upstream, scenario.h2))
        return ["nginx", "-c", str(conf), "-p", str(work)]
    if name == "haproxy":
        conf = work / "haproxy.cfg"
        conf.write_text(haproxy_config(port, upstream, scenario.h2))
        return ["haproxy", "-db", "-f", str(conf)]
    if name == "minimal":
        return [sys.executable, "-m", "bench.minimal_proxy", str(port), str(upstream)]
    engine = next((e for e in ("aiohttp", "envoy") if name.startswith(e)), "fast")
    conf = work / f"router-{name}.yaml"
    policy, request_metrics = target_variant(name)
    conf.write_text(
        router_config(
            port,
            upstream,
            engine,
            target_workers(name, workers),
            scenario.replicas,
            policy,
            request_metrics,
        )
    )
    serve = [sys.executable, "-m", "bench.proxy", "--serve-router", str(conf)]
    serve = build_env(name) + serve
    if "baseline" in name.split("-")[1:]:
        if baseline is None:
            raise SystemExit(f"{name}: pass --baseline-src DIR (a checkout to compare with)")
        # `python -m` puts the working directory first on sys.path: that checkout's router.
        return ["env", "-C", str(baseline), *serve]
    return serve


def build_env(name: str) -> list[str]:
    """`fast-pure`: PHALA_ROUTER_PURE=1; `fast-compiled`: the compiled hot path or stop."""
    parts = name.split("-")[1:]
    if "pure" in parts:
        return ["env", "PHALA_ROUTER_PURE=1"]
    if "compiled" in parts:
        from router.native import build_kind

        if build_kind() != "compiled":
            raise SystemExit(f"{name}: no compiled hot path installed (pip install -e . with gcc)")
        return ["env", "-u", "PHALA_ROUTER_PURE"]
    return []


def measure(args: argparse.Namespace) -> dict[str, Any]:
    h2 = any(SCENARIOS[key].h2 for key in args.scenario.split(","))
    for tool in ("nginx", "haproxy", "wrk", "taskset", *(["h2load"] if h2 else [])):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} not found: apt-get install nginx haproxy wrk util-linux nghttp2-client"
            )
    targets = args.targets.split(",")
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": f"wrk -t1 -c50, {args.rounds} rounds x {args.duration}s after "
        f"{args.warmup}s warm-up, proxy on core {PROXY_CORE}, wrk+upstream on core {LOAD_CORE}",
        "python": sys.version.split()[0],
        "workers": args.workers,
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        work = Path(tmp)
        upstream = free_port()
        (work / "upstream.conf").write_text(upstream_nginx(work, upstream))
        up_argv = ["nginx", "-c", str(work / "upstream.conf"), "-p", str(work)]
        with process(up_argv, upstream, LOAD_CORE):
            for key in args.scenario.split(","):
                scenario = SCENARIOS[key]
                rows = {t: Row(t) for t in targets}
                for round_no in range(args.rounds):
                    order = targets if round_no % 2 == 0 else targets[::-1]
                    got: dict[str, Sample] = {}
                    for name in order:
                        if scenario.h2 and not name.startswith(H2_TARGETS):
                            continue  # speaks HTTP/1.1 only
                        try:
                            got[name] = measure_one(name, work, upstream, scenario, args)
                        except (RuntimeError, subprocess.CalledProcessError) as exc:
                            # One failed sample (a crash, wrk unable to connect on a busy
                            # machine) must not lose the run: the round goes without it.
                            print(f"  {scenario.name} round {round_no + 1} {name}: FAILED {exc}")
                            continue
                        sample = got[name]
                        print(
                            f"  {scenario.name} round {round_no + 1} {name}: "
                            f"{sample.rps:,.0f} req/s p99 {sample.p99_ms:.2f} ms"
                        )
                    ref = got.get(args.reference)
                    for name, sample in got.items():
                        rows[name].samples.append(sample)
                        if ref:
                            rows[name].ratios.append(sample.rps / ref.rps)
                            rows[name].p99_ratios.append(sample.p99_ms / ref.p99_ms)
                report["scenarios"][key] = {
                    "name": scenario.name,
                    "rows": [summarise(row) for row in rows.values() if row.samples],
                }
                save(report, args)  # after each scenario: a late failure keeps the rest
    return report


def measure_one(
    name: str, work: Path, upstream: int, scenario: Scenario, args: argparse.Namespace
) -> Sample:
    port = free_port()
    argv = target_argv(name, work, port, upstream, scenario, args.workers, args.baseline_src)
    workers = target_workers(name, args.workers)
    # More workers than one get every core: they then share core 1 with wrk and the
    # upstream, which the table must be read with.
    cores = PROXY_CORE if workers == 1 or name in ("nginx", "haproxy") else "0,1"
    with process(argv, port, cores) as proc:
        run_load(port, scenario, args.warmup, work)
        pids = tree_pids(proc.pid)
        cpu0 = cpu_seconds(pids)
        rps, p99 = run_load(port, scenario, args.duration, work)
        cpu = cpu_seconds(pids) - cpu0
        return Sample(rps, p99, cpu / max(rps * args.duration, 1) * 1e6, rss_mb(pids))


def save(report: dict[str, Any], args: argparse.Namespace) -> None:
    """Write bench/results/proxy-<stamp>.{json,md} (and .png with matplotlib)."""
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"proxy-{args.stamp}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report, args.reference))
    try:
        from bench.plots import proxy_plot

        proxy_plot(report, stem.with_suffix(".png"))
    except ImportError as exc:  # matplotlib is in the bench extra
        print(f"no plot: {exc}", file=sys.stderr)


def summarise(row: Row) -> dict[str, Any]:
    med = statistics.median
    return {
        "target": row.target,
        "rps": med(s.rps for s in row.samples),
        "p99_ms": med(s.p99_ms for s in row.samples),
        "ratio": med(row.ratios) if row.ratios else None,
        "p99_ratio": med(row.p99_ratios) if row.p99_ratios else None,
        "cpu_us_per_req": med(s.cpu_per_req_us for s in row.samples),
        "rss_mb": max(s.rss_mb for s in row.samples),
        "samples": [asdict(s) for s in row.samples],
    }


def markdown(report: dict[str, Any], reference: str) -> str:
    lines = [f"# Proxy benchmark {report['started']}", "", report["method"], ""]
    for scenario in report["scenarios"].values():
        lines += [
            f"## {scenario['name']}",
            "",
            f"| target | req/s (median) | ratio to {reference} | p99 ms | p99 ratio | CPU µs/req | RSS MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in scenario["rows"]:
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            p99r = f"{r['p99_ratio']:.2f}" if r["p99_ratio"] is not None else "-"
            lines.append(
                f"| {r['target']} | {r['rps']:,.0f} | {ratio} | {r['p99_ms']:.2f} | {p99r} "
                f"| {r['cpu_us_per_req']:.1f} | {r['rss_mb']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def serve_router(config_path: str) -> None:
    """The router as the benchmark runs it: uvloop, `proxy.workers` processes."""
    import asyncio

    import uvloop

    from router.app import RouterApp
    from router.config import load_config
    from router.workers import WorkerLink, run_workers, worker_count

    config = load_config(config_path)

    async def main(worker: WorkerLink) -> None:
        app = RouterApp(config, worker=worker)
        await app.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await app.stop(1.0)

    run_workers(worker_count(config), lambda worker: uvloop.run(main(worker)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="nginx,haproxy,fast")
    parser.add_argument("--reference", default="haproxy")
    parser.add_argument("--scenario", default="small", help=",".join(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5.0)
    parser.add_argument("--warmup", type=int, default=2.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--serve-router", metavar="CONFIG")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="a checkout of the router (e.g. `git archive REV | tar -x -C DIR`) that targets "
        "named like `fast-baseline` run, to compare two versions in one run",
    )
    args = parser.parse_args(argv)
    if args.serve_router:
        serve_router(args.serve_router)
        return
    args.stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    report = measure(args)
    save(report, args)
    print(markdown(report, args.reference))


if __name__ == "__main__":
    main()
