"""In-flight request counts per replica, shared by the engines, pickers and metrics.

Its own module, outside the compiled hot path (router/native.py): a `dict` subclass cannot
be a mypyc native class, and keeping it a dict lets least-request, metrics and the status
page read it as a plain `Mapping`. The compiled engines update it inline.
"""

from __future__ import annotations


class InFlightCounter(dict[str, int]):
    """In-flight requests per replica id; read by least-request, written by the engine."""

    def enter(self, replica_id: str) -> None:
        self[replica_id] = self.get(replica_id, 0) + 1

    def leave(self, replica_id: str) -> None:
        left = self.get(replica_id, 1) - 1
        if left > 0:
            self[replica_id] = left
        else:
            self.pop(replica_id, None)
