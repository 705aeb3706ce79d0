"""The dstack gateway's TLS passthrough, simulated: `<id>-<port>s.<base_domain>`.

The gateway reads the TLS ClientHello only to find the SNI, then relays the raw stream to
the CVM, so the TLS session ends inside the CVM and the gateway holds no key of it. Without
SNI (or with an unknown name) the connection is dropped, as the real gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Mapping

MAX_HELLO = 16 * 1024 + 5


def client_hello_sni(record: bytes) -> str | None:
    """The server name in one TLS handshake record holding a ClientHello; None when there
    is none. ValueError when the bytes are not a ClientHello."""
    if len(record) < 9 or record[0] != 0x16 or record[5] != 0x01:
        raise ValueError("not a TLS ClientHello")
    at = 9 + 2 + 32  # record header, handshake header, client version, random
    at += 1 + record[at]  # session id
    (suites,) = struct.unpack_from(">H", record, at)
    at += 2 + suites
    at += 1 + record[at]  # compression methods
    if at + 2 > len(record):
        return None
    (total,) = struct.unpack_from(">H", record, at)
    at, end = at + 2, at + 2 + total
    while at + 4 <= end:
        kind, size = struct.unpack_from(">HH", record, at)
        at += 4
        if kind == 0 and size >= 5 and record[at + 2] == 0:
            (length,) = struct.unpack_from(">H", record, at + 3)
            return record[at + 5 : at + 5 + length].decode("ascii").lower()
        at += size
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


class Passthrough:
    """One listener on 127.0.0.1 relaying each connection, by its SNI, to `routes[sni]`
    (a local port). `routes` may change while it runs (a dict the caller keeps)."""

    def __init__(self, routes: Mapping[str, int]) -> None:
        self.routes = routes
        self.port = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(5)
            body = await reader.readexactly(min(struct.unpack(">H", head[3:5])[0], MAX_HELLO))
            target = self.routes.get(client_hello_sni(head + body) or "")
        except (asyncio.IncompleteReadError, ValueError, IndexError, struct.error):
            target = None
        if target is None:
            self.dropped += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        up_writer.write(head + body)
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the simulator is stopping: its relays end with it
        finally:
            self._open -= {writer, up_writer}

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()
