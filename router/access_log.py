"""The access log: one line per request (`--access-log`), in the router's own log format, as
JSON lines, or in the combined format that log tools already parse
(`--access-log-format json|combined`).

It is a `TrafficObserver` like metrics, so both engines feed it the same `RequestRecord`; the
request headers in a record stay undecoded until a line is actually written.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qsl, quote

from router.models import Replica
from router.proxy.base import RequestRecord

access_log = logging.getLogger("router.access")
FORMATS = ("text", "json", "combined")


# Query parameters that often carry credentials: their values never reach the log.
_SECRET_PARAM = re.compile(r"key|token|secret|passw|auth|sig|credential|session|code", re.I)


def redacted_query(query: str) -> str:
    """The query string with the values of credential-looking parameters replaced by ***."""
    if not query or not _SECRET_PARAM.search(query):
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(
        quote(k, safe="") + "=" + ("***" if _SECRET_PARAM.search(k) else quote(v, safe=""))
        for k, v in pairs
    )


def _micro(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The fields of one access-log line, durations rounded to microseconds."""
    replica = record.replica
    headers = record.headers
    return {
        "request_id": record.request_id,
        "client": record.client,
        "method": record.method,
        "host": record.host,
        "path": record.path,
        "query": redacted_query(record.query),
        "protocol": record.protocol,
        "status": record.status,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "user_agent": headers.get("User-Agent") if headers is not None else None,
        "referer": headers.get("Referer") if headers is not None else None,
        "replica": replica.id if replica else None,
        "region": replica.region if replica else None,
        "upstream_seconds": _micro(record.upstream_seconds),
        "total_seconds": _micro(record.total_seconds),
        "retries": record.retries,
        # Attempts given up for another replica, in order: replica:outcome.
        "attempts": ",".join(f"{r}:{o}" for r, o in record.attempts) or None,
        "retry_budget_exhausted": record.retry_budget_exhausted or None,
        "error": record.error,
        "route": record.explanation,
    }


class AccessLog:
    """One line per request, off by default (`--access-log`)."""

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        return None

    def request_done(self, record: RequestRecord) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %s",
                record.method,
                record.path,
                record.status,
                extra={"access": access_fields(record)},
            )


def _utc(created: float, micro: bool = True) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return stamp + (f".{int(created % 1 * 1_000_000):06d}Z" if micro else "Z")


class AccessJsonFormatter(logging.Formatter):
    """A JSON object per line: `time` (RFC 3339, UTC) and the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "access", None) or {"message": record.getMessage()}
        return json.dumps({"time": _utc(record.created), **fields}, separators=(",", ":"))


def _quoted(value: object) -> str:
    """A combined-log quoted field: `-` when empty; quotes, backslashes and control
    characters escaped so one request is always one parseable line."""
    if value is None or value == "":
        return '"-"'
    text = str(value)
    out = []
    for char in text:
        if char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


_COMBINED_EXTRAS = (
    "request_id",
    "host",
    "replica",
    "upstream_seconds",
    "total_seconds",
    "retries",
    "attempts",
    "retry_budget_exhausted",
    "error",
    "route",
)


class CombinedFormatter(logging.Formatter):
    """NCSA combined format (Apache, nginx), then the router's own fields as key=value:
    `client - - [time] "request line" status bytes "referer" "user agent" rid=...`."""

    def format(self, record: logging.LogRecord) -> str:
        a = getattr(record, "access", None)
        if not isinstance(a, dict):
            return record.getMessage()
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(record.created))
        target = a["path"] + ("?" + a["query"] if a["query"] else "")
        request = f"{a['method']} {target} {a['protocol']}".strip()
        extras = " ".join(
            f"{key}={_quoted(a[key]) if key in ('route', 'error') else a[key]}"
            for key in _COMBINED_EXTRAS
            if a.get(key) not in (None, "", 0)
        )
        return (
            f"{a['client'] or '-'} - - [{stamp}] {_quoted(request)} {a['status']} "
            f"{a['bytes_out']} {_quoted(a['referer'])} {_quoted(a['user_agent'])} {extras}"
        ).rstrip()
