"""Config of DNS publishing (`dns:`)."""

from __future__ import annotations

from router.settings_types import Frozen


class DnsConfig(Frozen):
    name: str | None = None
