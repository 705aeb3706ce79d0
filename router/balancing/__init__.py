"""router.balancing: routing policies. `make_picker_factory(cfg.routing)` builds the one
configured policy; `build_snapshot` calls the factory for every snapshot."""

from router.balancing.factory import make_picker_factory

__all__ = ["make_picker_factory"]
