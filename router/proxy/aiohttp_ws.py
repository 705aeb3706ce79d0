"""The aiohttp engine's WebSocket relay: frames piped both ways, closed when either side
closes or when no message crossed for the idle timeout (the admission slot the request
holds is released when the relay returns)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

log = logging.getLogger("router.proxy.aiohttp_engine")

# Headers aiohttp's ws_connect writes itself; forwarding the client's would duplicate them.
WS_OWN_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
WebSocketLike = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class TunnelIdle(Exception):
    """No message crossed an upgraded tunnel for the idle timeout."""


class Activity:
    """When a message last crossed a tunnel, in either direction."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    def touch(self) -> None:
        self.last = self.clock()

    async def watch(self, idle: float) -> None:
        """Raise TunnelIdle once nothing moved for `idle` seconds (the TaskGroup running
        the pipes then cancels them, and the admission slot is released)."""
        while (remaining := self.last + idle - self.clock()) > 0:
            await asyncio.sleep(remaining)
        raise TunnelIdle(f"no message for {idle}s")


async def pipe_ws(source: WebSocketLike, sink: WebSocketLike, activity: Activity) -> None:
    async for message in source:
        activity.touch()
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.PING:
            await sink.ping(message.data)
        elif message.type is aiohttp.WSMsgType.PONG:
            await sink.pong(message.data)
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
            break
    await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)


async def relay(client: web.WebSocketResponse, upstream: WebSocketLike, idle: float) -> None:
    """Pipe frames both ways until either side closes, a pipe fails, or nothing moved for
    `idle` seconds; then close both sides."""
    activity = Activity()
    try:
        async with asyncio.TaskGroup() as group:
            watchdog = group.create_task(activity.watch(idle))
            pipes = [
                group.create_task(pipe_ws(client, upstream, activity)),
                group.create_task(pipe_ws(upstream, client, activity)),
            ]
            await asyncio.wait(pipes)  # a failing pipe or the watchdog cancels this
            watchdog.cancel()
    except* TunnelIdle:
        log.debug("websocket closed: idle for %ss", idle)
    except* (aiohttp.ClientError, ConnectionError):
        log.debug("websocket ended with an error")
    finally:
        await upstream.close()
        await client.close()
