"""The simulated Cloud API's JSON documents, built from live replica state (pure).

Shapes follow shared/PHALA.md: CVM records in the 2026-01-21 shape, or the legacy
2025-10-28 list items; batch status; the attestation documents; the guest agent's Info.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from router.simulator.state import SimContext, SimReplica, sha256_hex

LEGACY_VERSION = "2025-10-28"
OS_IMAGE_HASH = hashlib.sha256(b"sim-dstack-os-0.5").hexdigest()


def _app_of(replica: SimReplica, ctx: SimContext) -> tuple[str, str]:
    """(app_id, app name) of the app a replica belongs to."""
    app_id = replica.app_id or ctx.app_id
    return app_id, ctx.apps.get(app_id, ctx.app_name)


def urls(replica: SimReplica, ctx: SimContext) -> dict[str, str]:
    scheme = "https" if ctx.tls else "http"
    app_id, _ = _app_of(replica, ctx)
    return {
        "app": f"{scheme}://{app_id}-{ctx.app_port}.{ctx.base_domain}",
        "instance": f"{scheme}://{ctx.host_of(replica, ctx.app_port)}",
    }


def cvm_record(replica: SimReplica, ctx: SimContext) -> dict[str, Any]:
    app_id, name = _app_of(replica, ctx)
    return {
        "id": replica.cvm_id,
        "name": name,
        "app_id": app_id,
        "vm_uuid": replica.vm_uuid,
        "instance_id": replica.instance_id,
        "status": replica.status,
        "in_progress": replica.in_progress,
        "compose_hash": replica.compose_hash,
        "node_info": {"id": replica.node_id, "name": replica.node, "region": replica.region},
        "gateway": {"base_domain": ctx.base_domain},
        "endpoints": [urls(replica, ctx)],
        "resource": {"instance_type": replica.instance_type, "vcpu": 2, "memory_in_gb": 4},
        "os": {"os_image_hash": OS_IMAGE_HASH},
        "public_tcbinfo": True,
        "created_at": _iso(replica.created_at),
    }


def legacy_record(replica: SimReplica, ctx: SimContext) -> dict[str, Any]:
    app_id, name = _app_of(replica, ctx)
    return {
        "hosted": {
            "id": replica.vm_uuid,
            "name": name,
            "app_id": app_id,
            "instance_id": replica.instance_id,
            "status": replica.status,
            "app_url": urls(replica, ctx)["app"],
        },
        "name": name,
        "node": {"id": replica.node_id, "name": replica.node, "region_identifier": replica.region},
        "status": replica.status,
        "in_progress": replica.in_progress,
        "compose_hash": replica.compose_hash,
        "gateway_domain": ctx.base_domain,
        "public_urls": [urls(replica, ctx)],
    }


def cvm_list(ctx: SimContext, version: str | None, app_id: str) -> list[dict[str, Any]]:
    build = legacy_record if version == LEGACY_VERSION else cvm_record
    return [build(r, ctx) for r in ctx.replicas_of(app_id)]


def app_document(ctx: SimContext, version: str | None, app_id: str) -> dict[str, Any]:
    cvms = cvm_list(ctx, version, app_id)
    return {
        "id": hashlib.sha256(app_id.encode()).hexdigest()[:20],
        "name": ctx.apps.get(app_id, ctx.app_name),
        "app_id": app_id,
        "cvms": cvms,
        "cvm_count": len(cvms),
    }


def batch_status(ctx: SimContext, vm_uuids: list[str]) -> dict[str, Any]:
    by_uuid = {r.vm_uuid: r for r in ctx.replicas.values()}
    answer: dict[str, Any] = {}
    for vm_uuid in vm_uuids:
        replica = by_uuid.get(vm_uuid)
        if replica is None:
            continue
        answer[vm_uuid] = {
            "status": replica.status,
            "in_progress": replica.in_progress,
            "uptime": f"{int(time.time() - replica.created_at)}s" if replica.up else None,
            "boot_progress": "done" if replica.status == "running" else replica.status,
            "boot_error": None,
        }
    return answer


def stored_report_data(replica: SimReplica) -> bytes:
    """The report_data of a replica's stored (boot-time) quote: bound to its app key."""
    return hashlib.sha512(f"sim-app-key:{replica.instance_id}".encode()).digest()


def _quote(
    replica: SimReplica, ctx: SimContext, report_data: bytes
) -> tuple[str | None, list[Any]]:
    if ctx.quote_provider is None or not replica.up or replica.attestation in ("hang", "missing"):
        return None, []
    quote, event_log = ctx.quote_provider(replica, report_data)
    return quote, event_log


def tcb_info(replica: SimReplica, ctx: SimContext, event_log: list[Any]) -> dict[str, Any]:
    zero = "00" * 48
    return {
        "mrtd": zero,
        "rtmr0": zero,
        "rtmr1": zero,
        "rtmr2": zero,
        "rtmr3": zero,
        "event_log": event_log,
        "app_compose": _known_compose(replica),
    }


def _known_compose(replica: SimReplica) -> str | None:
    """The compose text, unless only its hash was changed (`set_compose_hash`): then the
    text behind the hash is unknown, and a stale text would contradict the measured hash."""
    return replica.app_compose if sha256_hex(replica.app_compose) == replica.compose_hash else None


def app_attestations(ctx: SimContext, app_id: str) -> dict[str, Any]:
    instances = []
    for replica in ctx.replicas_of(app_id):
        quote, event_log = _quote(replica, ctx, stored_report_data(replica))
        instances.append(
            {
                "vm_uuid": replica.vm_uuid,
                "instance_id": replica.instance_id,
                "status": replica.status,
                "quote": quote,
                "tcb_info": tcb_info(replica, ctx, event_log),
                "error": None if quote else _no_quote_reason(replica),
            }
        )
    return {"app_id": app_id, "name": ctx.apps.get(app_id, ctx.app_name), "instances": instances}


def _no_quote_reason(replica: SimReplica) -> str:
    if not replica.up:
        return "instance is not running"
    return "no attestation available for this instance"


def cvm_attestation(replica: SimReplica, ctx: SimContext) -> dict[str, Any]:
    quote, event_log = _quote(replica, ctx, stored_report_data(replica))
    return {
        "name": _app_of(replica, ctx)[1],
        "is_online": replica.up,
        "is_public": True,
        "error": None,
        "app_certificates": [],
        "tcb_info": tcb_info(replica, ctx, event_log),
        "compose_file": _known_compose(replica),
        "quote": quote,
    }


def guest_info(replica: SimReplica, ctx: SimContext) -> dict[str, Any]:
    """The guest agent's `/prpc/Info` answer; dstack sends tcb_info as a JSON string."""
    _, event_log = _quote(replica, ctx, stored_report_data(replica))
    app_id, name = _app_of(replica, ctx)
    return {
        "app_id": app_id,
        "instance_id": replica.instance_id,
        "app_name": name,
        "compose_hash": replica.compose_hash,
        "os_image_hash": OS_IMAGE_HASH,
        "device_id": hashlib.sha256(replica.node.encode()).hexdigest(),
        "app_cert": "",
        "tcb_info": json.dumps(tcb_info(replica, ctx, event_log)),
        "key_provider_info": json.dumps({"name": "kms", "id": ""}),
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
