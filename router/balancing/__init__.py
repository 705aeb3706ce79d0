"""router.balancing: routing policies. `make_picker_factory(cfg.routing)` (in factory.py)
builds the configured policy; `build_snapshot` calls the factory for every snapshot.

The factory is imported lazily so that `router.geo` and `router.config`, which import the
settings and base modules of this package, do not pull in every policy (and a cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.balancing.factory import make_picker_factory

__all__ = ["make_picker_factory"]


def __getattr__(name: str) -> object:
    if name == "make_picker_factory":
        from router.balancing.factory import make_picker_factory

        return make_picker_factory
    raise AttributeError(f"module 'router.balancing' has no attribute {name!r}")
