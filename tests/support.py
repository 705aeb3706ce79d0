"""Shared test helpers: real servers on 127.0.0.1 with ephemeral ports, and waiting with a
deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll `condition` until it holds; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class TestReplica:
    """An upstream app for the conformance tests: echoes what it received."""

    name: str
    hits: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    sni: list[str | None] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    got_first_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("POST", "/upload", self.upload)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/hang", self.hang)
        app.router.add_get("/hop", self.hop)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.echo)
        return app

    def _seen(self, request: web.Request) -> None:
        self.hits += 1
        self.last_headers = dict(request.headers)

    async def echo(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.json_response(
            {
                "replica": self.name,
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers.items()),
                "header_list": list(request.headers.items()),
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        self._seen(request)
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            if size == 0 and chunk:
                self.got_first_chunk.set()
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "replica": self.name,
                "sha256": digest.hexdigest(),
                "size": size,
                "chunked": request.headers.get("Transfer-Encoding", "") == "chunked",
            }
        )

    async def sse(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await self.release.wait()
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"part{i};".encode())
        await response.write_eof()
        return response

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self._seen(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async def slow(self, request: web.Request) -> web.Response:
        self._seen(request)
        self.slow_started.set()
        await self.release.wait()
        return web.json_response({"replica": self.name, "slow": True})

    async def hang(self, request: web.Request) -> web.Response:
        self._seen(request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def hop(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(
            text="ok",
            headers={
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
                "X-Kept": "yes",
            },
        )


@asynccontextmanager
async def running_replica(
    name: str, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[TestReplica]:
    replica = TestReplica(name)
    if ssl_context is not None:

        def remember_sni(sock: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
            replica.sni.append(server_name)

        ssl_context.sni_callback = remember_sni
    runner = web.AppRunner(replica.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    replica.port = runner.addresses[0][1]
    replica.runner = runner
    try:
        yield replica
    finally:
        replica.release.set()
        await runner.cleanup()


def free_port() -> int:
    """A port with nothing listening (bound then closed): connections are refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def static_config(replicas: list[tuple[str, str]], **sections: Any) -> dict[str, Any]:
    """A router config dict on ephemeral ports with the given (id, url) replicas."""
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "discovery": {"static": [{"id": i, "url": u} for i, u in replicas]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@asynccontextmanager
async def running_router(
    config: dict[str, Any],
    *,
    environ: dict[str, str] | None = None,
    grace: float = 1.0,
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    access_log: bool = False,
) -> AsyncIterator[RouterHandle]:
    from router.app import RouterApp
    from router.config import parse_config

    app = RouterApp(
        parse_config(config, environ or {}),
        environ=environ or {},
        trusted_simulator_keys=trusted_simulator_keys,
        access_log_enabled=access_log,
    )
    await app.start()
    host, port = app.engine.addresses[0]
    handle = RouterHandle(app, f"http://{host}:{port}", f"http://127.0.0.1:{app.admin.port}")
    try:
        yield handle
    finally:
        if not handle.stopped:
            await app.stop(grace)


@dataclass
class RouterHandle:
    app: Any
    url: str
    admin_url: str
    stopped: bool = False

    async def stop(self, grace: float = 5.0) -> None:
        self.stopped = True
        await self.app.stop(grace)
