"""Config of request routing (`routing:`)."""

from __future__ import annotations

from typing import Literal

from router.settings_types import Frozen


class RoutingConfig(Frozen):
    policy: Literal["round_robin"] = "round_robin"
    debug_headers: bool = False
