"""/metrics with several apps: one view of every app's replicas for the metrics, and the
`app` label added to every per-replica series.

The metrics read one snapshot (replica states, which replicas' counters to keep); with
`apps:` that is `merged_snapshot` of every app's current one, republished whenever any app's
reconciler publishes. The label is added to the collected families at scrape time, so the
counters stay keyed by replica id and a config without `apps:` scrapes exactly as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric

from router.snapshot import Snapshot


def merged_snapshot(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Every app's replicas in one snapshot, for observers (never for routing)."""
    first, *rest = snapshots
    statuses = first.statuses + tuple(s for snap in rest for s in snap.statuses)
    hashes: dict[str, int] = dict(first.compose_hashes)
    for snap in rest:
        for compose_hash, n in snap.compose_hashes.items():
            hashes[compose_hash] = hashes.get(compose_hash, 0) + n
    return dataclasses.replace(
        first,
        statuses=statuses,
        routable=first.routable + tuple(r for snap in rest for r in snap.routable),
        compose_hashes=hashes,
        by_id={s.replica.id: s for s in statuses},
    )


def label_apps(families: Iterable[Metric], app_of: Mapping[str, str]) -> None:
    """Add `app` (the app owning the sample's replica; "" for none) to each sample with a
    `replica` label, in place."""
    for family in families:
        if not family.samples or "replica" not in family.samples[0].labels:
            continue
        family.samples = [
            sample._replace(
                labels={**sample.labels, "app": app_of.get(sample.labels["replica"], "")}
            )
            for sample in family.samples
        ]
