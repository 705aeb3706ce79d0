"""Logging setup, called only by the CLI: text or JSON lines with stable keys, timestamps
in UTC RFC 3339 (`2026-12-02T06:08:15.123Z`) in both."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from router.access_log import AccessJsonFormatter, CombinedFormatter


def rfc3339_utc(created: float) -> str:
    """`2026-12-02T06:08:15.123Z`: UTC, RFC 3339, milliseconds; the same in every log."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int((created % 1) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": rfc3339_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


# Control characters from the outside (a decoded request path, a replica id from an API)
# could forge extra lines in a text log; they are shown escaped instead.
_ESCAPE_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339_utc(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record).translate(_ESCAPE_CONTROLS)
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            extras = " ".join(f"{k}={v}" for k, v in access.items() if v not in (None, ""))
            line = f"{line} {extras.translate(_ESCAPE_CONTROLS)}"
        return line


# `--access-log-format` (a click callback sets it before a command calls `configure`).
access_format: str | None = None


def set_access_format(value: str | None) -> None:
    global access_format
    access_format = value


def configure(
    level: str = "info", fmt: str = "text", access_log: bool = False, access: str | None = None
) -> None:
    """Log to stderr as `fmt`; the access log (when on) as `access` (text, json, combined),
    by default like the other lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access_logger = logging.getLogger("router.access")
    access_logger.setLevel(logging.INFO if access_log else logging.WARNING)
    access = access or access_format
    access_logger.handlers.clear()
    access_logger.propagate = True
    formatters: dict[str, Callable[[], logging.Formatter]] = {
        "json": AccessJsonFormatter,
        "combined": CombinedFormatter,
        "text": TextFormatter,
    }
    if access is not None and access != fmt:
        own = logging.StreamHandler(sys.stderr)
        own.setFormatter(formatters[access]())
        access_logger.handlers.append(own)
        access_logger.propagate = False
    # Libraries log every connection at INFO; their failures reach us as exceptions anyway.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
