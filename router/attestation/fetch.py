"""Where a replica's quote comes from: the Cloud API, its guest agent, or the replica itself.

- cloud: `GET {api}/apps/{app_id}/attestations`, one call for every replica (httpx: the
  control plane's Cloud API client, configured by discovery with its base URL and key).
  Stored boot-time quotes: proves what booted, not that it is still the one answering.
- guest-agent: `POST https://<instance_id>-8090.<base_domain>/prpc/GetAttestationForAppKey`
  (the replica URL's scheme, so a plain-http simulator works too).
  A key-bound quote from dstack's agent; not fresh either.
- fresh: `GET <replica><fresh.path>?nonce=<64 hex>` answered by the quote-server sidecar
  inside the replica with a quote whose report_data binds our nonce.

Replica-side calls go through the same aiohttp session settings as traffic (Host, SNI,
TLS verification, `connect_to`), so we attest the endpoint that traffic will reach.
A failure to reach the Cloud API (network, timeout, 5xx) is `cloud_api_unreachable`, the
only source outage a passing verdict survives; a quote that is not hex is
`malformed_quote`; anything else is `fetch_failed` (the replica or its agent did not give
an attestation: it is removed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx

from router.attestation.quote import decode_quote
from router.attestation.settings import FreshConfig
from router.attestation.verify import Evidence
from router.errors import AttestationError
from router.models import Replica

GUEST_AGENT_PORT = 8090
# A quote is ~5 KB and an event log ~20 KB: anything near this is not an attestation.
MAX_ANSWER = 1024 * 1024
# `<id>-<port>[s|g].<base_domain>`: a dstack gateway host name (PHALA.md section 2).
_GATEWAY_HOST = re.compile(r"^(?P<id>[0-9a-zA-Z]+)-(?P<port>\d+)(?P<suffix>[sg]?)\.(?P<base>.+)$")


def instance_id_of(replica: Replica) -> str | None:
    """The Phala instance id a replica's quote must carry, when known."""
    value = replica.metadata.get("instance_id")
    if value:
        return value.lower()
    return replica.id.lower() if re.fullmatch(r"[0-9a-fA-F]{40}", replica.id) else None


def base_domain_of(replica: Replica) -> str:
    """The gateway's base domain: from discovery metadata, else the host minus its first label."""
    if value := replica.metadata.get("base_domain"):
        return value
    _, _, rest = replica.host.partition(".")
    if not rest:
        raise AttestationError("fetch_failed", f"cannot tell the gateway domain of {replica.host}")
    return rest


def _evidence(data: Any, source: str, app_compose: str | None = None) -> Evidence:
    if not isinstance(data, dict):
        raise AttestationError("fetch_failed", f"{source}: the answer is not a JSON object")
    quote = data.get("quote")
    if not quote:
        raise AttestationError("fetch_failed", f"{source}: the answer has no quote")
    event_log = data.get("event_log")
    if isinstance(event_log, str | list):
        log_value: str | list[Any] = event_log
    else:
        raise AttestationError("fetch_failed", f"{source}: the answer has no event_log")
    vm_config = data.get("vm_config")
    if isinstance(vm_config, dict):
        vm_config = json.dumps(vm_config)
    try:
        raw = decode_quote(quote)
    except AttestationError as exc:
        raise AttestationError(exc.reason, f"{source}: {exc.detail}") from None
    claimed = data.get("report_data")
    try:
        report_data = (
            bytes.fromhex(claimed.removeprefix("0x")) if isinstance(claimed, str) else None
        )
    except ValueError:
        raise AttestationError("wrong_report_data", f"{source}: report_data is not hex") from None
    return Evidence(
        quote=raw,
        event_log=log_value,
        vm_config=vm_config if isinstance(vm_config, str) else None,
        app_compose=app_compose,
        source=source,
        report_data=report_data,
    )


# -- cloud -------------------------------------------------------------------------------


async def fetch_cloud(
    client: httpx.AsyncClient, app_id: str
) -> dict[str, Evidence | AttestationError]:
    """Every replica's stored attestation, keyed by instance_id (and vm_uuid)."""
    path = f"/apps/{app_id}/attestations"
    try:
        response = await client.get(path)
        response.raise_for_status()
        data = response.json()
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        reason = "cloud_api_unreachable" if code >= 500 or code == 429 else "fetch_failed"
        raise AttestationError(reason, f"Cloud API {path}: HTTP {code}") from None
    except httpx.TransportError as exc:
        raise AttestationError(
            "cloud_api_unreachable", f"Cloud API {path}: {exc or type(exc).__name__}"
        ) from None
    except (httpx.HTTPError, ValueError) as exc:
        raise AttestationError(
            "fetch_failed", f"Cloud API {path}: {exc or type(exc).__name__}"
        ) from None
    instances = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(instances, list):
        raise AttestationError("fetch_failed", f"Cloud API {path}: no instances list")
    found: dict[str, Evidence | AttestationError] = {}
    for item in instances:
        if not isinstance(item, dict):
            continue
        result = _cloud_instance(item)
        for key in ("instance_id", "vm_uuid"):
            if isinstance(item.get(key), str) and item[key]:
                found[item[key].lower()] = result
    return found


def _cloud_instance(item: Mapping[str, Any]) -> Evidence | AttestationError:
    source = f"Cloud API instance {item.get('instance_id') or item.get('vm_uuid')}"
    if not item.get("quote"):
        why = item.get("error") or f"status {item.get('status', 'unknown')}"
        return AttestationError("fetch_failed", f"{source}: no quote ({why})")
    tcb_info = item.get("tcb_info")
    if not isinstance(tcb_info, dict):
        return AttestationError("fetch_failed", f"{source}: no tcb_info")
    app_compose = tcb_info.get("app_compose")
    try:
        return _evidence(
            {"quote": item["quote"], "event_log": tcb_info.get("event_log"),
             "vm_config": item.get("vm_config")},
            source,
            app_compose if isinstance(app_compose, str) else None,
        )  # fmt: skip
    except AttestationError as exc:
        return exc


def cloud_evidence_for(
    replica: Replica, found: Mapping[str, Evidence | AttestationError]
) -> Evidence:
    keys = [instance_id_of(replica), replica.metadata.get("vm_uuid"), replica.id.lower()]
    for key in keys:
        if key and key.lower() in found:
            result = found[key.lower()]
            if isinstance(result, AttestationError):
                raise result
            return result
    raise AttestationError("fetch_failed", "the Cloud API lists no attestation for this replica")


# -- replica side ---------------------------------------------------------------------------


async def _json(
    session: aiohttp.ClientSession, method: str, url: str, source: str, **kwargs: Any
) -> Any:
    try:
        async with session.request(method, url, **kwargs) as response:
            if response.status != 200:
                raise AttestationError("fetch_failed", f"{source}: HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > MAX_ANSWER:
                    raise AttestationError("fetch_failed", f"{source}: answer larger than 1 MiB")
            return json.loads(body)
    except AttestationError:
        raise
    except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
        raise AttestationError("fetch_failed", f"{source}: {exc or type(exc).__name__}") from None


async def fetch_guest_agent(
    session: aiohttp.ClientSession, replica: Replica, timeout: float
) -> Evidence:
    instance_id = instance_id_of(replica)
    if instance_id is None:
        raise AttestationError("fetch_failed", "guest-agent mode needs the replica's instance_id")
    # Same scheme as the replica's own URL: https on Phala, plain http on a local simulator.
    url = (
        f"{replica.scheme}://{instance_id}-{GUEST_AGENT_PORT}.{base_domain_of(replica)}"
        "/prpc/GetAttestationForAppKey"
    )
    data = await _json(
        session,
        "POST",
        url,
        "guest agent",
        json={"algorithm": "secp256k1"},
        timeout=aiohttp.ClientTimeout(total=timeout),
    )
    return _evidence(data, "guest agent")


def fresh_url(replica: Replica, fresh: FreshConfig, nonce: bytes) -> str:
    """`<replica origin><fresh.path>?nonce=<hex>`. With `fresh.port`, a gateway host name
    `<id>-<port>.<base>` gets the new port in its name (the gateway routes by name);
    any other host gets it as the URL port."""
    host, port = replica.host, replica.port
    if fresh.port is not None:
        match = _GATEWAY_HOST.match(host)
        if match:
            host = f"{match['id']}-{fresh.port}{match['suffix']}.{match['base']}"
        else:
            port = fresh.port
    default = 443 if replica.scheme == "https" else 80
    authority = host if port == default else f"{host}:{port}"
    return f"{replica.scheme}://{authority}{fresh.path}?nonce={nonce.hex()}"


async def fetch_fresh(
    session: aiohttp.ClientSession,
    replica: Replica,
    fresh: FreshConfig,
    nonce: bytes,
    timeout: float,
    token: str | None = None,
) -> Evidence:
    data = await _json(
        session,
        "GET",
        fresh_url(replica, fresh, nonce),
        "quote server",
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"Authorization": f"Bearer {token}"} if token else None,
    )
    return _evidence(data, "quote server")
