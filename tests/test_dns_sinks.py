"""The file sink and the publisher that follows the reconciler's snapshots."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.zone
import pytest

from router.balancing.round_robin import RoundRobin
from router.dns.feed import RecordFeed
from router.dns.records import RecordSet, ReplicaSets, build_records
from router.dns.settings import DnsConfig, FileSinkConfig
from router.dns.sinks import DnsPublisher, FileSink, make_sinks
from router.errors import ConfigError, DnsSinkError
from router.models import HealthView, Replica, ReplicaState
from router.reconciler import Reconciler
from router.snapshot import Policy
from tests.support import eventually

NAME = "api.example.test."


def replica(n: int) -> Replica:
    return Replica(
        id=f"r{n}", url=f"https://10.0.0.{n}", scheme="https", host=f"10.0.0.{n}", port=443
    )


def zone_addresses(path: Path) -> set[str]:
    text = path.read_text()
    zone = dns.zone.from_text(text, origin="example.test.", relativize=False, check_origin=False)
    rdataset = zone.get_rdataset(NAME, "A")
    return {r.to_text() for r in rdataset} if rdataset else set()


def records(*ns: int) -> RecordSet:
    cfg = DnsConfig(name=NAME)
    reps = tuple(replica(n) for n in ns)
    return build_records(cfg, ReplicaSets(reps, reps), {})


async def test_file_sink_writes_atomically_and_runs_the_command_without_a_shell(
    tmp_path: Path,
) -> None:
    target = tmp_path / "api.zone"
    marker = tmp_path / "marker"
    # The argument with shell syntax arrives literally: no shell ever sees it.
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    sink = FileSink(
        FileSinkConfig(
            type="file",
            path=target,
            post_write_command=(sys.executable, "-c", script, str(marker), "$(reload); x"),
        )
    )
    await sink.write(records(1, 2))
    assert zone_addresses(target) == {"10.0.0.1", "10.0.0.2"}
    assert marker.read_text() == "$(reload); x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.zone", "marker"]  # no temp left


async def test_file_sink_reports_a_failing_command_and_a_missing_directory(
    tmp_path: Path,
) -> None:
    failing = FileSink(
        FileSinkConfig(
            type="file",
            path=tmp_path / "x.json",
            format="json",
            post_write_command=(sys.executable, "-c", "import sys; sys.exit('reload refused')"),
        )
    )
    with pytest.raises(DnsSinkError, match="exited 1: reload refused"):
        await failing.write(records(1))
    assert json.loads((tmp_path / "x.json").read_text())[0]["value"] == "10.0.0.1"

    missing = FileSink(FileSinkConfig(type="file", path=tmp_path / "no" / "such" / "dir.zone"))
    with pytest.raises(DnsSinkError, match="cannot write"):
        await missing.write(records(1))
    absent = FileSink(
        FileSinkConfig(type="file", path=tmp_path / "y", post_write_command=("/no/such/tool",))
    )
    with pytest.raises(DnsSinkError, match="cannot start"):
        await absent.write(records(1))


def test_a_missing_tsig_secret_is_a_config_error() -> None:
    cfg = DnsConfig(
        name=NAME,
        sinks=[
            {
                "type": "rfc2136",
                "server": "127.0.0.1:53",
                "zone": "example.test",
                "tsig_key_name": "router-key",
                "tsig_secret_env": "ROUTER_TEST_TSIG",
            }
        ],
    )
    with pytest.raises(ConfigError, match="ROUTER_TEST_TSIG"):
        make_sinks(cfg, environ={})
    with pytest.raises(ConfigError, match="base64"):
        make_sinks(cfg, environ={"ROUTER_TEST_TSIG": "not base64!"})


# -- the publisher ------------------------------------------------------------------------


@dataclass
class GatedSleep:
    """A `sleep` the test releases by hand, recording what was asked; a fake clock moves."""

    now: float = 1000.0
    asked: list[float] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.waiting.set()
        await self.gate.wait()
        self.gate.clear()
        self.waiting.clear()
        self.now += seconds


@dataclass
class Published:
    reconciler: Reconciler
    feed: RecordFeed
    publisher: DnsPublisher
    path: Path
    time: GatedSleep

    def set_state(self, replica_id: str, state: ReplicaState) -> None:
        self.reconciler.set_health(replica_id, HealthView(state=state), urgent=True)


@pytest.fixture
async def published(tmp_path: Path) -> AsyncIterator[Published]:
    path = tmp_path / "api.zone"
    cfg = DnsConfig(
        name=NAME,
        zone="example.test",
        min_interval="30s",
        sinks=[{"type": "file", "path": str(path)}],
    )
    reconciler = Reconciler(Policy(picker_factory=RoundRobin), {})
    reconciler.set_replicas([replica(1), replica(2), replica(3)])
    for n in (1, 2, 3):
        reconciler.set_health(f"r{n}", HealthView(state=ReplicaState.HEALTHY))
    reconciler.rebuild()
    feed = RecordFeed(cfg, reconciler)
    await feed.start()
    fake = GatedSleep()
    publisher = DnsPublisher(cfg, feed, make_sinks(cfg), clock=fake.clock, sleep=fake.sleep)
    await publisher.start()
    yield Published(reconciler, feed, publisher, path, fake)
    await publisher.stop()
    await feed.stop()


def writes(p: Published) -> int:
    return p.publisher.writes[f"file:{p.path}"]


async def test_publisher_writes_at_start_and_only_on_change(published: Published) -> None:
    await eventually(lambda: writes(published) == 1)
    assert zone_addresses(published.path) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    serial = published.feed.current.serial
    # A new snapshot (forced by a policy reload) with the same routable set: the feed
    # hears it synchronously, finds the records unchanged and wakes no sink.
    version = published.reconciler.current.version
    published.reconciler.set_policy(published.reconciler.policy)
    assert published.reconciler.current.version == version + 1
    assert writes(published) == 1
    assert not published.time.asked
    assert published.feed.current.serial == serial


async def test_flapping_within_min_interval_coalesces_into_one_write(
    published: Published,
) -> None:
    await eventually(lambda: writes(published) == 1)
    published.set_state("r2", ReplicaState.UNHEALTHY)
    await eventually(published.time.waiting.is_set)
    assert published.time.asked == [30.0]  # the write waits out min_interval
    for state in (ReplicaState.HEALTHY, ReplicaState.UNHEALTHY, ReplicaState.HEALTHY):
        published.set_state("r2", state)
    published.set_state("r3", ReplicaState.UNHEALTHY)
    published.time.gate.set()
    await eventually(lambda: writes(published) == 2)
    assert zone_addresses(published.path) == {"10.0.0.1", "10.0.0.2"}
    serial = dns.zone.from_text(published.path.read_text(), origin="example.test.")
    assert serial.find_rdataset("@", "SOA")[0].serial == published.feed.current.serial
    assert writes(published) == 2


async def test_a_failed_write_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "later" / "api.json"
    cfg = DnsConfig(
        name=NAME,
        min_interval=0,
        retry_interval="50ms",
        sinks=[{"type": "file", "path": str(path), "format": "json"}],
    )
    reconciler = Reconciler(Policy(picker_factory=RoundRobin), {}, health_enabled=False)
    reconciler.set_replicas([replica(1)])
    reconciler.rebuild()
    feed = RecordFeed(cfg, reconciler)
    await feed.start()
    publisher = DnsPublisher(cfg, feed, make_sinks(cfg))
    await publisher.start()
    try:
        await eventually(lambda: publisher.failures[f"file:{path}"] >= 1)
        path.parent.mkdir()
        await eventually(path.exists)
        assert json.loads(path.read_text())[0]["value"] == "10.0.0.1"
    finally:
        await publisher.stop()
        await feed.stop()
