"""The part of the router's config the Envoy engine renders, as a structural type.

The Envoy engine moves no bytes: it translates routing, passive health, upstream TLS and
the listeners into Envoy's resources, so it needs more than an engine's `ProxySettings`
slice. `RouterConfig` satisfies this protocol; naming the sections here keeps the data
plane from importing the root config (and so from a package cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from router.apps.certificates import ServedCertificate
from router.balancing.settings import RoutingConfig
from router.health.settings import HealthConfig
from router.proxy.settings import ListenTLSConfig, ProxyConfig, UpstreamTLSConfig


class DiscoveryView(Protocol):
    @property
    def connect_to(self) -> Mapping[str, str]: ...


class AttestationView(Protocol):
    """The attestation settings the mapping reads (RA-TLS pins check the chain to it)."""

    @property
    def kms_root(self) -> Path | None: ...


class ConfigView(Protocol):
    @property
    def listen(self) -> str | None: ...
    @property
    def listen_tls(self) -> ListenTLSConfig | None: ...
    @property
    def routing(self) -> RoutingConfig: ...
    @property
    def proxy(self) -> ProxyConfig: ...
    @property
    def health(self) -> HealthConfig: ...
    @property
    def upstream_tls(self) -> UpstreamTLSConfig: ...
    @property
    def discovery(self) -> DiscoveryView: ...
    @property
    def attestation(self) -> AttestationView: ...
    @property
    def acme_webroot(self) -> Path | None: ...
    def listen_certificates(self) -> tuple[ServedCertificate, ...]: ...
