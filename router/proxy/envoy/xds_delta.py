"""Incremental (delta) xDS on the router's ADS port: each subscribed Envoy is sent only the
resources that changed since what it holds, and the names of those that went away.

State of the world resends every endpoint of a type when one changes; with many replicas
and many Envoys, delta sends one load assignment. The router serves both on one port and
each Envoy chooses (`python -m router.proxy.envoy.bootstrap --delta`). A resource's version
is a digest of its serialized form, so an Envoy reconnecting with `initial_resource_versions`
gets only what changed while it was away.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

log = logging.getLogger(__name__)
WILDCARD = "*"


def resource_version(packed: any_pb2.Any) -> str:
    return hashlib.sha256(packed.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(eq=False)  # compared by identity: one per open stream
class DeltaStream:
    """One Envoy on a delta stream: per type, what it subscribed to and holds."""

    wildcard: dict[str, bool] = field(default_factory=dict)
    names: dict[str, set[str]] = field(default_factory=dict)
    held: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> version
    answered: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def apply_request(stream: DeltaStream, request: Any, wildcard_types: frozenset[str]) -> None:
    """A subscription change, an ACK or a NACK (logged with Envoy's reason)."""
    type_url = request.type_url
    if request.HasField("error_detail"):
        log.error(
            "xDS client %s rejected %s (delta): %s",
            request.node.id,
            type_url,
            request.error_detail.message,
        )
    subscribe = set(request.resource_names_subscribe)
    unsubscribe = set(request.resource_names_unsubscribe)
    if type_url not in stream.names:  # the first request of this type on the stream
        stream.names[type_url] = set()
        stream.held[type_url] = dict(request.initial_resource_versions)
        stream.wildcard[type_url] = type_url in wildcard_types and not subscribe
    if WILDCARD in subscribe:
        stream.wildcard[type_url] = True
    if WILDCARD in unsubscribe:
        stream.wildcard[type_url] = False
    stream.names[type_url] |= subscribe - {WILDCARD}
    stream.names[type_url] -= unsubscribe
    for name in unsubscribe:
        stream.held[type_url].pop(name, None)  # the client dropped it


def delta_response(
    stream: DeltaStream,
    type_url: str,
    current: Mapping[str, any_pb2.Any],
    versions: Mapping[str, str],
    nonce: str,
) -> Any | None:
    """What changed for this stream since what it holds; None when nothing did (and the
    first request of the type was answered)."""
    held = stream.held[type_url]
    wanted = set(current) if stream.wildcard[type_url] else stream.names[type_url] & set(current)
    changed = [n for n in sorted(wanted) if held.get(n) != versions[n]]
    removed = sorted(n for n in held if n not in wanted)
    if not changed and not removed and type_url in stream.answered:
        return None
    stream.answered.add(type_url)
    for name in changed:
        held[name] = versions[name]
    for name in removed:
        del held[name]
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url,
        resources=[
            discovery_pb2.Resource(name=n, version=versions[n], resource=current[n])
            for n in changed
        ],
        removed_resources=removed,
        nonce=nonce,
    )
