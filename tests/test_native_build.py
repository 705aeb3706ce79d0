"""The compiled hot path and its pure-Python twin: which one runs, and how to force pure.

`make test` runs the engine suites twice, once with PHALA_ROUTER_PURE=1; these tests check
that the switch really swaps the code that runs, that `--version` and /status name the
build, and that the build step falls back to pure Python instead of failing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router import native
from router.config import parse_config
from router.status import router_facts

ROOT = Path(__file__).resolve().parent.parent
FAST_SERVER = "router.proxy.fast.server"


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != native.PURE_ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True
    )
    return done.stdout.strip()


def _compiled_installed() -> bool:
    return any(native.source_path(FAST_SERVER).parent.glob("server.*.so"))


@pytest.mark.parametrize(
    ("value", "pure"),
    [("1", True), ("yes", True), ("", False), ("0", False), ("false", False), ("off", False)],
)
def test_pure_switch_reads_the_usual_truthy_values(value: str, pure: bool) -> None:
    assert native.pure_requested({native.PURE_ENV: value}) is pure


def test_pure_switch_loads_every_hot_path_module_from_its_source() -> None:
    code = (
        "import importlib, router.native as n\n"
        "print(all(importlib.import_module(m).__file__.endswith('.py') "
        "for m in n.COMPILED_MODULES))\n"
        "print(n.build_kind())"
    )
    assert _run(code, PHALA_ROUTER_PURE="1").splitlines() == ["True", "pure"]


def test_version_names_the_build() -> None:
    out = _run(
        "from router.cli import main; main(['--version'])",
        PHALA_ROUTER_PURE="1",
    )
    assert out.startswith("phala-router, version ")
    assert out.endswith("pure Python, PHALA_ROUTER_PURE=1")


@pytest.mark.skipif(
    not _compiled_installed(), reason="no compiled hot path installed (no C compiler at install)"
)
def test_compiled_build_runs_by_default() -> None:
    code = (
        f"import {FAST_SERVER} as s, router.native as n; print(s.__file__); print(n.build_kind())"
    )
    origin, kind = _run(code).splitlines()
    assert origin.endswith(".so")
    assert kind == "compiled"


def test_status_facts_carry_the_build() -> None:
    facts = router_facts(
        version="1",
        build=native.build_description(),
        started_at=0.0,
        now=1.0,
        addresses=[("127.0.0.1", 8080)],
        tls=False,
        workers=1,
        verifier=None,
        last_reload=None,
        certificate_expires_at=None,
    )
    assert facts["build"] == native.build_description()


def test_build_without_a_compiler_installs_pure_python() -> None:
    environ = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    environ["CC"] = "/nonexistent/cc"
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environ,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no C compiler found: installing pure Python" in done.stderr


def test_pure_switch_is_not_read_as_a_config_override() -> None:
    """PHALA_ROUTER_* variables are config overrides; the build switch is not one."""
    data = {"discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:1"}]}}
    config = parse_config(data, {native.PURE_ENV: "1"})
    assert config.proxy.engine == "fast"


def test_a_module_listed_after_the_build_counts_as_stale(tmp_path: Path) -> None:
    # `make compiled` rebuilds when stale_modules() names one: a module added to (or moved
    # within) COMPILED_MODULES since the build has no extension and must trigger it too.
    package = tmp_path / "router"
    (package / "proxy").mkdir(parents=True)
    for name in ("built", "added"):
        (package / "proxy" / f"{name}.py").write_text("")
    listed = ("router.proxy.built", "router.proxy.added")
    assert native.stale_modules(listed, package) == []  # nothing built: a pure install
    extension = package / "proxy" / "built.cpython-311-x86_64-linux-gnu.so"
    extension.write_bytes(b"")
    assert native.stale_modules(listed, package) == ["router.proxy.added"]
    source = package / "proxy" / "built.py"
    later = extension.stat().st_mtime + 10
    os.utime(source, (later, later))  # the source edited after the build
    assert native.stale_modules(listed, package) == ["router.proxy.built", "router.proxy.added"]
