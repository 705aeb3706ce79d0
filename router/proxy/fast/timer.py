"""One lazy timer per client connection, for whichever timeout applies at the moment: the
keep-alive idle timeout, the header timeout (slowloris), the gap allowed between body
chunks, or the idle timeout of an upgraded tunnel.

Lazy because the deadline moves on nearly every read: moving it later only stores a number,
and the loop timer, when it fires early, re-arms itself for the deadline as it stands. A
connection thus costs at most one loop timer however much traffic it carries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# What the timer is running for (0: nothing).
IDLE, HEADER, BODY, TUNNEL = 1, 2, 3, 4


class LazyTimer:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_due = on_due  # called with the kind whose deadline passed
        self.kind = 0
        self.deadline = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, kind: int, seconds: float) -> None:
        """Run for `kind`, due `seconds` from now."""
        self.kind = kind
        self.deadline = deadline = self.loop.time() + seconds
        if self._handle is not None:
            if self._handle.when() <= deadline:
                return  # fires early and re-arms for the new deadline
            self._handle.cancel()
        self._handle = self.loop.call_at(deadline, self._fire)

    def push_back(self, kind: int, seconds: float) -> None:
        """Activity: when running for `kind`, it is due `seconds` from now."""
        if self.kind == kind:
            self.deadline = self.loop.time() + seconds

    def stop(self, kind: int = 0) -> None:
        """Stop running (for `kind` only, when given); the loop timer lapses by itself."""
        if not kind or self.kind == kind:
            self.kind = 0

    def cancel(self) -> None:
        """The connection is gone: stop, and drop the loop timer."""
        self.kind = 0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        kind = self.kind
        if not kind:
            return
        if self.loop.time() < self.deadline:
            self._handle = self.loop.call_at(self.deadline, self._fire)
            return
        self.kind = 0
        self.on_due(kind)
