"""The DNS records for the current healthy set: a pure function of replicas and addresses.

`build_records` decides *what* is published (every record, sorted, so two builds compare
equal when nothing changed); `select` decides what one answer or one write carries (each
RRset shuffled and capped at `max_records`). Sinks compare full sets, so a cap never makes
a flapping write; only the chosen subset varies between renders.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from router.dns.settings import DnsConfig
from router.models import Replica

# SRV priorities: lower is preferred.
PRIORITY_LOCAL = 10
PRIORITY_REMOTE = 20
DEFAULT_APP_PORT = 80
# `<app_id or instance_id>-<port>[s|g].<base_domain>` (PHALA.md section 2).
_PHALA_HOST = re.compile(r"^[0-9a-f]{8,}-(\d{1,5})[sg]?\.", re.IGNORECASE)


@dataclass(frozen=True, slots=True, order=True)
class Record:
    name: str  # absolute, lower case, trailing dot
    type: str  # A, AAAA, SRV, TXT, SOA, NS
    ttl: int
    value: str  # presentation format of the rdata

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "ttl": self.ttl, "value": self.value}


@dataclass(frozen=True, slots=True)
class RecordSet:
    """Everything published for one name. Equality covers only `records`: notes, serial and
    the derived apex records do not make a change worth writing."""

    name: str
    records: tuple[Record, ...]
    ttl: int = 30
    zone: str | None = None  # set: full zone output with `apex` (SOA, NS)
    apex: tuple[Record, ...] = field(default=(), compare=False)
    serial: int = field(default=0, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def rrsets(self) -> dict[tuple[str, str], list[Record]]:
        """(name, type) -> records, keeping order."""
        groups: dict[tuple[str, str], list[Record]] = {}
        for record in self.records:
            groups.setdefault((record.name, record.type), []).append(record)
        return groups

    @property
    def all_records(self) -> tuple[Record, ...]:
        return self.apex + self.records


@dataclass(frozen=True, slots=True)
class ReplicaSets:
    """What records are built from: the routable replicas and every candidate (fail_open)."""

    routable: tuple[Replica, ...]
    candidates: tuple[Replica, ...]
    app_id: str | None = None


def srv_name(cfg: DnsConfig, name: str) -> str | None:
    return f"_{cfg.service}._tcp.{name}" if cfg.service else None


def txt_name(name: str) -> str:
    return f"_dstack-app-address.{name}"


def managed_names(cfg: DnsConfig) -> list[tuple[str, str]]:
    """Every (name, type) this router owns: sinks replace these, and delete them when empty."""
    assert cfg.name is not None
    owned = [(cfg.name, "A"), (cfg.name, "AAAA")]
    if (srv := srv_name(cfg, cfg.name)) is not None:
        owned.append((srv, "SRV"))
    if cfg.txt_app_address:
        owned.append((txt_name(cfg.name), "TXT"))
    return owned


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def canonical(rdtype: str, value: str) -> str:
    """The rdata in dnspython's presentation form, so equal records compare equal."""
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), value)
    return rdata.to_text()


def app_port(cfg: DnsConfig, replicas: Iterable[Replica]) -> int:
    if cfg.app_port is not None:
        return cfg.app_port
    for replica in replicas:
        if match := _PHALA_HOST.match(replica.host):
            return int(match.group(1))
    return DEFAULT_APP_PORT


def _address_records(
    cfg: DnsConfig, name: str, chosen: Sequence[Replica], addresses: Mapping[str, Sequence[str]]
) -> tuple[list[Record], list[str]]:
    users: dict[str, list[str]] = {}
    notes: list[str] = []
    for replica in chosen:
        literal = ip_literal(replica.host)
        found = [str(literal)] if literal is not None else list(addresses.get(replica.host, ()))
        if not found:
            notes.append(f"replica {replica.id}: host {replica.host} has no address; left out")
        for address in found:
            users.setdefault(str(ipaddress.ip_address(address)), []).append(replica.id)
    records = []
    for address, ids in sorted(users.items()):
        rdtype = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
        records.append(Record(name, rdtype, cfg.ttl, address))
        if len(ids) > 1:
            notes.append(
                f"{address} is shared by {len(ids)} replicas ({', '.join(sorted(ids))}): it is a "
                "gateway that routes by host name, so an address record reaches the gateway, "
                "not a chosen replica (see docs/dns.md)"
            )
    return records, notes


def _srv_records(cfg: DnsConfig, name: str, chosen: Sequence[Replica]) -> list[Record]:
    records = []
    for replica in chosen:
        if ip_literal(replica.host) is not None:
            continue  # an SRV target must be a host name (RFC 2782)
        priority = (
            PRIORITY_LOCAL
            if cfg.region is None or replica.region == cfg.region
            else PRIORITY_REMOTE
        )
        weight = max(0, min(replica.weight, 65535))
        target = replica.host.rstrip(".").lower() + "."
        value = f"{priority} {weight} {replica.port} {target}"
        records.append(Record(name, "SRV", cfg.ttl, canonical("SRV", value)))
    return records


def build_records(
    cfg: DnsConfig,
    replicas: ReplicaSets,
    addresses: Mapping[str, Sequence[str]],
    *,
    serial: int = 0,
) -> RecordSet:
    """All records for `cfg.name` from the routable replicas (or, when none is routable and
    `when_empty` is fail_open, every candidate), sorted and deduplicated."""
    if cfg.name is None:
        raise ValueError("dns.name is not set: it names the records, e.g. api.example.com")
    name = cfg.name
    notes: list[str] = []
    chosen: Sequence[Replica] = replicas.routable
    if not chosen:
        if cfg.when_empty == "fail_open" and replicas.candidates:
            chosen = replicas.candidates
            notes.append(
                f"no replica is routable: fail_open publishes all {len(chosen)} discovered"
            )
        else:
            notes.append(f"no replica is routable: {cfg.when_empty} publishes no address")
            chosen = ()
    records, address_notes = _address_records(cfg, name, chosen, addresses)
    notes += address_notes
    if (srv := srv_name(cfg, name)) is not None:
        records += _srv_records(cfg, srv, chosen)
    if cfg.txt_app_address:
        app_id = replicas.app_id or next((r.app_id for r in replicas.candidates if r.app_id), None)
        if app_id is None:
            notes.append("txt_app_address is on but the app_id is unknown: no TXT record")
        else:
            port = app_port(cfg, replicas.candidates)
            value = canonical("TXT", f'"{app_id}:{port}"')
            records.append(Record(txt_name(name), "TXT", cfg.ttl, value))
    apex = apex_records(cfg, serial) if cfg.zone else ()
    return RecordSet(
        name=name,
        records=tuple(sorted(set(records))),
        ttl=cfg.ttl,
        zone=cfg.zone,
        apex=apex,
        serial=serial,
        notes=tuple(notes),
    )


def apex_records(cfg: DnsConfig, serial: int) -> tuple[Record, ...]:
    """SOA and NS for the zone apex (`dns.zone`, else `dns.name`)."""
    apex = cfg.apex
    assert apex is not None
    ns = cfg.ns or (f"ns1.{apex}",)
    rname = cfg.hostmaster or f"hostmaster.{apex}"
    # refresh, retry, expire, negative-caching TTL: the last is our TTL so an NXDOMAIN is
    # cached no longer than a positive answer.
    soa = f"{ns[0]} {rname} {serial} 3600 600 86400 {cfg.ttl}"
    records = [Record(apex, "SOA", cfg.ttl, canonical("SOA", soa))]
    records += [Record(apex, "NS", cfg.ttl, canonical("NS", n)) for n in ns]
    return tuple(records)


def next_serial(previous: int, wall_seconds: float) -> int:
    """A SOA serial that grows on every change: unix time, or previous + 1 if that is not
    larger (two changes in one second, or a clock step back)."""
    return max(previous + 1, int(wall_seconds)) % 2**32


def select(records: RecordSet, max_records: int, rng: random.Random) -> RecordSet:
    """Each RRset shuffled and capped at `max_records`, for one render or one write."""
    chosen: list[Record] = []
    for group in records.rrsets().values():
        rng.shuffle(group)
        chosen += group[:max_records]
    dropped = len(records.records) - len(chosen)
    notes = records.notes
    if dropped:
        notes += (f"{dropped} records left out by max_records={max_records} (chosen at random)",)
    return replace(records, records=tuple(chosen), notes=notes)


def replica_sets_from_snapshot(statuses: Iterable[Any], app_id: str | None) -> ReplicaSets:
    """From `Snapshot.statuses` (anything with `.replica` and `.routable`)."""
    rows = list(statuses)
    return ReplicaSets(
        routable=tuple(s.replica for s in rows if s.routable),
        candidates=tuple(s.replica for s in rows if s.replica.is_candidate),
        app_id=app_id,
    )


def _platform_status(row: Mapping[str, Any]) -> str:
    """`platform_status`, else the `platform:<status>` state the snapshot records."""
    if isinstance(row.get("platform_status"), str):
        return str(row["platform_status"])
    state = str(row.get("state", ""))
    return state.removeprefix("platform:") if state.startswith("platform:") else "running"


def records_from_admin_status(data: Any) -> ReplicaSets:
    """The replica sets from a running router's `/status` JSON (`replicas`, `app_id`).

    Raises ValueError naming the field that is missing or of the wrong type."""
    if not isinstance(data, dict) or not isinstance(data.get("replicas"), list):
        raise ValueError("the admin /status answer has no 'replicas' list")
    routable, candidates = [], []
    for index, row in enumerate(data["replicas"]):
        try:
            replica = Replica(
                id=str(row["id"]),
                url=str(row.get("url", "")),
                scheme=str(row.get("url", "https")).partition(":")[0] or "https",
                host=str(row["host"]),
                port=int(row["port"]),
                region=row.get("region"),
                weight=int(row.get("weight", 100)),
                platform_status=_platform_status(row),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"admin /status replicas[{index}]: needs id, host and port ({exc!r})"
            ) from None
        if replica.is_candidate:
            candidates.append(replica)
        if row.get("routable") is True:
            routable.append(replica)
    app_id = data.get("app_id")
    return ReplicaSets(tuple(routable), tuple(candidates), str(app_id) if app_id else None)


def relative(name: str, origin: str) -> str:
    """`_x._tcp.api.example.com.` relative to `example.com.` -> `_x._tcp.api`; apex -> ''."""
    rel = dns.name.from_text(name).relativize(dns.name.from_text(origin))
    text = rel.to_text()
    return "" if text == "@" else text
