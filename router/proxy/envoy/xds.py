"""xDS over gRPC: an ADS server (state of the world, and delta: xds_delta.py) for Envoys
on other machines.

The same rendered resources the local Envoy reads from files are served here, with config
sources pointing at ADS. Any number of Envoys subscribe with `ads_bootstrap()`; several
routers may serve the same Envoys (each Envoy lists them as its xDS cluster's endpoints).
Protocol: Envoy's xDS SotW (a response carries every subscribed resource of one type;
a request echoing our nonce with our version is an ACK, with `error_detail` a NACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format

from router.errors import StartupError
from router.proxy.envoy.resources import Json
from router.proxy.envoy.settings import XdsTLSConfig
from router.proxy.envoy.xds_delta import (
    DeltaStream,
    apply_request,
    delta_response,
    resource_version,
)

log = logging.getLogger(__name__)

# Importing these registers every message type the rendered resources name in `@type`.
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402, F401
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402, F401
from envoy.config.listener.v3 import listener_pb2  # noqa: E402, F401
from envoy.config.route.v3 import route_pb2  # noqa: E402, F401
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: E402, F401
from envoy.extensions.filters.http.geoip.v3 import geoip_pb2  # noqa: E402, F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: E402, F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: E402, F401
from envoy.extensions.filters.listener.tls_inspector.v3 import (  # noqa: E402, F401
    tls_inspector_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: E402, F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: E402, F401
from envoy.extensions.geoip_providers.maxmind.v3 import maxmind_pb2  # noqa: E402, F401
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (  # noqa: E402, F401
    header_mutation_pb2,
)
from envoy.extensions.matching.common_inputs.network.v3 import (  # noqa: E402, F401
    network_inputs_pb2,
)
from envoy.extensions.matching.input_matchers.ip.v3 import ip_pb2  # noqa: E402, F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: E402, F401
from envoy.extensions.transport_sockets.internal_upstream.v3 import (  # noqa: E402, F401
    internal_upstream_pb2,
)
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: E402, F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: E402, F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: E402, F401
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # noqa: E402
from google.protobuf import wrappers_pb2  # noqa: E402, F401

# Envoy asks for these type URLs; names are listed only for the named kinds.
WILDCARD_TYPES = frozenset(
    {
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    }
)


def _resource_name(resource: Json) -> str:
    return str(resource.get("name") or resource.get("cluster_name"))


def to_any(resource: Json) -> any_pb2.Any:
    """A rendered resource (JSON with `@type`) as the protobuf Any that xDS carries."""
    packed = any_pb2.Any()
    json_format.ParseDict(resource, packed)
    return packed


@dataclass(eq=False)  # compared by identity: one per open stream
class _Stream:
    """One subscribed Envoy: what it asked for and what it was last sent, per type."""

    names: dict[str, set[str]] = field(default_factory=dict)
    sent: dict[str, str] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def server_credentials(tls: XdsTLSConfig) -> grpc.ServerCredentials:
    """The router's certificate; with a client CA, Envoys must show one of its certificates."""
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, listen: str, tls: XdsTLSConfig | None = None) -> None:
        self.listen = listen
        self.tls = tls
        self._resources: dict[str, dict[str, any_pb2.Any]] = {}
        self._resource_versions: dict[str, dict[str, str]] = {}
        self._versions: dict[str, str] = {}
        self._json: dict[str, list[Json]] = {}
        self._counter = itertools.count(1)
        self._nonces = itertools.count(1)
        self._streams: set[_Stream | DeltaStream] = set()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    def update(self, resources: Iterable[Json]) -> None:
        """Replace the whole resource set; types whose resources changed get a version."""
        by_type: dict[str, list[Json]] = {}
        for resource in resources:
            by_type.setdefault(str(resource["@type"]), []).append(resource)
        changed = False
        for type_url in set(by_type) | set(self._json):
            items = by_type.get(type_url, [])
            if self._json.get(type_url) == items:
                continue
            self._json[type_url] = items
            self._resources[type_url] = {_resource_name(r): to_any(r) for r in items}
            self._resource_versions[type_url] = {
                name: resource_version(packed) for name, packed in self._resources[type_url].items()
            }
            self._versions[type_url] = str(next(self._counter))
            changed = True
        if changed:
            for stream in self._streams:
                stream.wake.set()

    def _response(self, type_url: str, names: set[str]) -> Any:
        version = self._versions.get(type_url, "0")
        held = self._resources.get(type_url, {})
        chosen = (
            list(held.values())
            if type_url in WILDCARD_TYPES or not names
            else [held[n] for n in sorted(names) if n in held]
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            resources=chosen,
            type_url=type_url,
            nonce=str(next(self._nonces)),
        )

    async def StreamAggregatedResources(  # the gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        stream = _Stream()
        self._streams.add(stream)
        reader = asyncio.ensure_future(self._read(request_iterator, stream))
        try:
            while not reader.done():
                await stream.wake.wait()
                stream.wake.clear()
                for type_url, names in list(stream.names.items()):
                    version = self._versions.get(type_url, "0")
                    if stream.sent.get(type_url) != version:
                        stream.sent[type_url] = version
                        yield self._response(type_url, names)
        finally:
            self._streams.discard(stream)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def DeltaAggregatedResources(  # the gRPC method name (xds_delta.py)
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        stream = DeltaStream()
        self._streams.add(stream)
        reader = asyncio.ensure_future(self._read_delta(request_iterator, stream))
        try:
            while not reader.done():
                await stream.wake.wait()
                stream.wake.clear()
                for type_url in list(stream.names):
                    response = delta_response(
                        stream,
                        type_url,
                        self._resources.get(type_url, {}),
                        self._resource_versions.get(type_url, {}),
                        str(next(self._nonces)),
                    )
                    if response is not None:
                        yield response
        finally:
            self._streams.discard(stream)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_delta(self, requests: AsyncIterator[Any], stream: DeltaStream) -> None:
        async for request in requests:
            apply_request(stream, request, WILDCARD_TYPES)
            stream.wake.set()
        stream.wake.set()

    async def _read(self, requests: AsyncIterator[Any], stream: _Stream) -> None:
        async for request in requests:
            type_url = request.type_url
            if request.HasField("error_detail"):
                log.error(
                    "xDS client %s rejected %s version %s: %s",
                    request.node.id,
                    type_url,
                    request.version_info,
                    request.error_detail.message,
                )
            names = set(request.resource_names)
            if stream.names.get(type_url) != names:
                stream.names[type_url] = names
                stream.sent.pop(type_url, None)  # a new subscription gets the current set
            stream.wake.set()
        stream.wake.set()

    async def start(self) -> None:
        self._server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        if self.tls is None:
            self.port = self._server.add_insecure_port(self.listen)
        else:
            self.port = self._server.add_secure_port(self.listen, server_credentials(self.tls))
        if self.port == 0:
            raise StartupError(f"proxy.envoy.xds_listen {self.listen!r}: cannot listen there")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
