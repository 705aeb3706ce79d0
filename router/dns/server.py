"""A small authoritative DNS server for the live records, over UDP and TCP.

It answers A/AAAA/SRV/TXT/SOA/NS (and ANY) for the apex (`dns.zone`, else `dns.name`)
from the feed's current RecordSet, rotating each RRset by one per query and capping it at
`max_records`. Names outside the apex are REFUSED; names inside that own nothing are
NXDOMAIN, or NODATA when they own other types or names below them. Malformed packets
with a readable header get FORMERR, shorter ones are dropped; nothing a client sends can
stop the server. Geo ordering by EDNS client subnet is not done yet: every client sees
the same rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from router.dns.records import Record, RecordSet, apex_records
from router.dns.settings import DnsConfig, DnsServerConfig
from router.settings_types import split_host_port

log = logging.getLogger(__name__)

HEADER_SIZE = 12
PLAIN_UDP_LIMIT = 512  # without EDNS (RFC 1035)
TCP_LIMIT = 65535
_QR = 0x8000


class RecordSource(Protocol):
    @property
    def current(self) -> RecordSet: ...


@dataclass(frozen=True, slots=True)
class _Index:
    records: RecordSet
    apex: dns.name.Name
    by_name: dict[dns.name.Name, dict[int, list[Record]]]
    soa: Record

    def exists(self, name: dns.name.Name) -> bool:
        """True when the name owns records or has names below it (an empty non-terminal)."""
        return name in self.by_name or any(n.is_subdomain(name) for n in self.by_name)


def _index(cfg: DnsConfig, records: RecordSet) -> _Index:
    apex = records.apex or apex_records(cfg, records.serial)
    by_name: dict[dns.name.Name, dict[int, list[Record]]] = defaultdict(dict)
    for record in apex + records.records:
        types = by_name[dns.name.from_text(record.name)]
        types.setdefault(dns.rdatatype.from_text(record.type), []).append(record)
    soa = next(r for r in apex if r.type == "SOA")
    assert cfg.apex is not None
    return _Index(records, dns.name.from_text(cfg.apex), dict(by_name), soa)


def _rrset(owner: dns.name.Name, group: list[Record]) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(
        owner, group[0].ttl, "IN", group[0].type, [r.value for r in group]
    )


def formerr_from_header(wire: bytes) -> bytes | None:
    """A FORMERR answer built from the header alone, or None when even that is unusable
    (too short, or the packet is itself a response: never answer those, to avoid loops)."""
    if len(wire) < HEADER_SIZE:
        return None
    query_id, flags = struct.unpack("!HH", wire[:4])
    if flags & _QR:
        return None
    opcode_bits = flags & 0x7800
    rd = flags & 0x0100
    return struct.pack("!HHHHHH", query_id, _QR | opcode_bits | rd | dns.rcode.FORMERR, 0, 0, 0, 0)


class Responder:
    """The query -> answer logic, without sockets."""

    def __init__(self, cfg: DnsConfig, source: RecordSource) -> None:
        if cfg.apex is None or cfg.server is None:
            raise ValueError("dns.server needs dns.name (and optionally dns.zone)")
        self._cfg = cfg
        self._server: DnsServerConfig = cfg.server
        self._source = source
        self._index: _Index | None = None
        self._turns: dict[tuple[dns.name.Name, int], itertools.count[int]] = {}
        self.queries = 0
        self.malformed = 0

    def _current(self) -> _Index:
        records = self._source.current
        if self._index is None or self._index.records is not records:
            self._index = _index(self._cfg, records)
            self._turns.clear()
        return self._index

    def _rotate(self, name: dns.name.Name, rdtype: int, group: list[Record]) -> list[Record]:
        turn = next(self._turns.setdefault((name, rdtype), itertools.count()))
        start = turn % len(group)
        return (group[start:] + group[:start])[: self._cfg.max_records]

    def respond(self, wire: bytes, *, tcp: bool) -> bytes | None:
        self.queries += 1
        if len(wire) < HEADER_SIZE or struct.unpack("!H", wire[2:4])[0] & _QR:
            self.malformed += 1
            return None
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # any parse failure of untrusted bytes: FORMERR, never a crash
            self.malformed += 1
            return formerr_from_header(wire)
        response = dns.message.make_response(query, our_payload=self._server.udp_payload)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
        elif query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            self.malformed += 1
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._answer(query.question[0], response)
        return self._to_wire(query, response, tcp=tcp)

    def _answer(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        qname, qtype = question.name, question.rdtype
        index = self._current()
        if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY) or not (
            qname.is_subdomain(index.apex)
        ):
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return
        if qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            response.set_rcode(dns.rcode.REFUSED)
            return
        types = index.by_name.get(qname, {})
        wanted = sorted(types) if qtype == dns.rdatatype.ANY else [t for t in types if t == qtype]
        for rdtype in wanted:
            response.answer.append(_rrset(qname, self._rotate(qname, rdtype, types[rdtype])))
        if response.answer:
            return
        if not index.exists(qname):
            response.set_rcode(dns.rcode.NXDOMAIN)
        # NXDOMAIN and NODATA carry the SOA so resolvers cache the negative answer.
        soa = _rrset(index.apex, [index.soa])
        response.authority.append(soa)

    def _to_wire(
        self, query: dns.message.Message, response: dns.message.Message, *, tcp: bool
    ) -> bytes:
        if tcp:
            limit = TCP_LIMIT
        elif query.edns >= 0:
            limit = max(PLAIN_UDP_LIMIT, min(query.payload, self._server.udp_payload))
        else:
            limit = PLAIN_UDP_LIMIT
        try:
            # Our rotation is the order; dnspython would otherwise shuffle each RRset.
            return response.to_wire(max_size=limit, want_shuffle=False)
        except dns.exception.TooBig:
            # Over UDP: an empty answer with TC set tells the client to retry over TCP.
            truncated = dns.message.make_response(query, our_payload=self._server.udp_payload)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            truncated.flags &= ~dns.flags.RA
            return truncated.to_wire(max_size=limit)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            reply = self._responder.respond(data, tcp=False)
        except Exception:
            log.exception("DNS server: answering a UDP query failed")
            return
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS server UDP error: %s", exc)


class DnsServer:
    def __init__(self, cfg: DnsConfig, source: RecordSource) -> None:
        self.responder = Responder(cfg, source)
        self.apex = cfg.apex
        assert cfg.server is not None
        self._cfg = cfg.server
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        host, port = split_host_port(self._cfg.listen)
        loop = asyncio.get_running_loop()
        # With port 0 the TCP listener must get the port UDP got; retry if it is taken.
        for attempt in range(10):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self.responder), local_addr=(host, port)
            )
            bound = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError as exc:
                transport.close()
                if port != 0 or exc.errno != errno.EADDRINUSE or attempt == 9:
                    raise
                continue
            self._udp = transport
            self.address = (host, bound)
            break
        log.info(
            "DNS server answering for %s on %s:%s (UDP, TCP)",
            self.apex,
            host,
            self.address[1] if self.address else port,
        )

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            # Abort rather than cancel: the handlers see EOF and end on their own (a cancelled
            # stream handler makes asyncio log a spurious traceback on Python 3.11).
            for writer in list(self._connections.values()):
                writer.transport.abort()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=5)
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self._cfg.max_tcp_connections:
            writer.close()
            return
        self._connections[task] = writer
        try:
            while True:
                async with asyncio.timeout(self._cfg.tcp_idle_timeout):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    if length == 0:
                        break
                    wire = await reader.readexactly(length)
                reply = self.responder.respond(wire, tcp=True)
                if reply is None:
                    break  # unusable bytes: the stream is out of step, close it
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client went away, stalled or sent a partial message
        except Exception:
            log.exception("DNS server: a TCP connection failed")
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
