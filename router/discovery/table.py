"""`phala-router replicas`: one discovery pass shown as a table, or as JSON for machines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.models import Replica

COLUMNS = ("instance", "region", "status", "url", "compose")


def replica_rows(replicas: Sequence[Replica]) -> list[dict[str, Any]]:
    """JSON-ready records, one per replica, sorted by region then id."""
    return [
        {
            "id": r.id,
            "region": r.region,
            "status": r.platform_status,
            "candidate": r.is_candidate,
            "url": r.url,
            "host": r.host,
            "compose_hash": r.compose_hash,
            "app_id": r.app_id,
            **{k: v for k, v in r.metadata.items() if k not in {"status"}},
        }
        for r in sorted(replicas, key=lambda r: (r.region or "", r.id))
    ]


def render_table(replicas: Sequence[Replica]) -> str:
    """A plain-text table: instance, region, status, URL, short compose hash."""
    rows = [
        (
            row["id"],
            row["region"] or "-",
            row["status"],
            row["url"],
            (row["compose_hash"] or "-")[:12],
        )
        for row in replica_rows(replicas)
    ]
    if not rows:
        return "no replicas"
    header = tuple(c.upper() for c in COLUMNS)
    widths = [max(len(str(line[i])) for line in (header, *rows)) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    ]
    running = sum(1 for r in replicas if r.is_candidate)
    return "\n".join([*lines, f"{len(rows)} replica(s), {running} running"])
