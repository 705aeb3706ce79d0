"""Process signals for the long-running commands (`serve`, `simulate`, `demo`): kept out
of the CLI modules so that `demo.py`, which the CLI imports, does not import the CLI back."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def catch_signals(on_hangup: Callable[[], object] | None = None) -> asyncio.Event:
    """Set on SIGTERM/SIGINT; SIGHUP calls `on_hangup` (reload). Installed before startup so
    a stop during startup still drains instead of killing the process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_hangup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    return stop


async def wait_for_signal(on_hangup: Callable[[], object] | None = None) -> None:
    """Until SIGTERM/SIGINT; SIGHUP calls `on_hangup` (reload) and keeps running."""
    await catch_signals(on_hangup).wait()
