"""gRPC through the router with Envoy as the engine: unary and server-streaming calls reach
a grpcio server on the replica (`protocol: grpc`), over h2c from client to Envoy and
HTTP/2 from Envoy to the replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import trustme

from router.errors import ConfigError
from tests.envoy_support import require_envoy
from tests.support import running_router, static_config

SERVICE = "phala.test.Echo"


async def _unary(request: bytes, context: object) -> bytes:
    return b"echo:" + request


async def _stream(request: bytes, context: object) -> AsyncIterator[bytes]:
    for i in range(3):
        yield request + f":{i}".encode()


@asynccontextmanager
async def grpc_replica(
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[int]:
    """A grpcio server with raw-bytes methods (no generated code needed); TLS (h2 by ALPN
    only, as grpcio does) with `credentials`."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0.5)


def grpc_config(port: int, engine: str = "envoy") -> dict[str, object]:
    config = static_config(
        [("g", f"http://127.0.0.1:{port}")], proxy={"engine": engine}, health={"enabled": False}
    )
    config["discovery"]["static"][0]["protocol"] = "grpc"
    return config


async def test_unary_and_streaming_calls_reach_the_grpc_replica() -> None:
    require_envoy()
    async with grpc_replica() as port, running_router(grpc_config(port)) as router:
        target = router.url.removeprefix("http://")
        async with grpc.aio.insecure_channel(target) as channel:
            unary = channel.unary_unary(f"/{SERVICE}/Unary")
            assert await unary(b"hello", timeout=10) == b"echo:hello"
            stream = channel.unary_stream(f"/{SERVICE}/Stream")
            got = [item async for item in stream(b"s", timeout=10)]
            assert got == [b"s:0", b"s:1", b"s:2"]


def test_grpc_replicas_need_the_envoy_engine() -> None:
    from router.config import parse_config

    with pytest.raises(ConfigError, match=r"needs proxy\.engine: envoy"):
        parse_config(grpc_config(1, engine="fast"), {})
    gateway = static_config([("g", f"https://{GATEWAY_HOST}")], proxy={"engine": "fast"})
    with pytest.raises(ConfigError, match=r"-<port>g\. URL\) needs proxy\.engine: envoy"):
        parse_config(gateway, {})
    with pytest.raises(ConfigError, match=r"discovery\.phala\.grpc needs proxy\.engine: envoy"):
        parse_config({"discovery": {"phala": {"app_id": "ab" * 20, "grpc": True}}}, {})


# A gateway gRPC name (`-<port>g.`): detected as gRPC without `protocol:`.
GATEWAY_HOST = "0123abcd-50051g.gw.test"


async def test_grpc_over_tls_to_a_gateway_g_name_negotiates_h2(tmp_path: Path) -> None:
    """The replica ends TLS itself and offers only h2 (as the gateway's g endpoints): Envoy
    must verify its certificate for that name and agree on h2 by ALPN."""
    require_envoy()
    ca = trustme.CA()
    leaf = ca.issue_cert(GATEWAY_HOST)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    credentials = grpc.ssl_server_credentials(
        [(leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes())]
    )
    async with grpc_replica(credentials) as port:
        config = static_config(
            [("g", f"https://{GATEWAY_HOST}")],
            proxy={"engine": "envoy"},
            health={"enabled": False},
            upstream_tls={"ca_file": str(ca_file)},
        )
        config["discovery"]["connect_to"] = {GATEWAY_HOST: f"127.0.0.1:{port}"}
        async with running_router(config) as router:
            target = router.url.removeprefix("http://")
            async with grpc.aio.insecure_channel(target) as channel:
                unary = channel.unary_unary(f"/{SERVICE}/Unary")
                assert await unary(b"tls", timeout=10) == b"echo:tls"
