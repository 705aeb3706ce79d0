"""A simulated replica's two servers: its app and its guest agent (port 8090 behind the
gateway), each an aiohttp app on an ephemeral local port.

App endpoints: `/health` (its own knob: a status code, "hang" or "reset"), `/echo` (the body
back), `/slow?ms=N`, `/stream?chunks=N&interval_ms=M` (chunked), `/ws` (WebSocket echo), and
any other path: JSON saying which replica answered. Every request but `/health` goes through
the knobs: capacity (a queue), latency, the shared backend, then error_rate.

With simulated quotes on (`ctx.quote_provider`), the app also answers the router's fresh
attestation at `ctx.fresh_path` (as the quote-server sidecar would) and the guest agent
answers `GetAttestationForAppKey`; both follow the replica's `attestation` knob.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from router.simulator.quotes import SILENT_KNOBS, answer_fresh, answer_guest_agent
from router.simulator.records import guest_info
from router.simulator.state import QuoteProvider, SimContext, SimReplica

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SHUTDOWN_TIMEOUT = 0.2  # stopping a replica must be quick: tests and benchmarks do it often


class ReplicaServers:
    """Starts and stops one replica's listeners; a stopped replica refuses connections."""

    def __init__(self, replica: SimReplica, ctx: SimContext, host: str) -> None:
        self.replica = replica
        self._ctx = ctx
        self._host = host
        self._runners: list[web.AppRunner] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        if self.replica.up:
            return
        self._stopping = asyncio.Event()
        app_runner = await self._serve(_app(self.replica, self._ctx, self._stopping))
        agent_runner = await self._serve(_agent_app(self.replica, self._ctx, self._stopping))
        self._runners = [app_runner, agent_runner]
        self.replica.app_port = _port_of(app_runner)
        self.replica.agent_port = _port_of(agent_runner)

    async def stop(self) -> None:
        self.replica.app_port = None
        self.replica.agent_port = None
        self._stopping.set()  # releases hanging handlers so cleanup is quick
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def _serve(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        await web.TCPSite(runner, self._host, 0).start()
        return runner


def _port_of(runner: web.AppRunner) -> int:
    port: int = runner.addresses[0][1]
    return port


def _app(replica: SimReplica, ctx: SimContext, stopping: asyncio.Event) -> web.Application:
    async def health(request: web.Request) -> web.StreamResponse:
        knob = replica.health
        if knob == "hang":
            await stopping.wait()
        elif knob == "reset":
            _abort(request)
        code = knob if isinstance(knob, int) else 503
        return web.json_response(
            {"status": "ok" if code < 400 else "failing", "replica": replica.instance_id},
            status=code,
        )

    async def info(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.json_response(
            {
                "replica": replica.instance_id,
                "region": replica.region,
                "node": replica.node,
                "compose_hash": replica.compose_hash,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body_bytes": len(body),
            }
        )

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.Response(
            body=body,
            content_type=request.content_type,
            headers={"X-Replica": replica.instance_id},
        )

    async def slow(request: web.Request) -> web.StreamResponse:
        ms = _int_arg(request, "ms", 100)
        await asyncio.sleep(ms / 1000)  # the requested service time
        return await info(request)

    async def stream(request: web.Request) -> web.StreamResponse:
        chunks = _int_arg(request, "chunks", 5)
        interval = _int_arg(request, "interval_ms", 10) / 1000
        response = web.StreamResponse(headers={"X-Replica": replica.instance_id})
        response.content_type = "application/x-ndjson"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for n in range(chunks):
            line = json.dumps({"replica": replica.instance_id, "chunk": n}) + "\n"
            await response.write(line.encode())
            if interval and n + 1 < chunks:
                await asyncio.sleep(interval)  # spacing between chunks is the point
        await response.write_eof()
        return response

    async def websocket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"replica": replica.instance_id})
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def fresh(request: web.Request, provider: QuoteProvider) -> web.StreamResponse:
        await _hold_if_silent(replica, stopping)
        status, body = answer_fresh(provider, replica, request.query.get("nonce", ""))
        return web.json_response(body, status=status)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == ctx.fresh_path and ctx.quote_provider is not None:
            return await fresh(request, ctx.quote_provider)
        handler: Handler = {"/echo": echo, "/slow": slow, "/stream": stream, "/ws": websocket}.get(
            path, info
        )
        return await _through_knobs(replica, ctx, handler, request)

    app = web.Application()
    app.router.add_route("*", "/health", health)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def _through_knobs(
    replica: SimReplica, ctx: SimContext, handler: Handler, request: web.Request
) -> web.StreamResponse:
    slots = replica.slots
    if slots is not None:
        async with slots:
            return await _serve_one(replica, ctx, handler, request)
    return await _serve_one(replica, ctx, handler, request)


async def _serve_one(
    replica: SimReplica, ctx: SimContext, handler: Handler, request: web.Request
) -> web.StreamResponse:
    replica.in_flight += 1
    try:
        if replica.latency > 0:
            await asyncio.sleep(replica.latency)  # simulated service time
        if ctx.shared_backend is not None:
            await ctx.shared_backend.acquire()
        replica.served += 1
        if replica.error_rate and replica.rng.random() < replica.error_rate:
            return web.json_response(
                {"error": "injected", "replica": replica.instance_id}, status=500
            )
        return await handler(request)
    finally:
        replica.in_flight -= 1


def _agent_app(replica: SimReplica, ctx: SimContext, stopping: asyncio.Event) -> web.Application:
    """The dstack guest agent's public RPCs, as reached at `<id>-8090.<domain>`: `Info`, and
    `GetAttestationForAppKey` when quotes are simulated."""

    async def info(request: web.Request) -> web.StreamResponse:
        return web.json_response(guest_info(replica, ctx))

    async def attestation(request: web.Request) -> web.StreamResponse:
        provider = ctx.quote_provider
        if provider is None:
            return await not_found(request)
        await _hold_if_silent(replica, stopping)
        return web.json_response(answer_guest_agent(provider, replica))

    async def not_found(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": f"no such RPC {request.path}"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/prpc/Info", info)
    app.router.add_post("/prpc/GetAttestationForAppKey", attestation)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def _hold_if_silent(replica: SimReplica, stopping: asyncio.Event) -> None:
    """The `attestation` knob "hang" never answers (until the replica stops); "missing"
    answers 404, as a replica without the quote server or RPC would."""
    if replica.attestation not in SILENT_KNOBS:
        return
    if replica.attestation == "hang":
        await stopping.wait()
    raise web.HTTPNotFound(
        text='{"error": "no attestation here (simulated)"}', content_type="application/json"
    )


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError  # nothing more to send on a reset connection


def _int_arg(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name, "")
    try:
        return max(0, min(int(value), 600_000)) if value else default
    except ValueError:
        return default
