"""The built-in authoritative server, queried with dnspython over UDP and TCP."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from router.balancing.round_robin import RoundRobin
from router.dns.feed import RecordFeed
from router.dns.resolve import make_resolver, resolve_addresses
from router.dns.server import DnsServer
from router.dns.settings import DnsConfig
from router.models import HealthView, Replica, ReplicaState
from router.reconciler import Reconciler
from router.snapshot import Policy
from tests.support import eventually

NAME = "api.example.test."


def replica(n: int, host: str | None = None) -> Replica:
    host = host or f"10.0.0.{n}"
    return Replica(id=f"r{n}", url=f"https://{host}", scheme="https", host=host, port=443)


@dataclass
class Running:
    reconciler: Reconciler
    feed: RecordFeed
    server: DnsServer

    @property
    def port(self) -> int:
        assert self.server.address is not None
        return self.server.address[1]

    def set_state(self, replica_id: str, state: ReplicaState) -> None:
        self.reconciler.set_health(replica_id, HealthView(state=state))

    async def query(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, **kwargs: Any
    ) -> dns.message.Message:
        message = dns.message.make_query(name, rdtype, **kwargs)
        send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        answer: dns.message.Message = await send(message, "127.0.0.1", port=self.port, timeout=2)
        return answer

    async def addresses(self, *, tcp: bool = False) -> set[str]:
        answer = await self.query(NAME, tcp=tcp)
        return {rd.to_text() for rrset in answer.answer for rd in rrset}


@pytest.fixture
def dns_cfg() -> DnsConfig:
    return DnsConfig(
        name=NAME,
        zone="example.test",
        service="https",
        txt_app_address=True,
        app_port=8080,
        server={"listen": "127.0.0.1:0"},
    )


def pinned(host: str) -> tuple[str, int] | None:
    """Like `discovery.connect_to`: rN.backend.test dials 10.0.0.N."""
    if host.endswith(".backend.test"):
        return f"10.0.0.{host.split('.')[0].removeprefix('r')}", 443
    return None


async def start(cfg: DnsConfig, replicas: Sequence[Replica]) -> Running:
    reconciler = Reconciler(Policy(picker_factory=RoundRobin), {})
    reconciler.set_replicas(replicas)
    for r in replicas:
        reconciler.set_health(r.id, HealthView(state=ReplicaState.HEALTHY))
    reconciler.rebuild()
    feed = RecordFeed(cfg, reconciler, app_id="c" * 40, pinned=pinned)
    await feed.start()
    server = DnsServer(cfg, feed)
    await server.start()
    return Running(reconciler, feed, server)


@pytest.fixture
async def running(dns_cfg: DnsConfig) -> AsyncIterator[Running]:
    names = [replica(n, host=f"r{n}.backend.test") for n in (1, 2, 3)]
    handle = await start(dns_cfg, names)
    yield handle
    await handle.server.stop()
    await handle.feed.stop()


async def test_answers_follow_health_over_udp_and_tcp(running: Running) -> None:
    everyone = {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert await running.addresses() == everyone
    assert await running.addresses(tcp=True) == everyone

    running.set_state("r2", ReplicaState.UNHEALTHY)

    async def r2_gone() -> bool:
        return await running.addresses() == {"10.0.0.1", "10.0.0.3"}

    await eventually(r2_gone)
    assert await running.addresses(tcp=True) == {"10.0.0.1", "10.0.0.3"}

    running.set_state("r2", ReplicaState.HEALTHY)

    async def r2_back() -> bool:
        return await running.addresses() == everyone

    await eventually(r2_back)


async def test_answer_order_rotates_per_query(running: Running) -> None:
    firsts = []
    for _ in range(3):
        answer = await running.query(NAME)
        firsts.append(next(iter(answer.answer[0])).to_text())
    assert set(firsts) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


async def test_max_records_caps_each_answer_and_rotation_covers_all(dns_cfg: DnsConfig) -> None:
    cfg = dns_cfg.model_copy(update={"max_records": 2})
    handle = await start(cfg, [replica(n) for n in range(1, 6)])
    try:
        seen: set[str] = set()
        for _ in range(5):
            answer = await handle.query(NAME)
            assert len(answer.answer[0]) == 2
            seen |= {rd.to_text() for rd in answer.answer[0]}
        assert seen == {f"10.0.0.{n}" for n in range(1, 6)}
    finally:
        await handle.server.stop()
        await handle.feed.stop()


async def test_authoritative_answers_for_srv_txt_soa_ns(running: Running) -> None:
    srv = await running.query("_https._tcp." + NAME, "SRV")
    assert srv.flags & dns.flags.AA
    assert {(rd.port, rd.target.to_text()) for rd in srv.answer[0]} == {
        (443, f"r{n}.backend.test.") for n in (1, 2, 3)
    }
    txt = await running.query("_dstack-app-address." + NAME, "TXT")
    assert next(iter(txt.answer[0])).strings == (("c" * 40 + ":8080").encode(),)
    soa = await running.query("example.test.", "SOA", tcp=True)
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    ns = await running.query("example.test.", "NS")
    assert {rd.to_text() for rd in ns.answer[0]} == {"ns1.example.test."}


async def test_nxdomain_nodata_and_refused(running: Running) -> None:
    missing = await running.query("nope.example.test.")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.authority[0].rdtype == dns.rdatatype.SOA
    nodata = await running.query(NAME, "MX")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    # `_tcp.api...` owns nothing but has a name below it: NODATA, not NXDOMAIN.
    empty_non_terminal = await running.query("_tcp." + NAME, "A")
    assert empty_non_terminal.rcode() == dns.rcode.NOERROR
    other = await running.query("api.example.com.", tcp=True)
    assert other.rcode() == dns.rcode.REFUSED
    assert not other.answer


async def test_names_are_case_insensitive(running: Running) -> None:
    answer = await running.query("API.Example.TEST.")
    assert len(answer.answer[0]) == 3


async def test_edns_is_answered_and_unknown_versions_get_badvers(running: Running) -> None:
    answer = await running.query(NAME, use_edns=0, payload=4096)
    assert answer.edns == 0
    assert len(answer.answer[0]) == 3
    bad = await running.query(NAME, use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS


async def test_large_answers_set_tc_over_udp_and_come_whole_over_tcp(dns_cfg: DnsConfig) -> None:
    cfg = dns_cfg.model_copy(update={"max_records": 60})
    replicas = [replica(n, host=f"2001:db8::{n:x}") for n in range(1, 51)]
    handle = await start(cfg, replicas)
    try:
        plain = await handle.query(NAME, "AAAA")
        assert plain.flags & dns.flags.TC
        assert not plain.answer
        edns = await handle.query(NAME, "AAAA", use_edns=0, payload=1232)
        assert edns.flags & dns.flags.TC  # 50 x 28 bytes does not fit 1232 either
        whole = await handle.query(NAME, "AAAA", tcp=True)
        assert not whole.flags & dns.flags.TC
        assert len(whole.answer[0]) == 50
    finally:
        await handle.server.stop()
        await handle.feed.stop()


# -- malformed input ----------------------------------------------------------------------


def raw_udp(port: int, payload: bytes, *, expect_reply: bool) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2 if expect_reply else 0.05)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def fuzz_corpus(seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    valid = dns.message.make_query(NAME, "A", use_edns=0).to_wire()
    corpus = [b"", b"\x00", valid[:5], valid[:11], valid[:12], valid[:-3], valid + b"junk"]
    # Headers claiming huge section counts with no data behind them.
    corpus += [struct.pack("!HHHHHH", 7, 0x0100, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF)]
    corpus += [valid[:4] + b"\xff\xff" * 4 + valid[12:]]
    # A compression pointer loop in the question name.
    corpus += [struct.pack("!HHHHHH", 9, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"]
    corpus += [rng.randbytes(rng.randrange(1, 600)) for _ in range(150)]
    # Valid queries with single bytes flipped.
    for _ in range(150):
        mutated = bytearray(valid)
        mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        corpus.append(bytes(mutated))
    return corpus


async def test_formerr_for_a_readable_header_with_garbage_behind_it(running: Running) -> None:
    header = struct.pack("!HHHHHH", 4242, 0x0100, 5, 0, 0, 0)
    reply = await asyncio.to_thread(raw_udp, running.port, header + b"\x03abc", expect_reply=True)
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    assert parsed.id == 4242
    assert parsed.rcode() == dns.rcode.FORMERR
    # Too short for a header: dropped, nothing comes back.
    assert await asyncio.to_thread(raw_udp, running.port, b"\x01\x02", expect_reply=False) is None


async def test_a_fuzzed_corpus_never_stops_the_server(running: Running) -> None:
    corpus = fuzz_corpus()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in corpus:
            sock.sendto(packet, ("127.0.0.1", running.port))
    for packet in corpus[:60]:
        _, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(struct.pack("!H", len(packet)) + packet)
        writer.write(b"\xff")  # and a dangling partial length prefix
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # A lying TCP length prefix followed by a hang-up.
    _, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"\xff\xff" + b"x" * 10)
    writer.close()
    await writer.wait_closed()

    assert running.server.responder.malformed > 0
    assert await running.addresses() == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert await running.addresses(tcp=True) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


async def test_several_queries_on_one_tcp_connection(running: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        for qid in (1, 2):
            wire = dns.message.make_query(NAME, "A", id=qid).to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        for qid in (1, 2):
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            assert dns.message.from_wire(await reader.readexactly(length)).id == qid
    finally:
        writer.close()
        await writer.wait_closed()


# -- the async resolver with a configured nameserver -----------------------------------------


async def test_replica_host_names_resolve_through_the_configured_nameserver(
    running: Running, dns_cfg: DnsConfig
) -> None:
    """The built-in server stands in for a site's DNS: a second feed resolves host names
    through it (`dns.nameservers`) and publishes their addresses."""
    resolver = make_resolver([f"127.0.0.1:{running.port}"], timeout=2)
    found = await resolve_addresses([NAME, "nope.example.test", "10.9.9.9"], resolver)
    assert set(found.addresses[NAME]) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert found.addresses["nope.example.test"] == ()
    assert found.addresses["10.9.9.9"] == ("10.9.9.9",)
    # `connect_to` targets given by name are looked up in their turn.
    targets = {"a.internal": ("localhost", 8443), "b.internal": (NAME, 443)}
    via = await resolve_addresses(["a.internal", "b.internal"], resolver, pinned=targets.get)
    assert via.addresses["a.internal"] == ("127.0.0.1",)
    assert set(via.addresses["b.internal"]) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}

    front = DnsConfig(name="front.example.org", nameservers=(f"127.0.0.1:{running.port}",))
    reconciler = Reconciler(Policy(picker_factory=RoundRobin), {})
    reconciler.set_replicas([replica(9, host=NAME.rstrip("."))])
    reconciler.set_health("r9", HealthView(state=ReplicaState.HEALTHY))
    reconciler.rebuild()
    feed = RecordFeed(front, reconciler)
    await feed.start()
    try:
        values = {r.value for r in feed.current.records if r.type == "A"}
        assert values == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    finally:
        await feed.stop()


async def test_any_returns_every_type_and_other_opcodes_are_not_implemented(
    running: Running,
) -> None:
    anything = await running.query("example.test.", "ANY", tcp=True)
    assert {rrset.rdtype for rrset in anything.answer} == {dns.rdatatype.SOA, dns.rdatatype.NS}
    notify = dns.message.make_query("example.test.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    answer = await dns.asyncquery.udp(notify, "127.0.0.1", port=running.port, timeout=2)
    assert answer.rcode() == dns.rcode.NOTIMP
    transfer = await running.query("example.test.", "AXFR", tcp=True)
    assert transfer.rcode() == dns.rcode.REFUSED
