"""Config of Phala Cloud discovery (`discovery.phala:`). Filled in by the discovery issue."""

from __future__ import annotations

from router.settings_types import Frozen


class PhalaDiscoveryConfig(Frozen):
    app_id: str
