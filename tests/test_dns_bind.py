"""The RFC 2136 sink against a real BIND 9 primary on loopback, with a TSIG key.

The fixture starts Debian's `named` in a temp directory with a test zone that also holds
the replicas' host names, so the router resolves them through BIND (`dns.nameservers`)
and publishes `api*.example.test` back into it by dynamic update.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from router.balancing.round_robin import RoundRobin
from router.dns.feed import RecordFeed
from router.dns.settings import DnsConfig
from router.dns.sinks import DnsPublisher, Rfc2136Sink, make_sinks
from router.errors import DnsSinkError
from router.models import HealthView, Replica, ReplicaState
from router.reconciler import Reconciler
from router.snapshot import Policy
from tests.support import eventually

pytestmark = pytest.mark.bind

ZONE = "example.test."
KEY = "router-key"
SECRET_ENV = "ROUTER_TEST_TSIG_SECRET"

ZONE_FILE = """$ORIGIN example.test.
$TTL 60
@   SOA ns1 hostmaster 1 3600 600 86400 60
@   NS  ns1
ns1 A   127.0.0.1
r1  A   192.0.2.1
r2  A   192.0.2.2
r3  A   192.0.2.3
"""

NAMED_CONF = """options {{
    directory "{work}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{work}/named.pid";
    session-keyfile "{work}/session.key";
    managed-keys-directory "{work}";
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{key}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "example.test" {{
    type primary;
    file "{work}/db.example.test";
    update-policy {{ grant {key} zonesub ANY; }};
}};
"""


@dataclass
class Bind:
    port: int
    secret: str
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def values(self, name: str, rdtype: str = "A") -> set[str] | None:
        """What BIND serves for name/type; None when the name does not exist."""
        query = dns.message.make_query(name, rdtype)
        answer = await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=2)
        if answer.rcode() == dns.rcode.NXDOMAIN:
            return None
        return {
            rd.to_text()
            for rrset in answer.answer
            if rrset.rdtype == dns.rdatatype.from_text(rdtype)
            for rd in rrset
        }


def free_port() -> int:
    """A port free for both TCP and UDP on loopback (named cannot be given port 0)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for named")


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    query = dns.message.make_query(ZONE, "SOA")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"named exited {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            continue
        if answer.answer:
            return
    raise RuntimeError(f"named did not answer within 20s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    named = shutil.which("named") or (
        "/usr/sbin/named" if Path("/usr/sbin/named").exists() else None
    )
    if named is None:
        pytest.skip("BIND 9 `named` is not installed (Debian: apt-get install bind9 bind9-utils)")
    work = tmp_path_factory.mktemp("bind")
    port = free_port()
    secret = base64.b64encode(os.urandom(32)).decode()
    (work / "db.example.test").write_text(ZONE_FILE)
    conf = work / "named.conf"
    conf.write_text(NAMED_CONF.format(work=work, port=port, key=KEY, secret=secret))
    log = work / "named.log"
    with log.open("wb") as out:
        # -g: foreground, log to stderr; -n 1: one worker thread on this small machine.
        process = subprocess.Popen(
            [named, "-g", "-n", "1", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(process, port, log)
        yield Bind(port, secret, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)  # SIGKILL cannot be ignored: a longer wait is a test failure


def replica(n: int) -> Replica:
    host = f"r{n}.example.test"
    return Replica(id=f"r{n}", url=f"https://{host}", scheme="https", host=host, port=443)


@dataclass
class Published:
    reconciler: Reconciler
    feed: RecordFeed
    publisher: DnsPublisher

    def set_state(self, replica_id: str, state: ReplicaState) -> None:
        self.reconciler.set_health(replica_id, HealthView(state=state), urgent=True)


def dns_config(bind: Bind, name: str, **extra: Any) -> DnsConfig:
    return DnsConfig(
        name=name,
        service="https",
        nameservers=(bind.address,),
        min_interval=0,
        retry_interval="100ms",
        sinks=[
            {
                "type": "rfc2136",
                "server": bind.address,
                "zone": ZONE,
                "tsig_key_name": KEY,
                "tsig_secret_env": SECRET_ENV,
            }
        ],
        **extra,
    )


@pytest.fixture
async def publish(bind: Bind) -> AsyncIterator[Any]:
    running: list[Published] = []

    async def start(cfg: DnsConfig) -> Published:
        reconciler = Reconciler(Policy(picker_factory=RoundRobin), {})
        reconciler.set_replicas([replica(1), replica(2), replica(3)])
        for n in (1, 2, 3):
            reconciler.set_health(f"r{n}", HealthView(state=ReplicaState.HEALTHY))
        reconciler.rebuild()
        feed = RecordFeed(cfg, reconciler)
        await feed.start()
        sinks = make_sinks(cfg, environ={SECRET_ENV: bind.secret})
        publisher = DnsPublisher(cfg, feed, sinks)
        await publisher.start()
        handle = Published(reconciler, feed, publisher)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await handle.publisher.stop()
        await handle.feed.stop()


async def test_healthy_replicas_are_published_and_an_unhealthy_one_disappears(
    bind: Bind, publish: Any
) -> None:
    name = "api.example.test."
    handle: Published = await publish(dns_config(bind, name))
    everyone = {"192.0.2.1", "192.0.2.2", "192.0.2.3"}

    async def serves(expected: set[str]) -> bool:
        return await bind.values(name) == expected

    await eventually(lambda: serves(everyone))
    srv = await bind.values("_https._tcp." + name, "SRV")
    assert srv == {f"10 100 443 r{n}.example.test." for n in (1, 2, 3)}

    handle.set_state("r2", ReplicaState.UNHEALTHY)
    await eventually(lambda: serves({"192.0.2.1", "192.0.2.3"}))
    srv = await bind.values("_https._tcp." + name, "SRV")
    assert srv == {f"10 100 443 r{n}.example.test." for n in (1, 3)}

    handle.set_state("r2", ReplicaState.HEALTHY)
    await eventually(lambda: serves(everyone))
    assert handle.publisher.failures == {f"rfc2136:{bind.address}/{ZONE}": 0}


async def test_fail_closed_empties_the_set_when_the_last_replica_goes_down(
    bind: Bind, publish: Any
) -> None:
    name = "closed.example.test."
    handle: Published = await publish(dns_config(bind, name, when_empty="fail_closed"))

    async def serves(expected: set[str] | None) -> bool:
        return await bind.values(name) == expected

    await eventually(lambda: serves({"192.0.2.1", "192.0.2.2", "192.0.2.3"}))
    for n in (1, 2):
        handle.set_state(f"r{n}", ReplicaState.UNHEALTHY)
    await eventually(lambda: serves({"192.0.2.3"}))
    handle.set_state("r3", ReplicaState.UNHEALTHY)
    await eventually(lambda: serves(None))  # no records left: the name is gone
    assert await bind.values("_https._tcp." + name, "SRV") is None


async def test_fail_open_keeps_every_discovered_replica(bind: Bind, publish: Any) -> None:
    name = "open.example.test."
    handle: Published = await publish(dns_config(bind, name))
    for n in (1, 2, 3):
        handle.set_state(f"r{n}", ReplicaState.UNHEALTHY)
    await eventually(lambda: handle.feed.current.notes != ())

    async def serves_all() -> bool:
        return await bind.values(name) == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}

    await eventually(serves_all)


async def test_a_wrong_tsig_secret_is_refused_with_a_clear_error(bind: Bind) -> None:
    cfg = dns_config(bind, "wrong.example.test.")
    (sink,) = make_sinks(cfg, environ={SECRET_ENV: base64.b64encode(b"x" * 32).decode()})
    assert isinstance(sink, Rfc2136Sink)
    feed_cfg = cfg.model_copy(update={"sinks": ()})
    reconciler = Reconciler(Policy(picker_factory=RoundRobin), {}, health_enabled=False)
    reconciler.set_replicas([replica(1)])
    reconciler.rebuild()
    feed = RecordFeed(feed_cfg, reconciler)
    await feed.start()
    try:
        with pytest.raises(DnsSinkError, match=f"rejected TSIG key {KEY}.*{SECRET_ENV}"):
            await sink.write(feed.current)
    finally:
        await feed.stop()
    assert await bind.values("wrong.example.test.") is None
