"""Pure parsing of Cloud API CVM records into `Replica`s, and membership diffs.

Two record shapes exist (see shared/PHALA.md): the current 2026-01-21 one and the legacy
2025-10-28 one (`hosted`/`node` list items, or `teepod` details). Every field may be
missing: a record that cannot be addressed is skipped with a problem line naming the field,
and only an answer that is not a list of records at all is an error. No I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from router.discovery.settings import PhalaDiscoveryConfig, host_protocol
from router.errors import DiscoveryError
from router.models import Replica

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True, slots=True)
class ParseResult:
    replicas: tuple[Replica, ...]
    # One line per skipped record, naming the record and the bad field.
    problems: tuple[str, ...] = field(default=())


class _BadRecord(Exception):
    pass


def parse_cvms(payload: object, cfg: PhalaDiscoveryConfig) -> list[Replica]:
    """The replicas in a `GET /apps/{app_id}/cvms` answer; skipped records are logged."""
    result = parse_cvms_result(payload, cfg)
    for problem in result.problems:
        log.warning("Cloud API record skipped: %s", problem)
    return list(result.replicas)


def parse_cvms_result(payload: object, cfg: PhalaDiscoveryConfig) -> ParseResult:
    """Like `parse_cvms` but returns the problems instead of logging them, so a caller that
    polls can log them only when they change."""
    records = _records(payload)
    replicas: list[Replica] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        try:
            replica = parse_record(record, cfg)
        except _BadRecord as exc:
            problems.append(f"record [{index}]: {exc}")
            continue
        if replica.id in seen:
            problems.append(f"record [{index}]: duplicate replica id {replica.id}")
            continue
        seen.add(replica.id)
        replicas.append(replica)
    if records and not replicas:
        raise DiscoveryError(
            "the Cloud API answer has no usable CVM record: " + "; ".join(problems[:3])
        )
    return ParseResult(tuple(replicas), tuple(problems))


def _records(payload: object) -> Sequence[object]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        # `GET /apps/{app_id}` nests the list; paginated answers use `items`.
        for key in ("cvms", "items", "data"):
            if isinstance(payload.get(key), list):
                return list(payload[key])
        keys = ", ".join(sorted(str(k) for k in payload)[:8]) or "none"
        raise DiscoveryError(
            f"expected a JSON array of CVM records, got an object (keys: {keys}) "
            "without a 'cvms' or 'items' list"
        )
    raise DiscoveryError(f"expected a JSON array of CVM records, got {type(payload).__name__}")


def parse_record(record: object, cfg: PhalaDiscoveryConfig) -> Replica:
    if not isinstance(record, dict):
        raise _BadRecord(f"expected an object, got {type(record).__name__}")
    if isinstance(record.get("hosted"), dict):
        fields = _legacy_list_item(record)
    else:
        fields = _current(record)  # also covers legacy detail records (teepod, public_urls)
    return _to_replica(fields, cfg)


@dataclass(slots=True)
class _Fields:
    instance_id: str | None
    vm_uuid: str | None
    app_id: str | None
    name: str | None
    status: str | None
    in_progress: bool
    region: str | None
    node: str | None
    base_domain: str | None
    instance_urls: list[str]
    compose_hash: str | None
    instance_type: str | None = None
    os_image_hash: str | None = None


def _current(r: dict[str, Any]) -> _Fields:
    node = _obj(r, "node_info") or _obj(r, "node")
    teepod = _obj(r, "teepod")
    gateway = _obj(r, "gateway")
    return _Fields(
        instance_id=_str(r, "instance_id"),
        vm_uuid=_str(r, "vm_uuid"),
        app_id=_str(r, "app_id"),
        name=_str(r, "name"),
        status=_str(r, "status"),
        in_progress=_bool(r, "in_progress"),
        region=_str(node, "region")
        or _str(node, "region_identifier")
        or _str(teepod, "region_identifier"),
        node=_str(node, "name") or _str(teepod, "name"),
        base_domain=_str(gateway, "base_domain") or _str(r, "gateway_domain"),
        instance_urls=_instance_urls(r.get("endpoints")) + _instance_urls(r.get("public_urls")),
        compose_hash=_str(r, "compose_hash"),
        instance_type=_str(_obj(r, "resource"), "instance_type") or _str(r, "instance_type"),
        os_image_hash=_str(_obj(r, "os"), "os_image_hash") or _str(r, "os_image_hash"),
    )


def _legacy_list_item(r: dict[str, Any]) -> _Fields:
    hosted: dict[str, Any] = r["hosted"]
    node = _obj(r, "node")
    hosted_id = _str(hosted, "id")
    return _Fields(
        instance_id=_str(hosted, "instance_id") or _str(r, "instance_id"),
        # In the legacy list, `hosted.id` is the VM's uuid.
        vm_uuid=_str(r, "vm_uuid") or (hosted_id if hosted_id and "-" in hosted_id else None),
        app_id=_str(hosted, "app_id") or _str(r, "app_id"),
        name=_str(hosted, "name") or _str(r, "name"),
        status=_str(r, "status") or _str(hosted, "status"),
        in_progress=_bool(r, "in_progress"),
        region=_str(node, "region_identifier") or _str(node, "region"),
        node=_str(node, "name"),
        base_domain=_str(r, "gateway_domain") or _domain_of(_str(hosted, "app_url")),
        instance_urls=_instance_urls(r.get("public_urls")),
        compose_hash=_str(r, "compose_hash") or _str(hosted, "compose_hash"),
    )


def _to_replica(f: _Fields, cfg: PhalaDiscoveryConfig) -> Replica:
    ident = f.instance_id or f.vm_uuid
    if not ident:
        raise _BadRecord("neither 'instance_id' nor 'vm_uuid' is set")
    # s: the gateway relays TLS to the CVM; g: it ends TLS and speaks HTTP/2 (gRPC).
    suffix = "s" if cfg.tls_passthrough else "g" if cfg.grpc else ""
    label = f"{f.instance_id or f.vm_uuid}-{cfg.port}{suffix}"
    host = _matching_host(f.instance_urls, f.instance_id, cfg.port, suffix)
    if host is None:
        domain = f.base_domain or cfg.base_domain
        if not domain:
            raise _BadRecord(
                f"replica {ident}: no gateway domain ('gateway.base_domain', "
                "'gateway_domain' or a matching 'endpoints[].instance'); "
                "set discovery.phala.base_domain to supply one"
            )
        host = f"{label}.{domain.strip('.').lower()}"
    base_domain = host.split(".", 1)[1] if "." in host else ""
    port = _DEFAULT_PORTS[cfg.scheme]
    metadata = {
        "vm_uuid": f.vm_uuid,
        "node": f.node,
        "instance_type": f.instance_type,
        "os_image_hash": f.os_image_hash,
        "base_domain": base_domain,
        "name": f.name,
        "status": f.status or "unknown",
        "protocol": protocol if (protocol := host_protocol(host)) != "http1" else None,
    }
    return Replica(
        id=ident,
        url=f"{cfg.scheme}://{host}",
        scheme=cfg.scheme,
        host=host,
        port=port,
        region=f.region.strip().lower() if f.region else None,
        platform_status=_platform_status(f),
        app_id=f.app_id,
        compose_hash=f.compose_hash.lower().removeprefix("0x") if f.compose_hash else None,
        metadata=MappingProxyType({k: v for k, v in metadata.items() if v}),
    )


def _platform_status(f: _Fields) -> str:
    status = (f.status or "unknown").strip().lower()
    if f.instance_id is None:
        # A replica still being created has no instance id, hence no address yet.
        return f"{status} (no instance_id)"
    if f.in_progress:
        return f"{status} (in_progress)" if status != "running" else "starting (in_progress)"
    return status


def _matching_host(
    urls: list[str], instance_id: str | None, port: int, suffix: str = ""
) -> str | None:
    """The host of the record's own instance URL for this port, when it lists one."""
    if not instance_id:
        return None
    wanted = {f"{instance_id}-{port}{suffix}".lower()}
    if port == 80 and not suffix:
        wanted.add(instance_id.lower())  # the gateway's default port needs no suffix
    for url in urls:
        host = (urlsplit(url).hostname or "") if "://" in url else url.split("/")[0]
        if host.split(".", 1)[0].lower() in wanted and "." in host:
            return host.lower()
    return None


def _domain_of(url: str | None) -> str | None:
    """`https://<id>-<port>.<base_domain>/...` -> base_domain."""
    host = urlsplit(url).hostname if url and "://" in url else None
    return host.split(".", 1)[1] if host and host.count(".") >= 2 else None


def _instance_urls(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [
        item["instance"]
        for item in value
        if isinstance(item, dict) and isinstance(item.get("instance"), str)
    ]


def _obj(record: Mapping[str, Any] | None, key: str) -> dict[str, Any] | None:
    value = record.get(key) if record else None
    return value if isinstance(value, dict) else None


def _str(record: Mapping[str, Any] | None, key: str) -> str | None:
    value = record.get(key) if record else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _bool(record: Mapping[str, Any], key: str) -> bool:
    return record.get(key) is True


def describe_changes(old: Sequence[Replica], new: Sequence[Replica]) -> list[str]:
    """One human line per membership change, for the log."""
    before = {r.id: r for r in old}
    after = {r.id: r for r in new}
    lines: list[str] = []
    for rid, replica in after.items():
        prev = before.get(rid)
        if prev is None:
            lines.append(
                f"replica added: {rid} region={replica.region or '-'} "
                f"status={replica.platform_status} url={replica.url}"
            )
            continue
        if prev.region != replica.region:
            lines.append(
                f"replica moved region: {rid} {prev.region or '-'} -> {replica.region or '-'}"
            )
        if prev.compose_hash != replica.compose_hash:
            lines.append(
                f"replica compose hash changed: {rid} {_short(prev.compose_hash)} -> "
                f"{_short(replica.compose_hash)}"
            )
        if prev.platform_status != replica.platform_status:
            lines.append(
                f"replica status changed: {rid} {prev.platform_status} -> {replica.platform_status}"
            )
        if prev.url != replica.url:
            lines.append(f"replica address changed: {rid} {prev.url} -> {replica.url}")
    lines.extend(f"replica removed: {rid}" for rid in before if rid not in after)
    return lines


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"
