"""Router CPU per request-body byte by chunking: one big chunk vs 1-byte chunks (issue 15,
finding 4: 1-byte chunks once cost ~13 us of router CPU per byte).

The router runs as `bench.proxy --serve-router` in its own process (its CPU read from
/proc); this process is the client and an upstream that reads each chunked body to its
last chunk and answers 200. For each chunk size the same body is posted `--requests` times
over one keep-alive connection; the table gives router CPU per body byte and the ratio to
one big chunk measured in the same run.

    python -m bench.chunked [--body 65536] [--requests 20] [--engine fast]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from bench.procs import process_cpu
from bench.proxy import free_port, router_config, wait_port

_END = b"0\r\n\r\n"


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    seen = b""
    while chunk := await reader.read(1 << 20):
        seen = (seen + chunk)[-8:]
        if seen.endswith(_END):  # the end of a chunked body (enough for this client)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            seen = b""
    writer.close()


def chunked_body(size: int, piece: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(b), b) for b in _pieces(b"x" * size, piece)]
    return b"".join(parts) + _END


def _pieces(body: bytes, piece: int) -> list[bytes]:
    return [body[i : i + piece] for i in range(0, len(body), piece)]


async def _post(port: int, body: bytes, requests: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for _ in range(requests):
        writer.write(head + body)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def run(args: argparse.Namespace) -> list[tuple[int, float]]:
    server = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[1]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "router.yaml"
        config = router_config(port, upstream, args.engine, 1, 1, request_metrics=False)
        conf.write_text(config)
        argv = [sys.executable, "-m", "bench.proxy", "--serve-router", str(conf)]
        router = await asyncio.create_subprocess_exec(*argv)
        try:
            await asyncio.to_thread(wait_port, port)
            rows = []
            # Bigger chunks cost less: more requests, so each row runs for many CPU ticks.
            for piece, scale in ((args.body, 50), (4096, 50), (64, 10), (1, 1)):
                body = chunked_body(args.body, piece)
                await _post(port, body, 2)  # warm-up
                requests = args.requests * scale
                before = process_cpu(router.pid) or 0.0
                await _post(port, body, requests)
                used = (process_cpu(router.pid) or 0.0) - before
                rows.append((piece, used / (args.body * requests)))
            return rows
        finally:
            router.terminate()
            await router.wait()
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", type=int, default=65536)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--engine", default="fast")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    big = rows[0][1] or float("nan")
    print(f"router CPU per request-body byte, {args.engine} engine, {args.body} B bodies")
    print("| chunk size | ns / body byte | ratio to one chunk | ns / wire byte |")
    print("|---|---:|---:|---:|")
    for piece, per_byte in rows:
        wire = (len(b"%x" % piece) + 4 + piece) / piece  # wire bytes per body byte
        print(
            f"| {piece} B | {per_byte * 1e9:,.0f} | {per_byte / big:.1f} |"
            f" {per_byte / wire * 1e9:,.0f} |"
        )


if __name__ == "__main__":
    main()
