"""TLS from Envoy to replicas: per-host SNI and name checks, ALPN h2 for gRPC replicas,
and, with RA-TLS (`attestation.connection: ra-tls`), the key the router attested. Pure.

Envoy cannot verify a TDX quote, but the router does on every new connection it makes
(the RA-TLS gate, fed by health probes). Each replica's endpoint then names the SPKI digest
of the certificate the gate verified last, and its transport socket accepts only that key
(`verify_certificate_spki`): Envoy completes a handshake only with the attested key. A
replica that rotates its key gets no traffic from Envoy until the router has verified the
new one (the pin moves then); a replica with no verified key is left out of Envoy.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from collections.abc import Mapping
from typing import Any

from router.proxy.envoy.view import ConfigView
from router.snapshot import Snapshot

Json = dict[str, Any]
# Replica id -> hex SHA-256 of the SPKI DER the RA-TLS gate verified; None: no RA-TLS.
Pins = Mapping[str, str]
UPSTREAM_TLS_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)
RAW_BUFFER_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
MATCH_KEY = "envoy.transport_socket_match"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def spki_pin(hex_digest: str) -> str:
    """Hex SHA-256 of an SPKI (the gate's form) -> base64 (Envoy's form)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def _checks(config: ConfigView, host: str) -> Json:
    """The chain against the trust store and the name against the host."""
    tls = config.upstream_tls
    if not tls.verify:
        return {}
    ca = str(tls.ca_file.resolve()) if tls.ca_file is not None else system_ca_bundle()
    san_type = "IP_ADDRESS" if _is_ip(host) else "DNS"
    return {
        "trusted_ca": {"filename": ca},
        "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
    }


def _attested(config: ConfigView, spki: str) -> Json:
    """RA-TLS: the quote replaces name and CA checks (as in the Python engines); only the
    attested key is accepted, and the chain is checked only against a pinned KMS root."""
    checks: Json = {"verify_certificate_spki": [spki_pin(spki)]}
    kms_root = config.attestation.kms_root
    if kms_root is not None:
        checks["trusted_ca"] = {"filename": str(kms_root.resolve())}
    return checks


def upstream_tls(
    config: ConfigView, host: str, *, spki: str | None = None, h2: bool = False
) -> Json:
    """TLS to one replica host: SNI = its name, certificate checked against that name (or
    pinned to `spki`), ALPN h2 when the replicas speak HTTP/2 (gRPC).
    (Envoy's auto_sni/auto_san_validation take the name before auto_host_rewrite applies,
    i.e. the client's Host, so the name is set per host here instead.)"""
    common: Json = {}
    context: Json = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": common}
    if not _is_ip(host):
        context["sni"] = host
    checks = _attested(config, spki) if spki is not None else _checks(config, host)
    if spki is not None:
        # Every connection shows the certificate again (a resumed session would not), as
        # the Python engines check each new connection.
        context["max_session_keys"] = 0
    if checks:
        common["validation_context"] = checks
    if h2:
        common["alpn_protocols"] = ["h2"]
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def tls_hosts(snapshot: Snapshot) -> list[str]:
    """Every https replica host known (routable or not), so membership changes never
    change the cluster (which would drain its connection pools)."""
    return sorted({s.replica.host for s in snapshot.statuses if s.replica.scheme == "https"})


def pinned_keys(snapshot: Snapshot, pins: Pins) -> list[tuple[str, str]]:
    """(host, SPKI digest) of every https replica with a verified key, routable or not."""
    return sorted(
        {
            (s.replica.host, pins[s.replica.id])
            for s in snapshot.statuses
            if s.replica.scheme == "https" and s.replica.id in pins
        }
    )


def endpoint_match(host: str, scheme: str, spki: str | None, pins: Pins | None) -> Json | None:
    """An endpoint's transport socket selector; None: leave the endpoint out (RA-TLS and
    no key verified yet: Envoy must not talk to it)."""
    if scheme != "https":
        return {}
    if pins is None:
        return {"tls_host": host}
    if spki is None:
        return None
    return {"tls_host": host, "spki": spki}


def socket_matches(
    config: ConfigView,
    snapshot: Snapshot,
    *,
    pins: Pins | None = None,
    h2: bool = False,
) -> list[Json]:
    """One TLS context per https host (or per host and attested key), then plain TCP."""
    matches: list[Json] = []
    if pins is None:
        matches += [
            {
                "name": f"tls-{host}",
                "match": {"tls_host": host},
                "transport_socket": upstream_tls(config, host, h2=h2),
            }
            for host in tls_hosts(snapshot)
        ]
    else:
        matches += [
            {
                "name": f"ratls-{host}-{spki[:16]}",
                "match": {"tls_host": host, "spki": spki},
                "transport_socket": upstream_tls(config, host, spki=spki, h2=h2),
            }
            for host, spki in pinned_keys(snapshot, pins)
        ]
    matches.append(
        {
            "name": "plain",
            "match": {},
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {"@type": RAW_BUFFER_TYPE},
            },
        }
    )
    return matches


def system_ca_bundle() -> str:
    """The system CA file (Envoy has no built-in trust store)."""
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.openssl_cafile
