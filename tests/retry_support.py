"""Replicas with scripted answers for the retry-policy tests: an error status, a Retry-After,
a hang, a response cut after its first byte; and a recorder of what the router reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from router.models import Replica
from router.proxy.base import RequestRecord
from tests.support import static_config

Behaviour = Callable[["ScriptedReplica", web.Request], Awaitable[web.StreamResponse]]


async def answer_ok(replica: ScriptedReplica, request: web.Request) -> web.StreamResponse:
    return web.json_response({"replica": replica.name})


def answer_status(
    status: int, *, padding: int = 0, headers: dict[str, str] | None = None
) -> Behaviour:
    async def behave(replica: ScriptedReplica, request: web.Request) -> web.StreamResponse:
        # A body, so a router that relays or pools it half-read would show it.
        text = f"{replica.name} says {status}" + "." * padding
        return web.Response(status=status, text=text, headers=headers)

    return behave


async def answer_hang(replica: ScriptedReplica, request: web.Request) -> web.StreamResponse:
    await replica.release.wait()
    return web.json_response({"replica": replica.name, "slow": True})


async def answer_cut_after_first_byte(
    replica: ScriptedReplica, request: web.Request
) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"first")
    assert request.transport is not None
    request.transport.abort()
    return response


@dataclass
class ScriptedReplica:
    name: str
    behaviour: Behaviour = answer_ok
    hits: int = 0
    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        await request.read()
        return await self.behaviour(self, request)


@asynccontextmanager
async def scripted_replicas(
    *behaviours: tuple[str, Behaviour],
) -> AsyncIterator[list[ScriptedReplica]]:
    replicas = [ScriptedReplica(name, behaviour) for name, behaviour in behaviours]
    runners: list[web.AppRunner] = []
    try:
        for replica in replicas:
            app = web.Application()
            app.router.add_route("*", r"/{tail:[\s\S]*}", replica.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            replica.port = runner.addresses[0][1]
            runners.append(runner)
        yield replicas
    finally:
        for replica in replicas:
            replica.release.set()
        for runner in runners:
            await runner.cleanup()


def retry_config(engine: str, replicas: list[ScriptedReplica], **proxy: Any) -> dict[str, Any]:
    """Active and passive health off: only the retry policy decides where requests go."""
    return static_config(
        [(r.name, r.url) for r in replicas],
        proxy={"engine": engine, **proxy},
        health={"enabled": False, "passive": {"enabled": False}},
    )


class Recorder:
    """A TrafficObserver that keeps every RequestRecord."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def attempt_done(
        self, replica: Replica, ok: bool, kind: str | None, status: int | None
    ) -> None:
        return None

    def request_done(self, record: RequestRecord) -> None:
        self.records.append(record)


async def metric(client: aiohttp.ClientSession, admin_url: str, sample: str) -> float:
    """One sample's value from the admin /metrics page (0 when absent)."""
    async with client.get(f"{admin_url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
