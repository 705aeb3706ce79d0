"""Builds the Attestor from the router config: the replica-side session, the Cloud API
client and the trusted simulator keys. Kept apart so `serve`, `attest` and the demo share it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import aiohttp
import httpx

from router.attestation.manager import Attestor
from router.attestation.ratls_gate import RaTlsGate
from router.config import RouterConfig
from router.connect_check import upstream_context
from router.errors import ConfigError
from router.models import AttestationVerdict
from router.upstream import make_connector

log = logging.getLogger(__name__)


def cloud_client(config: RouterConfig, environ: Mapping[str, str]) -> httpx.AsyncClient | None:
    phala = config.discovery.phala
    if phala is None:
        return None
    key = environ.get(phala.api_key_env, "")
    return httpx.AsyncClient(
        base_url=phala.api_url,
        headers={
            "X-API-Key": key,
            "X-Phala-Version": phala.api_version,
            "User-Agent": "phala-router",
        },
        timeout=config.attestation.timeout,
        follow_redirects=False,
    )


def _simulator_keys(config: RouterConfig, given: frozenset[bytes]) -> frozenset[bytes]:
    cfg = config.attestation
    keys = given | {bytes.fromhex(k) for k in cfg.simulator_public_keys}
    if cfg.verifier == "insecure-simulator" and not keys:
        raise ConfigError(
            "attestation.simulator_public_keys: verifier insecure-simulator needs the simulator's "
            "public key (printed by `phala-router simulate`)"
        )
    return frozenset(keys)


def build_ratls_gate(
    config: RouterConfig,
    sink: Callable[[AttestationVerdict], None],
    *,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> RaTlsGate | None:
    """The RA-TLS gate when `attestation.connection: ra-tls`, else None."""
    cfg = config.attestation
    if not cfg.ra_tls:
        return None
    phala = config.discovery.phala
    if phala is not None and not phala.tls_passthrough:
        log.warning(
            "attestation.connection is ra-tls but discovery.phala.tls_passthrough is off: the "
            "gateway ends TLS with its own certificate, so every replica will be refused "
            "(ra_tls_no_attestation). Set tls_passthrough: true and publish an RA-TLS port."
        )
    return RaTlsGate(
        cfg,
        phala.app_id if phala else None,
        sink,
        clock=clock,
        trusted_simulator_keys=_simulator_keys(config, trusted_simulator_keys),
    )


def build_attestor(
    config: RouterConfig,
    sink: Callable[[AttestationVerdict], None],
    *,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
) -> Attestor | None:
    cfg = config.attestation
    if not cfg.enabled:
        return None
    phala = config.discovery.phala
    if cfg.mode == "cloud" and phala is None:
        raise ConfigError(
            "attestation.mode: cloud reads quotes from the Cloud API and needs discovery.phala; "
            "with discovery.static use guest-agent or fresh"
        )
    keys = _simulator_keys(config, trusted_simulator_keys)
    token = environ.get(cfg.fresh.token_env, "") if cfg.fresh.token_env else None
    if cfg.mode == "fresh" and cfg.fresh.token_env and not token:
        raise ConfigError(
            f"attestation.fresh.token_env: the environment variable {cfg.fresh.token_env} "
            "is empty or unset"
        )
    session = None
    if cfg.mode in ("guest-agent", "fresh"):
        # With ra-tls the replica's port ends TLS with its RA-TLS certificate (no CA name
        # check possible); what is fetched there is a quote checked on its own.
        session = aiohttp.ClientSession(
            connector=make_connector(config.discovery.connect_to, upstream_context(config)),
            auto_decompress=False,
        )
    return Attestor(
        cfg,
        phala.app_id if phala else None,
        sink,
        session=session,
        cloud=cloud_client(config, environ) if cfg.mode == "cloud" else None,
        clock=clock,
        trusted_simulator_keys=keys,
        fresh_token=token,
    )
