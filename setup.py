"""Build hook: compile the fast engine's hot path with mypyc when possible, else stay pure.

Everything else about the package is in pyproject.toml. The compiled build is an
optimisation, never a requirement: without mypyc, without a C compiler, with
PHALA_ROUTER_PURE=1, or when any step of the compile fails, this prints why and installs
the pure-Python package (the same sources), so `pip install -e .` never fails for it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _native() -> Any:
    """router/native.py, loaded by path (importing `router` would run its __init__)."""
    spec = importlib.util.spec_from_file_location("_router_native", HERE / "router" / "native.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _say(message: str) -> None:
    print(f"phala-router build: {message}", file=sys.stderr)


def _compiler_present() -> bool:
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python when compiling fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any compiler or linker failure
            _say(f"compiling the hot path failed ({exc}); installing pure Python")
            self._remove_outputs()

    def _remove_outputs(self) -> None:
        # Half a build must not shadow the sources: drop every extension written in place.
        for ext in self.extensions:
            path = Path(self.get_ext_fullpath(ext.name))
            path.unlink(missing_ok=True)
        self.extensions = []

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if Path(path).exists()]


# setup.py also runs for metadata only (egg_info, dist_info): translate just for builds.
_BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def _mypyc_extensions() -> list[Any]:
    if not _BUILD_COMMANDS.intersection(sys.argv[1:]):
        return []
    native = _native()
    if native.pure_requested():
        _say(f"{native.PURE_ENV} is set: installing pure Python")
        return []
    if not _compiler_present():
        _say("no C compiler found: installing pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not installed: installing pure Python")
        return []
    paths = [str(native.source_path(m).relative_to(HERE)) for m in native.COMPILED_MODULES]
    try:
        return list(
            mypycify(
                ["--config-file", str(HERE / "mypyc.ini"), *paths],
                opt_level="3",
                group_name="router.hotpath",
            )
        )
    except BaseException as exc:  # mypyc exits (SystemExit) on a type error
        _say(f"mypyc could not translate the hot path ({exc!r}); installing pure Python")
        return []


setup(ext_modules=_mypyc_extensions(), cmdclass={"build_ext": OptionalBuildExt})
