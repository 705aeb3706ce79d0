"""Delivery of resources to the local Envoy through files (`path_config_source`).

Each resource set lives in its own file, written to a temporary name and renamed over the
old one: Envoy watches each path for that rename and never reads a half-written file.
Unchanged files are not rewritten, so a snapshot change touches only what it changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from router.proxy.envoy.resources import Json

KINDS = {
    "listeners": "lds",
    "clusters": "cds",
    "endpoints": "eds",
    "routes": "rds",
    "secrets": "sds",
}


class ResourceFiles:
    """The directory of resource files one Envoy reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._written: dict[Path, str] = {}
        self._version = 0

    def path(self, kind: str, name: str = "all") -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.directory / f"{KINDS[kind]}-{safe}.json"

    def source(self, kind: str, name: str = "all") -> Json:
        """The ConfigSource that points Envoy at this resource's file."""
        return {
            "path_config_source": {"path": str(self.path(kind, name))},
            "resource_api_version": "V3",
        }

    def write(self, kind: str, name: str, resources: list[Json]) -> bool:
        """Replace the file atomically when its resources changed; True if written."""
        path = self.path(kind, name)
        body = json.dumps(resources, sort_keys=True, separators=(",", ":"))
        if self._written.get(path) == body:
            return False
        self._version += 1
        document = {"version_info": str(self._version), "resources": resources}
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
        os.replace(temporary, path)
        self._written[path] = body
        return True
