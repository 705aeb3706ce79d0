"""What a sweep measures: a running router whose active replica count it can set.

- `LiveTarget`: any running phala-router (e.g. in front of real Phala replicas). Each count
  is set with `POST /admin/active-limit`; per-replica request counts come from the router's
  Prometheus metrics (`router_requests_total{replica=...}`) when it exports them.
- `SimulatedTarget`: starts `bench.simtarget` (the simulator with N replicas of fixed
  capacity, optionally a shared backend) and `phala-router serve` in front of it, each in
  its own process, optionally pinned to cores; then drives it like a live target.
  Per-replica counts come from the simulator itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import yaml

from bench.procs import free_port, pinned, stop_process

START_TIMEOUT = 45.0


class TargetError(Exception):
    """The target cannot be measured; the message says what is wrong."""


class LiveTarget:
    def __init__(self, url: str, admin_url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.admin_url = admin_url.rstrip("/")
        self._token = token
        self._original_limit: int | None = None
        self.pids: dict[str, int] = {}
        self.served_by = "router metrics"  # who counts requests per replica

    # -- admin API ------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> bytes:
        data = json.dumps(body).encode() if body is not None or method == "POST" else None
        request = urllib.request.Request(self.admin_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as exc:
            hint = " (set --admin-token-env)" if exc.code == 401 else ""
            raise TargetError(f"{method} {self.admin_url}{path}: HTTP {exc.code}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TargetError(f"{method} {self.admin_url}{path}: {reason}") from None

    def status(self) -> dict[str, Any]:
        data = json.loads(self._call("GET", "/status"))
        if not isinstance(data, dict) or "replicas" not in data:
            raise TargetError(f"{self.admin_url}/status is not a phala-router status document")
        return data

    def open(self) -> None:
        status = self.status()
        self._original_limit = status.get("active_limit")

    @property
    def max_replicas(self) -> int:
        """Replicas that could take traffic with the limit lifted."""
        status = self.status()
        return sum(
            1 for r in status["replicas"] if r.get("routable") or r.get("state") == "inactive"
        )

    def activate(self, count: int, timeout: float = 15.0) -> None:
        """Routes to exactly `count` replicas and waits until /status shows it."""
        self._call("POST", "/admin/active-limit", {"count": count})
        deadline = time.monotonic() + timeout
        while True:
            routable = sum(1 for r in self.status()["replicas"] if r.get("routable"))
            if routable == count:
                return
            if time.monotonic() > deadline:
                raise TargetError(
                    f"asked for {count} active replicas, the router routes to {routable}"
                )
            time.sleep(0.1)  # polling /status with a deadline

    def served(self) -> dict[str, int] | None:
        """Requests answered so far per replica (router metrics), or None if not exported."""
        try:
            text = self._call("GET", "/metrics").decode(errors="replace")
        except TargetError:
            return None
        from prometheus_client.parser import text_string_to_metric_families

        counts: dict[str, int] = {}
        try:
            for family in text_string_to_metric_families(text):
                if family.name not in ("router_requests", "router_requests_total"):
                    continue
                for sample in family.samples:
                    replica = sample.labels.get("replica")
                    if replica and sample.name.endswith("_total"):
                        counts[replica] = counts.get(replica, 0) + int(sample.value)
        except ValueError:
            return None
        return counts or None

    def close(self) -> None:
        """Puts the active limit back as it was before the sweep."""
        with contextlib.suppress(TargetError):
            self._call("POST", "/admin/active-limit", {"count": self._original_limit})


class SimulatedTarget(LiveTarget):
    def __init__(
        self,
        *,
        replicas: int,
        capacity: int,
        latency_ms: float,
        backend_rps: float | None,
        pin: bool,
        workdir: Path,
    ) -> None:
        self._replicas = replicas
        self._sim_args = [
            "--replicas",
            str(replicas),
            "--capacity",
            str(capacity),
            "--latency-ms",
            str(latency_ms),
        ] + (["--backend-rps", str(backend_rps)] if backend_rps else [])
        # Two cores: the router alone on core 0, the replicas (and locust) on core 1.
        self._pin = pin
        self._workdir = workdir
        self._procs: list[subprocess.Popen[str]] = []
        self._logs: list[IO[str]] = []
        self._control_url = ""
        port = free_port()
        super().__init__(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}")
        self._port = port
        self.served_by = "simulator"

    def open(self) -> None:
        self._workdir.mkdir(parents=True, exist_ok=True)
        sim = self._spawn(
            "simulator",
            pinned([sys.executable, "-m", "bench.simtarget", *self._sim_args], self._core("1")),
            os.environ,
            ready_line=True,
        )
        ready = self._ready_line(sim)
        self._control_url = ready["control_url"]
        config = {
            "listen": f"127.0.0.1:{self._port}",
            "admin": {"listen": self.admin_url.removeprefix("http://")},
            **ready["overlay"],
            "health": {"interval": "2s", "unhealthy_interval": "500ms", "timeout": "2s"},
        }
        config_path = self._workdir / "router.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, ready["api_key_env"]: ready["api_key"]}
        router = self._spawn(
            "router",
            pinned(
                [sys.executable, "-m", "router.cli", "serve", "-c", str(config_path)],
                self._core("0"),
            ),
            env,
        )
        self.pids = {"router": router.pid, "simulator": sim.pid}
        self._wait_routable()
        super().open()

    def _core(self, core: str) -> str | None:
        return core if self._pin else None

    def _spawn(
        self, name: str, command: list[str], env: Any, *, ready_line: bool = False
    ) -> subprocess.Popen[str]:
        """Its stderr (and stdout, unless it announces readiness there) go to NAME.log."""
        log = (self._workdir / f"{name}.log").open("w")
        self._logs.append(log)
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE if ready_line else log,
            stderr=log,
            text=True,
            env=env,
        )
        self._procs.append(proc)
        return proc

    def _ready_line(self, sim: subprocess.Popen[str]) -> dict[str, Any]:
        assert sim.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(sim.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                raise TargetError(
                    f"the simulator did not start in {START_TIMEOUT:.0f} s "
                    f"(log: {self._workdir / 'simulator.log'})"
                )
        line = sim.stdout.readline()
        if not line:
            log = (self._workdir / "simulator.log").read_text(errors="replace")[-2000:]
            raise TargetError(f"the simulator exited at start:\n{log}")
        document: dict[str, Any] = json.loads(line)
        return document

    def _wait_routable(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            router = self._procs[-1]
            if router.poll() is not None:
                log = (self._workdir / "router.log").read_text(errors="replace")[-2000:]
                raise TargetError(f"the router exited at start:\n{log}")
            try:
                status = self.status()
                if status.get("routable_count") == self._replicas:
                    return
            except TargetError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TargetError(
                    f"the router did not see {self._replicas} healthy replicas in "
                    f"{START_TIMEOUT:.0f} s (logs under {self._workdir})"
                )
            time.sleep(0.2)  # polling the router's /status with a deadline

    @property
    def max_replicas(self) -> int:
        return self._replicas

    def served(self) -> dict[str, int] | None:
        try:
            with urllib.request.urlopen(self._control_url + "/replicas", timeout=5) as response:
                replicas = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return {r["instance_id"]: int(r["served"]) for r in replicas}

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc, 5.0)
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


def simulated_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="phala-bench-"))
