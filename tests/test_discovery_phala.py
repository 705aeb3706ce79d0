"""PhalaDiscovery against the local Phala Cloud simulator: both API versions, replica
lifecycle, every injected Cloud API failure, auth errors, secrets kept out of logs, and the
empty-set confirmation rule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from router.discovery.phala import PhalaDiscovery
from router.discovery.settings import PhalaDiscoveryConfig
from router.errors import DiscoveryAuthError, DiscoveryError
from router.models import Replica
from router.simulator import SimReplicaConfig, Simulator, SimulatorConfig
from tests.support import eventually

API_KEY = "phala-test-key-0123456789-SECRET"
ENV = {"PHALA_CLOUD_API_KEY": API_KEY}


class Published:
    """Records every set discovery publishes."""

    def __init__(self) -> None:
        self.sets: list[tuple[Replica, ...]] = []

    def __call__(self, replicas: Sequence[Replica]) -> None:
        self.sets.append(tuple(replicas))

    @property
    def last(self) -> dict[str, Replica]:
        return {r.id: r for r in self.sets[-1]} if self.sets else {}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        api_key=API_KEY,
        retry_after=2,
        replicas=(
            SimReplicaConfig(region="us-east"),
            SimReplicaConfig(region="EU-West"),
            SimReplicaConfig(region="ap-south", status="stopped"),
        ),
    )
    async with Simulator(config) as simulator:
        yield simulator


def discovery_config(sim: Simulator, **overrides: Any) -> PhalaDiscoveryConfig:
    fields: dict[str, Any] = {
        **sim.discovery_section()["phala"],
        "interval": 0.05,
        "timeout": 0.5,
        "max_backoff": 0.2,
        **overrides,
    }
    return PhalaDiscoveryConfig.model_validate(fields)


@contextlib.asynccontextmanager
async def running(discovery: PhalaDiscovery) -> AsyncIterator[None]:
    task = asyncio.create_task(discovery.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("version", ["2026-01-21", "2025-10-28"])
async def test_first_pass_finds_every_replica_in_both_api_versions(
    sim: Simulator, version: str
) -> None:
    published = Published()
    cfg = discovery_config(sim, api_version=version)
    async with PhalaDiscovery(cfg, published, environ=ENV) as discovery:
        replicas = {r.id: r for r in await discovery.first_pass()}

    assert published.last == replicas
    assert set(replicas) == {r.instance_id for r in sim.replicas}
    first, second, stopped = sim.replicas
    assert replicas[first.instance_id].url == sim.url_of(first.instance_id)
    assert replicas[first.instance_id].host == sim.host_of(first.instance_id)
    assert replicas[first.instance_id].port == 80
    assert replicas[second.instance_id].region == "eu-west"
    assert replicas[first.instance_id].compose_hash == first.compose_hash
    assert replicas[first.instance_id].app_id == sim.config.app_id
    # The stopped replica is kept (the status page says why) but gets no traffic.
    assert replicas[stopped.instance_id].platform_status == "stopped"
    assert [r.is_candidate for r in replicas.values()] == [True, True, False]
    assert discovery.refresh_results["ok"] == 1
    assert discovery.last_success is not None


async def test_in_progress_replica_is_kept_but_not_a_candidate(sim: Simulator) -> None:
    first = sim.replicas[0]
    sim.set_status(first.instance_id, "running", in_progress=True)
    async with PhalaDiscovery(discovery_config(sim), Published(), environ=ENV) as discovery:
        replicas = {r.id: r for r in await discovery.first_pass()}
    assert replicas[first.instance_id].platform_status == "starting (in_progress)"
    assert not replicas[first.instance_id].is_candidate


async def test_replica_changes_reach_the_published_set_within_an_interval(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    published = Published()
    discovery = PhalaDiscovery(discovery_config(sim), published, environ=ENV)
    caplog.set_level(logging.INFO, logger="router.discovery")
    async with running(discovery):
        await eventually(lambda: len(published.last) == 3)

        added = await sim.add_replica(region="sa-east")
        await eventually(lambda: added.instance_id in published.last)
        assert published.last[added.instance_id].is_candidate

        first = sim.replicas[0]
        await sim.stop_replica(first.instance_id)
        await eventually(lambda: not published.last[first.instance_id].is_candidate)

        sim.set_region(added.instance_id, "eu-central")
        await eventually(lambda: published.last[added.instance_id].region == "eu-central")

        await sim.remove_replica(added.instance_id)
        await eventually(lambda: added.instance_id not in published.last)

    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith(f"replica added: {added.instance_id}") for m in messages) == 1
    assert f"replica moved region: {added.instance_id} sa-east -> eu-central" in messages
    assert f"replica status changed: {first.instance_id} running -> stopped" in messages
    assert f"replica removed: {added.instance_id}" in messages


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("500", "error"),
        ("timeout", "timeout"),
        ("garbage", "invalid"),
        ("invalid", "invalid"),
        ("429", "rate_limited"),
    ],
)
async def test_a_failing_cloud_api_keeps_the_last_good_set(
    sim: Simulator, mode: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    published = Published()
    cfg = discovery_config(sim, timeout=0.2)
    async with PhalaDiscovery(cfg, published, environ=ENV) as discovery:
        good = await discovery.first_pass()
        sim.break_api(mode)
        caplog.set_level(logging.DEBUG, logger="router.discovery")
        for _ in range(3):
            with pytest.raises(DiscoveryError):
                await discovery.refresh()

        assert published.sets == [tuple(good)]  # nothing else was published
        assert discovery.replicas == tuple(good)
        assert discovery.refresh_results[kind] == 3
        assert discovery.state == kind
        assert discovery.consecutive_failures == 3
        # Backing off: the next pass waits longer than the interval (Retry-After on 429).
        assert discovery.next_delay >= (2.0 if mode == "429" else cfg.interval / 2)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1  # logged once per change of state, not once per pass
        assert f"Cloud API refresh failed ({kind})" in warnings[0].getMessage()

        status = discovery.status()
        assert status["state"] == kind
        assert status["results"][kind] == 3
        assert status["last_error"]
        assert API_KEY not in json.dumps(status)

        sim.break_api("ok")
        assert await discovery.refresh() == good
        assert discovery.state == "ok"
        assert discovery.status()["last_error"] is None
        assert discovery.next_delay == cfg.interval
    assert any("recovered after 3 failed" in r.getMessage() for r in caplog.records)


async def test_the_loop_keeps_serving_the_last_good_set_through_an_outage(sim: Simulator) -> None:
    published = Published()
    discovery = PhalaDiscovery(discovery_config(sim), published, environ=ENV)
    async with running(discovery):
        await eventually(lambda: len(published.sets) >= 1)
        good = published.sets[-1]
        sim.break_api("500")
        await eventually(lambda: discovery.refresh_results["error"] >= 3)
        assert published.sets[-1] == good
        sim.break_api("ok")
        await sim.add_replica(region="us-west")
        await eventually(lambda: len(published.last) == 4)


async def test_a_wrong_api_key_is_an_auth_error_naming_the_variable(sim: Simulator) -> None:
    cfg = discovery_config(sim, api_key_env="MY_PHALA_KEY")
    async with PhalaDiscovery(cfg, Published(), environ={"MY_PHALA_KEY": "wrong"}) as discovery:
        with pytest.raises(DiscoveryAuthError) as error:
            await discovery.first_pass()
        assert "MY_PHALA_KEY" in str(error.value)
        assert "401" in str(error.value)
        assert "wrong" not in str(error.value)
        assert discovery.refresh_results["auth"] == 1


async def test_a_missing_api_key_is_an_auth_error_naming_the_variable(sim: Simulator) -> None:
    async with PhalaDiscovery(discovery_config(sim), Published(), environ={}) as discovery:
        with pytest.raises(DiscoveryAuthError, match="PHALA_CLOUD_API_KEY is not set"):
            await discovery.first_pass()
    assert sim.ctx.api_requests == 0  # nothing sent without a key


async def test_an_unknown_app_is_a_clear_error(sim: Simulator) -> None:
    cfg = discovery_config(sim, app_id="b" * 40)
    async with PhalaDiscovery(cfg, Published(), environ=ENV) as discovery:
        with pytest.raises(DiscoveryError, match=f"app {'b' * 40} not found"):
            await discovery.first_pass()


async def test_an_unreachable_api_is_counted_as_an_error() -> None:
    cfg = PhalaDiscoveryConfig(app_id="c" * 40, api_url="http://127.0.0.1:9/api/v1", timeout=1)
    async with PhalaDiscovery(cfg, Published(), environ=ENV) as discovery:
        with pytest.raises(DiscoveryError, match=r"cannot reach http://127\.0\.0\.1:9/api/v1"):
            await discovery.first_pass()
        assert discovery.refresh_results["error"] == 1


async def test_the_api_key_never_appears_in_logs(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    async with PhalaDiscovery(discovery_config(sim), Published(), environ=ENV) as discovery:
        await discovery.first_pass()
        for mode in ("500", "garbage", "429"):
            sim.break_api(mode)
            with pytest.raises(DiscoveryError):
                await discovery.refresh()
        sim.break_api("ok")
        await discovery.refresh()
    assert caplog.records  # logging did happen
    assert API_KEY not in caplog.text
    assert all(API_KEY not in str(r.args) for r in caplog.records)


async def test_an_empty_list_is_believed_only_after_it_repeats(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    published = Published()
    cfg = discovery_config(sim, empty_confirmations=3)
    async with PhalaDiscovery(cfg, published, environ=ENV) as discovery:
        good = await discovery.first_pass()
        for replica in sim.replicas:
            await sim.remove_replica(replica.instance_id)

        assert await discovery.refresh() == good  # 1st empty answer: held
        assert await discovery.refresh() == good  # 2nd: held
        assert published.sets == [tuple(good)]
        assert await discovery.refresh() == []  # 3rd in a row: believed
        assert published.sets[-1] == ()
    assert any("1/3 confirmations" in r.getMessage() for r in caplog.records)


async def test_a_non_empty_answer_resets_the_empty_count(sim: Simulator) -> None:
    published = Published()
    async with PhalaDiscovery(discovery_config(sim), published, environ=ENV) as discovery:
        await discovery.first_pass()
        keep = sim.replicas[0]
        saved = [r for r in sim.replicas if r is not keep]
        for replica in sim.replicas:
            await sim.remove_replica(replica.instance_id)
        await discovery.refresh()  # empty, held (1/2)
        await sim.add_replica(SimReplicaConfig(instance_id=keep.instance_id))
        assert [r.id for r in await discovery.refresh()] == [keep.instance_id]
        for replica in sim.replicas:
            await sim.remove_replica(replica.instance_id)
        assert [r.id for r in await discovery.refresh()] == [keep.instance_id]  # held again
        assert await discovery.refresh() == []
    assert saved  # the fixture had more than one replica


async def test_an_empty_first_answer_is_accepted_at_once() -> None:
    async with Simulator(SimulatorConfig(api_key=API_KEY, replicas=())) as sim:
        published = Published()
        async with PhalaDiscovery(discovery_config(sim), published, environ=ENV) as discovery:
            assert await discovery.first_pass() == []
        assert published.sets == [()]


async def test_refresh_soon_cuts_the_wait_short(sim: Simulator) -> None:
    published = Published()
    cfg = discovery_config(sim, interval=60)
    discovery = PhalaDiscovery(cfg, published, environ=ENV)
    await discovery.first_pass()
    async with running(discovery):
        added = await sim.add_replica(region="us-west")
        discovery.refresh_soon()
        await eventually(lambda: added.instance_id in published.last)


async def test_a_bug_in_publishing_is_counted_and_the_loop_goes_on(sim: Simulator) -> None:
    calls: list[int] = []

    def flaky_publish(replicas: Sequence[Replica]) -> None:
        calls.append(len(replicas))
        if len(calls) == 1:
            raise RuntimeError("listener bug")

    discovery = PhalaDiscovery(discovery_config(sim), flaky_publish, environ=ENV)
    async with running(discovery):
        await eventually(lambda: len(calls) >= 3)
    assert discovery.refresh_results["error"] == 1
