"""router.balancing: routing policies and geo. `make_picker_factory(cfg.routing)` (in
factory.py) builds the configured policy; `build_snapshot` calls the factory for every
snapshot. `regions.py` knows where regions are, `locate.py` where a client is."""

from __future__ import annotations

from router.balancing.factory import make_picker_factory

__all__ = ["make_picker_factory"]
