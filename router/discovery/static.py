"""The static replica list from `discovery.static`."""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from yarl import URL

from router.discovery.settings import StaticReplicaConfig
from router.models import Replica


def replica_from_url(
    replica_id: str, url: str, *, region: str | None = None, weight: int = 100, **fields: object
) -> Replica:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.port is None:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    prefix = parsed.raw_path.rstrip("/")
    return Replica(
        id=replica_id,
        url=str(parsed.origin()) + prefix,
        scheme=parsed.scheme,
        host=parsed.raw_host or parsed.host,
        port=parsed.port,
        path_prefix=prefix,
        region=region,
        weight=weight,
        **fields,  # type: ignore[arg-type]
    )


def static_replicas(entries: Iterable[StaticReplicaConfig]) -> list[Replica]:
    return [
        replica_from_url(
            e.id,
            e.url,
            region=e.region,
            weight=e.weight,
            metadata=MappingProxyType(
                ({"instance_id": e.instance_id.lower().removeprefix("0x")} if e.instance_id else {})
                | ({"protocol": e.effective_protocol} if e.effective_protocol != "http1" else {})
            ),
        )
        for e in entries
    ]
