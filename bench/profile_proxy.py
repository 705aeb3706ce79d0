"""Where a router target's time goes under bench/proxy.py's load: py-spy on the router.

Starts the same nginx upstream and router target as `bench.proxy` (same pinning), warms
up, then runs wrk while `py-spy record` samples the router process, and writes the raw
collapsed stacks and a summary: the share of samples in which each function is on the
stack (inclusive) and at the top (self), with the time idle in the event loop's poll
split out. Read the shares as "of the router's busy time".

    python -m bench.profile_proxy --target fast-compiled --scenario small --seconds 8
    python -m bench.profile_proxy --target fast-pure --native   # C frames too (mypyc, llhttp)

Needs py-spy (the bench extra) and permission to ptrace the router (a child of this
process, so the default Yama setting allows it). Writes bench/results/pyspy-<target>-
<scenario>-<time>.{txt,md}. A measurement tool, not a test.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.proxy import (
    LOAD_CORE,
    PROXY_CORE,
    RESULTS,
    SCENARIOS,
    free_port,
    process,
    run_load,
    target_argv,
    tree_pids,
    upstream_nginx,
)

# Leaf frames that mean "waiting for the kernel to report ready sockets": idle, not work.
_IDLE = re.compile(r"epoll_p?wait|uv__io_poll \(linux\.c:\d+\)$|select \(")
_LINE = re.compile(r" \([^()]*\)$")  # " (file:line)" at the end of a frame


def frame_name(frame: str) -> str:
    """`Exchange.start (router/proxy/fast/exchange.py:109)` -> `Exchange.start (exchange.py)`."""
    match = _LINE.search(frame)
    if match is None:
        return frame
    where = match.group(0)[2:-1].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{frame[: match.start()]} ({where})"


def summarise(raw: str, top: int = 30) -> tuple[int, int, list[tuple[str, float, float]]]:
    """(total samples, idle samples, [(function, inclusive %, self %)] of the busy ones)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        if _IDLE.search(frames[-1]):
            idle += count
            continue
        for name in {frame_name(f) for f in frames}:
            inclusive[name] += count
        own[frame_name(frames[-1])] += count
    busy = max(total - idle, 1)
    rows = [
        (name, 100.0 * n / busy, 100.0 * own.get(name, 0) / busy)
        for name, n in inclusive.most_common()
        if n < 0.99 * busy  # frames on every busy stack (the loop itself) say nothing
    ]
    by_self = sorted(rows, key=lambda row: row[2], reverse=True)[:top]
    by_incl = rows[:top]
    seen = {row[0] for row in by_incl}
    return total, idle, by_incl + [row for row in by_self if row[0] not in seen]


def report_markdown(title: str, raw: str) -> str:
    total, idle, rows = summarise(raw)
    lines = [
        f"# {title}",
        "",
        f"{total} samples, {idle} idle in the event loop's poll "
        f"({100.0 * idle / max(total, 1):.0f}%); shares below are of the busy samples.",
        "",
        "| function | on the stack % | at the top % |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{name}` | {incl:.1f} | {self_:.1f} |" for name, incl, self_ in rows]
    return "\n".join(lines) + "\n"


def py_spy() -> str | None:
    """py-spy on PATH, or next to this interpreter (a venv that was not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def _python_pid(pids: list[int]) -> int:
    """The router process among taskset/env wrappers (one worker: a single python)."""
    for pid in pids:
        comm = Path(f"/proc/{pid}/comm")
        if comm.exists() and comm.read_text().startswith("python"):
            return pid
    raise SystemExit(f"no python process among {pids}: is the target a router?")


def profile(args: argparse.Namespace) -> Path:
    scenario = SCENARIOS[args.scenario]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    stem = RESULTS / f"pyspy-{args.target}-{args.scenario}-{stamp}"
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        upstream = free_port()
        (work / "upstream.conf").write_text(upstream_nginx(work, upstream))
        up_argv = ["nginx", "-c", str(work / "upstream.conf"), "-p", str(work)]
        with process(up_argv, upstream, LOAD_CORE):
            port = free_port()
            argv = target_argv(args.target, work, port, upstream, scenario, 1)
            with process(argv, port, PROXY_CORE) as proc:
                run_load(port, scenario, 2.0, work)
                router_pid = _python_pid(tree_pids(proc.pid))
                spy = [
                    str(py_spy()), "record", "--pid", str(router_pid), "--format", "raw",
                    "--rate", str(args.rate), "--duration", str(args.seconds),
                    "--output", str(stem.with_suffix(".txt")),
                    *(["--native"] if args.native else []),
                ]  # fmt: skip
                recorder = subprocess.Popen(spy, stdout=subprocess.DEVNULL)
                rps, p99 = run_load(port, scenario, float(args.seconds), work)
                recorder.wait(timeout=args.seconds + 30)
    raw = stem.with_suffix(".txt").read_text()
    title = (
        f"py-spy {args.target}, {scenario.name}: {rps:,.0f} req/s, p99 {p99:.2f} ms while "
        f"sampled at {args.rate} Hz{' with native frames' if args.native else ''} ({stamp})"
    )
    stem.with_suffix(".md").write_text(report_markdown(title, raw))
    return stem.with_suffix(".md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="fast-compiled")
    parser.add_argument("--scenario", default="small", choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames")
    args = parser.parse_args(argv)
    if py_spy() is None:
        raise SystemExit("py-spy not found: pip install -e '.[bench]' (or pip install py-spy)")
    out = profile(args)
    print(out.read_text())
    print(f"written: {out} and {out.with_suffix('.txt')}", file=sys.stderr)


if __name__ == "__main__":
    main()
