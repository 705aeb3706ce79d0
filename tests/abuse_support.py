"""Abuse patterns against a router running in its own process, with its CPU seconds and RSS
read from /proc: shared by tests/test_exhaustion.py (budgets) and bench/abuse.py (numbers).

Why a subprocess: the cost of an abuse must be the router's alone. In-process accounting
(`resource.getrusage`) would also charge the abusing client, the probe and the replica,
which run in the test process; a separate process also gives a clean RSS to compare.

Each pattern runs while a probe sends small GETs on its own keep-alive connection, one at
a time, and records how long each took: a router that stalls its event loop on one client
shows it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.procs import free_port, process_cpu, stop_process
from tests.support import running_replica

CHUNK = 64 * 1024
TINY_CHUNK = b"1\r\nX\r\n"


def process_rss_mib(pid: int) -> float:
    """Resident set size of another process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class RouterProcess:
    """`phala-router serve` in a child process, in front of the given replicas."""

    engine: str
    upstream_ports: list[int]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="abuse-")))

    def start(self, **proxy: object) -> None:
        self.port = free_port()
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
            "discovery": {
                "static": [
                    {"id": f"r{i}", "url": f"http://127.0.0.1:{port}"}
                    for i, port in enumerate(self.upstream_ports)
                ]
            },
            "health": {"enabled": False, "passive": {"enabled": False}},
            # The abusive request keeps one replica busy; the probe goes to the other, so
            # its latency is the router's and not a replica's.
            "routing": {"policy": "least_request"},
            "proxy": {"engine": self.engine, "client_header_timeout": "3s", **proxy},
        }
        path = self.workdir / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (self.workdir / "router.log").open("wb")
        command = [sys.executable, "-m", "router.cli", "serve", "-c", str(path)]
        self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        self._wait_listening(15.0)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.workdir / "router.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the router exited at start:\n{log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            # Between connection attempts, wait on the process itself: an exit shows at once.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.05)
        raise RuntimeError(f"the router did not listen within {timeout} s")

    def cpu(self) -> float:
        assert self.proc is not None
        seconds = process_cpu(self.proc.pid)
        if seconds is None:
            raise RuntimeError("the router process is gone")
        return seconds

    def rss(self) -> float:
        assert self.proc is not None
        return process_rss_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5.0)


@contextmanager
def replica_processes(count: int = 2) -> Iterator[list[int]]:
    """Echo replicas (tests/support.py), each in its own process (so neither their CPU nor
    their GIL is shared with the probe); yields their ports."""
    command = [sys.executable, "-m", "tests.abuse_support"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(count)]
    try:
        ports = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("a replica process exited at start")
            ports.append(int(line))
        yield ports
    finally:
        for proc in procs:
            stop_process(proc, 5.0)
            if proc.stdout is not None:
                proc.stdout.close()


async def _serve_replica() -> None:
    async with running_replica("a") as replica:
        print(replica.port, flush=True)
        await asyncio.Event().wait()  # until the parent stops this process


@dataclass
class Outcome:
    """What one abuse cost the router and what the probe saw meanwhile."""

    name: str
    sent: int  # bytes the abuser managed to send
    answer: int | None  # the status the router answered the abuser with, if any
    cpu_s: float  # over all runs
    rss_growth_mib: float
    probe_ms: list[float]
    runs: int = 1  # how many times the pattern ran (see `measure`)

    def probe_p90_ms(self) -> float:
        return p90(self.probe_ms)


async def probe_until(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    """Small GETs one after another on one keep-alive connection until `stop` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            writer.write(b"GET /probe HTTP/1.1\r\nHost: probe\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.005)  # a steady trickle, not a flood of our own
    finally:
        writer.close()


async def measure(
    router: RouterProcess,
    name: str,
    abuse: Callable[[], Awaitable[tuple[int, int | None]]],
    min_seconds: float = 0.0,
) -> Outcome:
    """Run `abuse` with the probe alongside, again and again until `min_seconds` passed (so a
    quick pattern still gives the probe enough samples); the router's CPU and RSS before
    and after. `sent` and `answer` are the last run's."""
    await settle(router)
    stop = asyncio.Event()
    latencies: list[float] = []
    rss_before, cpu_before = router.rss(), router.cpu()
    probe = asyncio.create_task(probe_until(router.port, stop, latencies))
    started, runs = time.monotonic(), 0
    try:
        while True:
            sent, answer = await abuse()
            runs += 1
            if time.monotonic() - started >= min_seconds:
                break
        cpu = router.cpu() - cpu_before
        rss = router.rss() - rss_before
    finally:
        stop.set()
        await probe
    return Outcome(name, sent, answer, cpu, rss, latencies, runs)


async def settle(router: RouterProcess, timeout: float = 30.0) -> None:
    """Wait until the router is idle (the previous abuse may still be costing it CPU), so a
    measurement charges only its own pattern."""
    deadline = time.monotonic() + timeout
    last = router.cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # sampling /proc, bounded by the deadline
        now = router.cpu()
        if now - last < 0.02:
            return
        last = now


async def quiet_probe(router: RouterProcess, seconds: float = 1.0) -> list[float]:
    """Probe latencies with nothing else going on: the baseline fairness is judged by."""
    await settle(router)
    stop = asyncio.Event()
    latencies: list[float] = []
    probe = asyncio.create_task(probe_until(router.port, stop, latencies))
    await asyncio.sleep(seconds)  # the probe runs for this long
    stop.set()
    await probe
    return latencies


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.9 * (len(ordered) - 1))] if ordered else float("inf")


async def _push(writer: asyncio.StreamWriter, blocks: Iterator[bytes], seconds: float) -> int:
    """Write blocks until they run out, the router closes, or `seconds` pass."""
    sent = 0
    deadline = time.monotonic() + seconds
    with contextlib.suppress(ConnectionError, TimeoutError):
        for block in blocks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            writer.write(block)
            await asyncio.wait_for(writer.drain(), remaining)
            sent += len(block)
    return sent


async def _answer(reader: asyncio.StreamReader, seconds: float = 5.0) -> int | None:
    """The status of the router's answer, or None if it closed or said nothing in time."""
    with contextlib.suppress(
        ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError
    ):
        line = await asyncio.wait_for(reader.readline(), seconds)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else None
    return None


def _repeat(block: bytes, total: int) -> Iterator[bytes]:
    """Exactly `total` bytes, as copies of `block` (the last one cut short)."""
    while total > 0:
        yield block[:total]
        total -= len(block)


def _tiny_chunks(count: int) -> Iterator[bytes]:
    """`count` 1-byte chunks, a block of them at a time."""
    per_block = CHUNK // len(TINY_CHUNK)
    while count > 0:
        yield TINY_CHUNK * min(per_block, count)
        count -= per_block


async def endless_header(port: int, size: int) -> tuple[int, int | None]:
    """One header value of `size` bytes and no CRLF, ever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
        sent = await _push(writer, _repeat(b"a" * CHUNK, size), 20.0)
        return sent, await _answer(reader)
    finally:
        writer.close()


async def upload(port: int, size: int, chunking: str = "length") -> tuple[int, int | None]:
    """POST /upload with `size` body bytes: with a Content-Length (`length`), chunked in
    1-byte chunks (`tiny`), or chunked as one chunk (`one`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if chunking == "length":
            writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            sent = await _push(writer, _repeat(b"x" * CHUNK, size), 60.0)
            return sent, await _answer(reader, 30.0)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        if chunking == "tiny":
            blocks = _tiny_chunks(size)
        else:
            writer.write(b"%x\r\n" % size)
            blocks = iter([*_repeat(b"x" * CHUNK, size), b"\r\n"])
        sent = await _push(writer, blocks, 60.0)
        writer.write(b"0\r\n\r\n")
        return sent, await _answer(reader, 30.0)
    finally:
        writer.close()


async def upgrade_flood(port: int, size: int, seconds: float = 3.0) -> tuple[int, int | None]:
    """An Upgrade request to a replica that never answers, then `size` bytes of junk."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /hang HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: flood\r\n\r\n"
        )
        sent = await _push(writer, _repeat(b"z" * CHUNK, size), seconds)
        return sent, None  # measured while the connection is still open
    finally:
        writer.close()


async def idle_connections(port: int, count: int, hold: float = 1.0) -> tuple[int, int | None]:
    """`count` connections: half silent, half with a request head that never ends."""
    writers = []
    try:
        for i in range(count):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            if i % 2:
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
            writers.append(writer)
        await asyncio.sleep(hold)  # the probe runs while they are all open
        return count, None
    finally:
        for writer in writers:
            writer.close()


async def small_gets(port: int, count: int, batch: int = 50) -> tuple[int, int | None]:
    """`count` small GETs on one keep-alive connection, pipelined `batch` at a time: the
    per-request cost other patterns are compared with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n"
        for _ in range(count // batch):
            writer.write(request * batch)
            for _ in range(batch):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        return count, 200
    finally:
        writer.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_replica())
