"""Which build of the hot path is running: mypyc-compiled or pure Python.

`setup.py` compiles the modules named in `COMPILED_MODULES` with mypyc when a C compiler
is present; the compiled extension files sit next to the sources and Python's import
system prefers them. `PHALA_ROUTER_PURE=1` forces the pure-Python twin: at build time
nothing is compiled, and at import time `router/__init__.py` installs a finder that loads
these modules from their `.py` sources even when the compiled files exist (so one install
can run, test and benchmark both builds).

This module must import nothing from `router`: `setup.py` loads it by path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

PURE_ENV = "PHALA_ROUTER_PURE"

# The per-request modules of the fast engine and what they call on every request.
COMPILED_MODULES: tuple[str, ...] = (
    "router.proxy.fast.server",
    "router.proxy.fast.timer",
    "router.proxy.fast.core",
    "router.proxy.fast.exchange",
    "router.proxy.fast.local_answers",
    "router.proxy.fast.relay",
    "router.proxy.fast.upstream",
    "router.proxy.fast.pool",
    "router.proxy.fast.rules",
    "router.proxy.fast.outbox",
    "router.proxy.fast.wire",
    "router.proxy.fast.strict",
    "router.proxy.fast.retrying",
    "router.proxy.base",
    "router.metrics_tally",
    "router.proxy.request_rules",
    "router.proxy.framing",
    "router.proxy.admission",
    "router.balancing.base",
    "router.balancing.group",
    "router.balancing.round_robin",
    "router.balancing.least_request",
    "router.health.passive",
    "router.health.state",
)

_PACKAGE_ROOT = Path(__file__).resolve().parent


def pure_requested(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """True when PHALA_ROUTER_PURE asks for pure Python (any value but empty, 0, false, no)."""
    value = (os.environ if environ is None else environ).get(PURE_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def source_path(module: str, root: Path = _PACKAGE_ROOT) -> Path:
    """The `.py` file of one of the `COMPILED_MODULES` (`root`: the `router` package)."""
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


class PureFinder(MetaPathFinder):
    """Loads the compiled modules from their sources, ahead of the extension files."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def force_pure_if_requested() -> None:
    """Called by `router/__init__.py` before any hot-path module is imported."""
    if pure_requested() and not any(isinstance(f, PureFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, PureFinder())


def compiled_modules() -> list[str]:
    """The hot-path modules that import (or would import) from a compiled extension."""
    compiled = []
    for module in COMPILED_MODULES:
        loaded = sys.modules.get(module)
        origin = getattr(loaded, "__file__", None) if loaded is not None else None
        if origin is None:
            spec = importlib.util.find_spec(module)
            origin = spec.origin if spec is not None else None
        if origin is not None and not origin.endswith(".py"):
            compiled.append(module)
    return compiled


def stale_modules(
    modules: Sequence[str] = COMPILED_MODULES, root: Path = _PACKAGE_ROOT
) -> list[str]:
    """Compiled modules whose `.py` source changed after the build (in an editable install
    the extension still wins, so the edit does not run until `pip install -e .` again), and,
    when some are built, those listed but not built (added or moved since: they run as
    Python until the next build)."""
    stale = []
    unbuilt = []
    for module in modules:
        source = source_path(module, root)
        built = list(source.parent.glob(f"{source.stem}.*.so"))
        if not built:
            unbuilt.append(module)
        if any(source.stat().st_mtime > b.stat().st_mtime for b in built):
            stale.append(module)
    if len(unbuilt) < len(modules):  # some were built: the rest are missing
        stale += unbuilt
    return stale


def build_kind() -> str:
    """`compiled`, `pure` or `mixed` (some modules compiled, some not)."""
    count = len(compiled_modules())
    if count == 0:
        return "pure"
    return "compiled" if count == len(COMPILED_MODULES) else "mixed"


def build_description() -> str:
    """One line for `--version` and /status."""
    count = len(compiled_modules())
    if count == 0:
        why = f", {PURE_ENV}=1" if pure_requested() else ""
        return f"pure Python{why}"
    stale = len(stale_modules())
    warning = f"; {stale} stale, rebuild with pip install -e ." if stale else ""
    return f"compiled (mypyc: {count} of {len(COMPILED_MODULES)} hot-path modules{warning})"
