"""Active health checks against real aiohttp servers on 127.0.0.1, feeding a real reconciler.

Replicas are named by host (`a.test`, ...) and reached through `connect_to`, exactly as
traffic reaches them. Intervals are 50 ms; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trustme
from aiohttp import web

from router.balancing.round_robin import RoundRobin
from router.health.active import HealthChecker
from router.health.probe import make_health_session
from router.health.settings import HealthConfig
from router.models import HealthView, Replica, ReplicaState
from router.reach import client_ssl_context
from router.reconciler import Reconciler
from router.snapshot import Policy
from tests.support import eventually

FAST = HealthConfig(
    interval=0.05,
    unhealthy_interval=0.05,
    interval_jitter_percent=0,
    timeout=1.0,
    healthy_threshold=2,
    unhealthy_threshold=3,
)


@dataclass
class HealthServer:
    """A replica whose /health answers `status`; counts what it served and saw."""

    status: int = 200
    hang: bool = False
    served: list[int] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def health(self, request: web.Request) -> web.Response:
        self.hosts.append(request.headers.get("Host", ""))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.hang:
                await self.release.wait()
            status = self.status
            self.served.append(status)
            if 300 <= status < 400:
                raise web.HTTPFound("/elsewhere")
            return web.Response(status=status, text="ok" if status < 300 else "down")
        finally:
            self.in_flight -= 1

    def count(self, status: int) -> int:
        return sum(1 for s in self.served if s == status)


@asynccontextmanager
async def serving(
    server: HealthServer, tls: ssl.SSLContext | None = None
) -> AsyncIterator[HealthServer]:
    if tls is not None:

        def remember_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            server.sni.append(name)

        tls.sni_callback = remember_sni
    app = web.Application()
    app.router.add_get("/health", server.health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def replica(rid: str, scheme: str = "http", port: int = 80, status: str = "running") -> Replica:
    host = f"{rid}.test"
    return Replica(
        id=rid,
        url=f"{scheme}://{host}:{port}",
        scheme=scheme,
        host=host,
        port=port,
        platform_status=status,
    )


class Wiring:
    """A checker feeding a real reconciler, and a record of every published view."""

    def __init__(self, cfg: HealthConfig, connect_to: dict[str, str], tls: ssl.SSLContext):
        self.reconciler = Reconciler(Policy(picker_factory=RoundRobin), {})
        self.published: list[tuple[str, HealthView, bool]] = []
        self.checker = HealthChecker(
            cfg,
            self.sink,
            lambda: make_health_session(connect_to, tls, cfg),
            rng=random.Random(1),
        )
        self.task: asyncio.Task[None] | None = None

    def sink(self, rid: str, view: HealthView, urgent: bool) -> None:
        self.published.append((rid, view, urgent))
        self.reconciler.set_health(rid, view, urgent=urgent)

    def set_replicas(self, replicas: list[Replica]) -> None:
        self.reconciler.set_replicas(replicas)
        self.checker.update_replicas(replicas)

    def routable(self) -> list[str]:
        self.reconciler.rebuild()
        return [r.id for r in self.reconciler.current.routable]

    def state(self, rid: str) -> str:
        return self.reconciler.current.by_id[rid].state

    def start(self) -> None:
        self.task = asyncio.create_task(self.checker.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        else:
            await self.checker.aclose()
        self.reconciler.close()


@pytest.fixture
async def wiring_factory() -> AsyncIterator[list[Wiring]]:
    made: list[Wiring] = []
    yield made
    for w in made:
        await w.stop()


def wire(
    made: list[Wiring],
    cfg: HealthConfig,
    connect_to: dict[str, str],
    tls: ssl.SSLContext | None = None,
) -> Wiring:
    w = Wiring(cfg, connect_to, tls or client_ssl_context())
    made.append(w)
    return w


async def test_failing_health_takes_a_replica_out_after_the_threshold_and_back_after_healthy(
    wiring_factory: list[Wiring], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="router.health")
    async with serving(HealthServer()) as a, serving(HealthServer()) as b:
        w = wire(
            wiring_factory,
            FAST,
            {"a.test": f"127.0.0.1:{a.port}", "b.test": f"127.0.0.1:{b.port}"},
        )
        w.set_replicas([replica("a"), replica("b")])
        assert w.routable() == []  # pending: no traffic before a check passes
        w.start()
        await eventually(lambda: w.routable() == ["a", "b"])
        assert a.hosts[0] == "a.test"  # Host is the replica's name, not the dial address

        a.status = 500
        await eventually(lambda: w.state("a") == ReplicaState.UNHEALTHY)
        # Out at exactly the third failing check, with the cause shown.
        failures_when_out = a.count(500)
        assert failures_when_out == FAST.unhealthy_threshold
        assert w.routable() == ["b"]
        assert w.reconciler.current.by_id["a"].reason == "unhealthy: status 500"

        a.status = 200
        passes_before = a.count(200)
        await eventually(lambda: w.state("a") == ReplicaState.HEALTHY)
        assert a.count(200) - passes_before == FAST.healthy_threshold
        assert w.routable() == ["a", "b"]
        views_of_a = sum(rid == "a" for rid, _, _ in w.published)
        await eventually(lambda: a.count(200) - passes_before > 5)  # checks go on...
        # ...but passing checks that change nothing cost no snapshot rebuild.
        assert sum(rid == "a" for rid, _, _ in w.published) == views_of_a

    logged = [r.getMessage() for r in caplog.records if r.name.startswith("router.health")]
    # At debug level (the reconciler logs the one INFO line per transition).
    assert sum("a: active checks healthy -> unhealthy" in m for m in logged) == 1
    assert sum("status 500" in m and "-> unhealthy" in m for m in logged) == 1
    assert sum("a: active checks unhealthy -> healthy" in m for m in logged) == 1
    assert sum("replica b:" in m for m in logged) == 1  # b: only pending -> healthy


async def test_a_hanging_replica_is_cut_by_the_timeout(wiring_factory: list[Wiring]) -> None:
    cfg = FAST.model_copy(update={"timeout": 0.2})
    async with serving(HealthServer(hang=True)) as server:
        w = wire(wiring_factory, cfg, {"a.test": f"127.0.0.1:{server.port}"})
        w.set_replicas([replica("a")])
        results = await asyncio.wait_for(w.checker.check_now("a"), 5)
        check = results["a"]
        assert not check.ok
        assert check.error is not None
        assert check.error.startswith("timeout")
        assert check.latency is not None
        assert 0.15 < check.latency < 1.0
        assert w.reconciler.current.by_id["a"].reason.startswith("unhealthy: timeout")


async def test_refused_reset_and_redirect_are_failures_with_their_cause(
    wiring_factory: list[Wiring],
) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.transport.abort()  # accept, read, then drop without answering

    resetter = await asyncio.start_server(reset, "127.0.0.1", 0)
    reset_port = resetter.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(reset, "127.0.0.1", 0)
    refused_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        async with serving(HealthServer(status=302)) as redirecting:
            w = wire(
                wiring_factory,
                FAST,
                {
                    "reset.test": f"127.0.0.1:{reset_port}",
                    "refused.test": f"127.0.0.1:{refused_port}",
                    "redirect.test": f"127.0.0.1:{redirecting.port}",
                },
            )
            w.set_replicas([replica("reset"), replica("refused"), replica("redirect")])
            results = await asyncio.wait_for(w.checker.check_now(), 5)
    finally:
        resetter.close()
        await resetter.wait_closed()
    errors = {rid: r.error or "" for rid, r in results.items()}
    assert errors["reset"].startswith("reset:")
    assert errors["refused"].startswith("connect:")
    assert errors["redirect"] == "status 302 (redirects are not followed)"
    assert not any(r.ok for r in results.values())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = client_ssl_context()
    ca.configure_trust(context)
    return context


async def test_https_check_sends_host_and_sni_and_verifies_the_certificate(
    wiring_factory: list[Wiring], ca: trustme.CA
) -> None:
    good_tls = server_tls(ca, "good.test")
    bad_tls = server_tls(ca, "someone-else.test")
    async with serving(HealthServer(), good_tls) as good, serving(HealthServer(), bad_tls) as bad:
        w = wire(
            wiring_factory,
            FAST,
            {"good.test": f"127.0.0.1:{good.port}", "bad.test": f"127.0.0.1:{bad.port}"},
            trusting(ca),
        )
        w.set_replicas([replica("good", "https", 8443), replica("bad", "https", 443)])
        results = await asyncio.wait_for(w.checker.check_now(), 5)

    assert results["good"].ok
    assert good.sni == ["good.test"]
    assert good.hosts == ["good.test:8443"]
    assert not results["bad"].ok
    assert bad.served == []  # nothing reaches a replica whose certificate is wrong
    assert (results["bad"].error or "").startswith("tls: certificate rejected")
    assert w.reconciler.current.by_id["bad"].reason.startswith("unhealthy: tls:")


async def test_checks_run_with_bounded_concurrency(wiring_factory: list[Wiring]) -> None:
    cfg = FAST.model_copy(update={"max_concurrency": 4})
    async with serving(HealthServer(hang=True)) as server:
        w = wire(wiring_factory, cfg, {"*.test": f"127.0.0.1:{server.port}"})
        w.set_replicas([replica(f"r{i}") for i in range(20)])
        checking = asyncio.create_task(w.checker.check_now())
        await eventually(lambda: server.in_flight == 4)
        assert len(server.hosts) == 4  # the other 16 wait for a slot
        server.release.set()
        results = await asyncio.wait_for(checking, 5)
    assert len(results) == 20
    assert all(r.ok for r in results.values())
    assert server.peak_in_flight == 4


async def test_only_running_replicas_are_checked_and_removed_ones_are_forgotten(
    wiring_factory: list[Wiring],
) -> None:
    async with serving(HealthServer()) as server:
        w = wire(wiring_factory, FAST, {"*.test": f"127.0.0.1:{server.port}"})
        w.set_replicas([replica("up"), replica("booting", status="starting")])
        with pytest.raises(LookupError, match="booting"):
            await w.checker.check_now("booting")
        w.start()
        await eventually(lambda: w.routable() == ["up"])
        assert set(server.hosts) == {"up.test"}
        assert w.checker.view("booting") is None

        w.set_replicas([replica("booting")])  # "up" removed, "booting" now running
        assert w.checker.view("up") is None
        assert w.checker.view("booting") is not None
        await eventually(lambda: w.routable() == ["booting"])

        # Stopped then running again: it starts over as pending, not as its old self.
        w.set_replicas([replica("booting", status="stopped")])
        w.set_replicas([replica("booting")])
        assert w.reconciler.health_of("booting") == HealthView(ReplicaState.PENDING)
        assert w.routable() == []


async def test_details_explain_the_last_check_for_the_status_page(
    wiring_factory: list[Wiring],
) -> None:
    async with serving(HealthServer(status=503)) as server:
        w = wire(wiring_factory, FAST, {"a.test": f"127.0.0.1:{server.port}"})
        w.set_replicas([replica("a")])
        await w.checker.check_now("a")
        await w.checker.check_now("a")
    view = w.checker.view("a")
    assert view is not None
    assert view.state is ReplicaState.UNHEALTHY
    assert view.last_check is not None
    assert view.last_check.status == 503
    assert view.last_check.error == "status 503"
    assert view.last_check.latency is not None
    assert view.last_check.latency >= 0
    assert view.ejections == 0


def test_disabled_active_checks_leave_replicas_routable_for_passive_checks() -> None:
    published: dict[str, HealthView] = {}
    checker = HealthChecker(
        HealthConfig(enabled=False),
        lambda rid, view, urgent: published.__setitem__(rid, view),
        lambda: pytest.fail("no session is needed when checks are off"),
    )
    checker.update_replicas([replica("a")])
    assert published["a"].state is ReplicaState.HEALTHY
