"""The sticky hash tables (`routing.sticky.hash`): build time, memory, remapping, balance.

Run by `python -m bench.selection` (see its docstring). Build time is the best of three
builds without tracing; memory is what tracemalloc sees the finished table hold (retained)
and the most the build held at once (peak). Remapping counts, over 100,000 keys, the keys
whose replica changes when one of N equal replicas leaves; the departed replica's own
share is the least any scheme can move. Balance is the largest relative gap between a
replica's exact share of the key space in the table and 1/N (rendezvous has no table:
each key lands on a replica with probability exactly 1/N).
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from router.balancing.keyhash import hash64
from router.balancing.settings import StickyConfig
from router.balancing.tables import KeyTable, make_table

BUILD_SIZES = (1_000, 10_000)
REMAP_SIZES = (10, 100, 1_000)
KEYS = 100_000
# Rendezvous scores every replica per key: fewer keys at 1,000 replicas keep this quick.
RENDEZVOUS_KEYS_AT_1000 = 10_000
VARIANTS: dict[str, StickyConfig] = {
    "maglev (M=65,537)": StickyConfig(hash="maglev"),
    "maglev (M=655,373)": StickyConfig(hash="maglev", maglev_table_size=655_373),
    "ring (<= 65,536 points)": StickyConfig(hash="ring"),
    "ring (<= 655,360 points)": StickyConfig(hash="ring", ring_size=655_360),
    "rendezvous": StickyConfig(hash="rendezvous"),
}


def _ids(n: int) -> list[str]:
    return [f"app-{n}-replica-{i}" for i in range(n)]


def _build(cfg: StickyConfig, n: int) -> KeyTable:
    return make_table(cfg, _ids(n), [100.0] * n)


def build_cost(cfg: StickyConfig, n: int) -> dict[str, float]:
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        _build(cfg, n)
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = _build(cfg, n)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del table
    return {
        "build_s": round(min(seconds), 4),
        "retained_kib": round((retained - before) / 1024, 1),
        "peak_kib": round((peak - before) / 1024, 1),
    }


def measure_builds() -> list[dict[str, Any]]:
    print(f"\n{'table build':24}{'replicas':>10}{'build':>11}{'retained':>13}{'peak':>13}")
    rows: list[dict[str, Any]] = []
    for label, cfg in VARIANTS.items():
        for n in BUILD_SIZES:
            cost = build_cost(cfg, n)
            rows.append({"hash": label, "replicas": n, **cost})
            print(
                f"{label:24}{n:>10,}{cost['build_s'] * 1000:>8.0f} ms"
                f"{cost['retained_kib']:>9.0f} KiB{cost['peak_kib']:>9.0f} KiB"
            )
    return rows


def remap(cfg: StickyConfig, n: int, keys: list[int]) -> dict[str, float]:
    names = _ids(n)
    gone = n // 2
    rest = names[:gone] + names[gone + 1 :]
    before = make_table(cfg, names, [100.0] * n)
    after = make_table(cfg, rest, [100.0] * (n - 1))
    moved = held = 0
    for key in keys:
        old = before.pick(key)
        held += old == gone
        moved += names[old] != rest[after.pick(key)]
    return {
        "keys": len(keys),
        "moved": moved / len(keys),
        "moved_x_n": moved / len(keys) * n,
        "departed_share": held / len(keys),
        "max_share_gap": max(abs(share * n - 1) for share in before.shares()),
    }


def measure_remapping() -> list[dict[str, Any]]:
    keys = [hash64(f"session-{i}") for i in range(KEYS)]
    print(
        f"\n{'one of N leaves':24}{'N':>6}{'keys moved':>12}{'x 1/N':>8}"
        f"{'departed':>10}{'balance gap':>13}"
    )
    rows: list[dict[str, Any]] = []
    for label, cfg in VARIANTS.items():
        for n in REMAP_SIZES:
            sample = keys
            if cfg.hash == "rendezvous" and n >= 1_000:
                sample = keys[:RENDEZVOUS_KEYS_AT_1000]
            result = remap(cfg, n, sample)
            rows.append({"hash": label, "replicas": n, **result})
            print(
                f"{label:24}{n:>6}{result['moved']:>11.2%}{result['moved_x_n']:>8.2f}"
                f"{result['departed_share']:>9.2%}{result['max_share_gap']:>12.1%}"
            )
    return rows
