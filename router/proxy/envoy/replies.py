"""Replies Envoy makes itself, in the Python engines' words: the 503 while nothing is
routable, 421 for a host no app serves, 413 for a declared body over the limit, and the
route that hands ACME challenges to the router. Pure."""

from __future__ import annotations

import json
from typing import Any

from router.proxy.base import no_routable_error
from router.proxy.envoy.resources import Json
from router.snapshot import Snapshot

EVERY_PATH: Json = {"prefix": "/"}
NO_REPLICA_RETRY_AFTER = "5"


def header(name: str, value: str, action: str = "OVERWRITE_IF_EXISTS_OR_ADD") -> Json:
    return {"header": {"key": name, "value": value}, "append_action": action}


def no_replica_route(snapshot: Snapshot, path: Json = EVERY_PATH) -> Json:
    """The 503 naming replica states, answered by Envoy itself while nothing is routable."""
    error = no_routable_error(snapshot)
    return {
        "match": dict(path),
        "direct_response": {
            "status": 503,
            "body": {"inline_string": json.dumps(error.body(), separators=(",", ":"))},
        },
        "response_headers_to_add": [
            header("Retry-After", NO_REPLICA_RETRY_AFTER),
            header("Content-Type", "application/json"),
        ],
    }


# Envoy's header range match takes a signed 64-bit end (exclusive); longer numbers are
# matched by their digit count instead.
_INT64_END = 2**63 - 1


def _json_reply(status: int, body: dict[str, Any], path: Json = EVERY_PATH, **match: Any) -> Json:
    return {
        "match": {**path, **match},
        "direct_response": {"status": status, "body": {"inline_string": json.dumps(body)}},
        "response_headers_to_add": [header("Content-Type", "application/json")],
    }


def body_limit_routes(limit: int) -> list[Json]:
    """proxy.max_request_body: a declared Content-Length over the limit gets the Python
    engines' 413 before any replica is chosen. A chunked body is not counted (Envoy would
    have to buffer it whole): docs/envoy.md."""
    too_large = {"error": "body_too_large"}
    over: list[Json] = [
        {"name": "content-length", "range_match": {"start": limit + 1, "end": _INT64_END}}
    ]
    huge: list[Json] = [
        {"name": "content-length", "string_match": {"safe_regex": {"regex": r"^[0-9]{19,}$"}}}
    ]
    return [_json_reply(413, too_large, headers=over), _json_reply(413, too_large, headers=huge)]


def acme_route(cluster: str) -> Json:
    """acme_webroot: challenge requests go to the router's own challenge server."""
    return {
        "match": {"prefix": "/.well-known/acme-challenge/"},
        "route": {"cluster": cluster, "timeout": "5s"},
    }


def misdirected_route(path: Json = EVERY_PATH) -> Json:
    """421 for a Host (and path) no app serves on this connection, as the Python engines."""
    return _json_reply(421, {"error": "misdirected_request"}, path)
