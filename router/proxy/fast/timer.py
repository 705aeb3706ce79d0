"""One coarse deadline sweep per engine instead of a loop timer per client connection.

Each client connection has one `ConnectionTimer` for whichever timeout applies at the
moment: the keep-alive idle timeout, the header timeout (slowloris), the gap allowed between
body chunks, or the idle timeout of an upgraded tunnel. Arming it, moving it or stopping it
only stores a kind and a deadline. One `DeadlineSweep` per engine (one loop timer in all)
wakes every `GRANULARITY` seconds while any connection is watched and fires the timers whose
deadline passed, so a timeout fires at most `GRANULARITY` late.

Why not a loop timer per connection: with a new client connection per request (keep-alive
off), creating and cancelling a uvloop timer per connection cost ~6 µs of the router's
~150 µs per request (bench/README.md, "Keep-alive off: one deadline sweep"). A deadline shorter than the time to the next sweep (sub-second timeouts, as in tests)
pulls the sweep earlier, so short timeouts keep their precision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# What a timer is running for (0: nothing).
IDLE, HEADER, BODY, TUNNEL = 1, 2, 3, 4

# Seconds between sweeps while connections are watched: how late a timeout may fire.
GRANULARITY = 0.25
_NEVER = float("inf")
_SLACK = 0.001


class DeadlineSweep:
    """The one loop timer of an engine's client connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, granularity: float = GRANULARITY) -> None:
        self.loop = loop
        self.granularity = granularity
        self.watched: set[ConnectionTimer] = set()  # timers of the open connections
        self.next_sweep = _NEVER  # when the scheduled sweep runs (never: none scheduled)
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, timer: ConnectionTimer) -> None:
        """A connection's timer, until it `forget`s it (when the connection is gone)."""
        self.watched.add(timer)

    def forget(self, timer: ConnectionTimer) -> None:
        self.watched.discard(timer)

    def due_by(self, deadline: float) -> None:
        """Make sure a sweep runs by `deadline` (called only when it is before next_sweep)."""
        if self._handle is not None:
            self._handle.cancel()
        self.next_sweep = deadline
        self._handle = self.loop.call_at(deadline, self._sweep)

    def close(self) -> None:
        """The engine stopped: no more sweeps."""
        self.watched.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.next_sweep = _NEVER

    def _sweep(self) -> None:
        self._handle = None
        self.next_sweep = _NEVER
        # The loop clock has millisecond steps: a sweep called for a deadline may see it
        # a hair early.
        now = self.loop.time() + _SLACK
        due = [t for t in self.watched if t.kind and t.deadline <= now]
        for timer in due:
            timer.fire(now)  # may close connections: they leave `watched`, not this list
        if self.watched and self.next_sweep == _NEVER:
            self.due_by(now + self.granularity)


class ConnectionTimer:
    """One connection's timeout: a kind and a deadline, checked by the engine's sweep."""

    def __init__(self, sweep: DeadlineSweep, on_due: Callable[[int], None]) -> None:
        self.sweep = sweep
        self.on_due = on_due  # called with the kind whose deadline passed
        self.kind = 0
        self.deadline = 0.0
        self.watched = False

    def arm(self, kind: int, seconds: float) -> None:
        """Run for `kind`, due `seconds` from now."""
        sweep = self.sweep
        now = sweep.loop.time()
        self.kind = kind
        self.deadline = deadline = now + seconds
        if not self.watched:
            self.watched = True
            sweep.watch(self)
        if deadline < sweep.next_sweep:  # rare: no sweep yet, or a sub-granularity timeout
            sweep.due_by(min(deadline, now + sweep.granularity))

    def push_back(self, kind: int, seconds: float) -> None:
        """Activity: when running for `kind`, it is due `seconds` from now."""
        if self.kind == kind:
            self.deadline = self.sweep.loop.time() + seconds

    def stop(self, kind: int = 0) -> None:
        """Stop running (for `kind` only, when given)."""
        if not kind or self.kind == kind:
            self.kind = 0

    def cancel(self) -> None:
        """The connection is gone: stop, and leave the sweep."""
        self.kind = 0
        if self.watched:
            self.watched = False
            self.sweep.forget(self)

    def fire(self, now: float) -> None:
        """Called by the sweep: run `on_due` if still due (an earlier timer may have moved it)."""
        kind = self.kind
        if kind and self.deadline <= now:
            self.kind = 0
            self.on_due(kind)
