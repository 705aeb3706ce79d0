"""Text formats of a RecordSet: an RFC 1035 zone (fragment or full), JSON, octoDNS YAML.

Pure: dnspython writes the zone text so the output is what its zone parser (and BIND)
reads back.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.SRV
import dns.rrset
import yaml

from router.dns.records import Record, RecordSet, relative

FormatName = Literal["zone", "json", "octodns"]
FORMATS: tuple[FormatName, ...] = ("zone", "json", "octodns")


def render(records: RecordSet, fmt: FormatName) -> str:
    if fmt == "zone":
        return render_zone(records)
    if fmt == "json":
        return render_json(records)
    if fmt == "octodns":
        return render_octodns(records)
    raise ValueError(f"unknown DNS format {fmt!r}; use one of {', '.join(FORMATS)}")


def _comments(records: RecordSet) -> list[str]:
    return [f"; {note}" for note in records.notes]


def _rrsets(records: tuple[Record, ...]) -> list[dns.rrset.RRset]:
    groups: dict[tuple[str, str], dns.rrset.RRset] = {}
    for record in records:
        key = (record.name, record.type)
        if key not in groups:
            groups[key] = dns.rrset.RRset(
                dns.name.from_text(record.name),
                dns.rdataclass.IN,
                dns.rdatatype.from_text(record.type),
            )
        rdata = dns.rdata.from_text(dns.rdataclass.IN, groups[key].rdtype, record.value)
        groups[key].add(rdata, record.ttl)
    return list(groups.values())


def _rrset_lines(rrset: dns.rrset.RRset, origin: dns.name.Name | None) -> list[str]:
    # dnspython writes one line per rdata; relativize only when writing a full zone.
    text: str = rrset.to_text(origin=origin, relativize=origin is not None)
    return text.splitlines()


def render_zone(records: RecordSet) -> str:
    """A zone fragment with absolute names, or, with `zone`, a full zone with $ORIGIN, $TTL,
    SOA and NS whose serial is `records.serial`."""
    lines = [f"; phala-router records for {records.name}", *_comments(records)]
    if records.zone and records.apex:
        origin = dns.name.from_text(records.zone)
        lines += [f"$ORIGIN {records.zone}", f"$TTL {records.ttl}"]
        for rrset in _rrsets(records.apex) + _rrsets(records.records):
            lines += _rrset_lines(rrset, origin)
    else:
        for rrset in _rrsets(records.records):
            lines += _rrset_lines(rrset, None)
    return "\n".join(lines) + "\n"


def render_json(records: RecordSet) -> str:
    """A JSON list of {name, type, ttl, value}; notes are not part of the list (the CLI
    prints them to stderr)."""
    return json.dumps([r.as_dict() for r in records.all_records], indent=2) + "\n"


def _octodns_value(record: Record) -> Any:
    rdata = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.from_text(record.type), record.value
    )
    if isinstance(rdata, dns.rdtypes.IN.SRV.SRV):
        return {
            "priority": rdata.priority,
            "weight": rdata.weight,
            "port": rdata.port,
            "target": rdata.target.to_text(),
        }
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        # octoDNS escapes ';' in TXT values; ours never contain one, but stay correct.
        return b"".join(rdata.strings).decode().replace(";", "\\;")
    return record.value


def render_octodns(records: RecordSet) -> str:
    """octoDNS's YAML provider format for the zone (`dns.zone`, else the parent of the
    name): names relative to it, one entry per name, a list when a name has several types.
    SOA and NS at the apex are left to octoDNS."""
    origin = records.zone or dns.name.from_text(records.name).parent().to_text()
    entries: dict[str, list[dict[str, Any]]] = {}
    for (name, rdtype), group in records.rrsets().items():
        entries.setdefault(relative(name, origin), []).append(
            {
                "type": rdtype,
                "ttl": group[0].ttl,
                "values": [_octodns_value(r) for r in group],
            }
        )
    document: dict[str, Any] = {
        key: value[0] if len(value) == 1 else value for key, value in sorted(entries.items())
    }
    header = [f"# octoDNS records for zone {origin} (file {origin}yaml)"]
    header += [f"# {note}" for note in records.notes]
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False) if document else ""
    return "\n".join(header) + "\n---\n" + (body or "{}\n")
