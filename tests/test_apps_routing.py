"""Several apps on one listener, per engine: Host (and SNI on TLS) choose the app; a request
for no app, or for another app than its TLS connection's SNI, gets 421 and reaches nothing.

The engines run with fixed snapshots (the control plane is not under test here), so every
replica that answers is known, and a replica's hit counter proves no upstream contact.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from router.apps.hosts import parse_route
from router.balancing.factory import make_picker_factory
from router.balancing.settings import RoutingConfig
from router.compose import proxy_settings
from router.config import parse_config
from router.discovery.static import replica_from_url
from router.proxy.aiohttp_engine import AiohttpEngine
from router.proxy.apps import AppDirectory, AppEntry
from router.proxy.base import InFlightCounter, Observers
from router.proxy.fast import FastEngine
from router.snapshot import Overrides, Policy, Snapshot, build_snapshot
from router.tls import ServerTLS
from tests import support
from tests.support import running_replica, static_config
from tests.test_tls_listener import write_pair

# app -> its routes; "canary" is an app too, so a misrouted request would show on its replica
ROUTES = {
    "api": ["api.example.com", "*.api.example.com"],
    "v2": ["api.example.com/v2", "*.api.example.com/v2"],
    "ui": ["ui.example.com", "*.example.com"],
    "canary": ["canary.example.com"],
}


def snapshot_of(replica: support.TestReplica, in_flight: InFlightCounter) -> Snapshot:
    policy = Policy(picker_factory=make_picker_factory(RoutingConfig(), environ={}))
    return build_snapshot(
        version=1,
        now=0.0,
        replicas=[replica_from_url(replica.name, f"http://127.0.0.1:{replica.port}")],
        health={},
        verdicts={},
        policy=policy,
        overrides=Overrides(),
        in_flight=in_flight,
        health_enabled=False,
    )


@dataclass
class Served:
    replicas: dict[str, support.TestReplica]
    port: int
    tls_port: int
    client_tls: ssl.SSLContext

    def hits(self) -> int:
        return sum(r.hits for r in self.replicas.values())


@asynccontextmanager
async def serving(engine: str, tmp_path: Path, default: str | None = None) -> AsyncIterator[Served]:
    ca = trustme.CA()
    cert, key = write_pair(ca, "*.example.com", tmp_path)
    config = parse_config(
        static_config(
            [("unused", "http://127.0.0.1:1")],
            listen_tls={"listen": "127.0.0.1:0", "cert_file": str(cert), "key_file": str(key)},
            proxy={"engine": engine},
        ),
        environ={},
    )
    in_flight = InFlightCounter()
    async with AsyncExitStack() as stack:
        replicas = {name: await stack.enter_async_context(running_replica(name)) for name in ROUTES}
        entries = {
            name: AppEntry(name, (lambda s: lambda: s)(snapshot_of(r, in_flight)))
            for name, r in replicas.items()
        }
        apps = AppDirectory(
            (
                (parse_route(text), entries[name])
                for name, texts in ROUTES.items()
                for text in texts
            ),
            entries[default] if default else None,
        )
        tls = ServerTLS(cert, key)
        kind: Any = FastEngine if engine == "fast" else AiohttpEngine
        server = kind(
            proxy_settings(config), lambda: None, Observers(), in_flight, tls=tls, apps=apps
        )
        await server.start()
        try:
            (_, tls_port), (_, port) = server.addresses
            context = ssl.create_default_context()
            ca.configure_trust(context)
            yield Served(replicas, port, tls_port, context)
        finally:
            await server.stop(0.5)


async def ask(
    port: int,
    host: str,
    target: str = "/",
    *,
    sni: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request on a new connection; (status, JSON body or {})."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname=sni if tls else None
    )
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body) if body.startswith(b"{") else {}
    except ValueError:
        return status, {}


async def test_host_selects_the_app_with_exact_wildcard_and_prefix_precedence(
    engine: str, tmp_path: Path
) -> None:
    async with serving(engine, tmp_path) as served:
        expected = {
            ("api.example.com", "/"): "api",
            ("API.Example.com:8080", "/items"): "api",
            ("api.example.com", "/v2/items"): "v2",
            ("api.example.com", "/v20"): "api",
            ("eu.api.example.com", "/v2"): "v2",
            ("eu.api.example.com", "/x"): "api",
            ("ui.example.com", "/v2"): "ui",
            ("docs.example.com", "/"): "ui",  # the wildcard
            ("canary.example.com", "/"): "canary",
        }
        for (host, target), app in expected.items():
            status, body = await ask(served.port, host, target)
            assert (status, body.get("replica")) == (200, app), (host, target)


async def test_unknown_host_gets_421_and_reaches_no_replica(engine: str, tmp_path: Path) -> None:
    async with serving(engine, tmp_path) as served:
        for host, target in [
            ("evil.example.net", "/"),
            ("example.com", "/"),  # a wildcard never covers its apex
            ("127.0.0.1", "/"),
            ("evil.example.net", "http://evil.example.net/admin"),  # absolute form
        ]:
            status, body = await ask(served.port, host, target)
            assert status == 421, (host, target)
            assert body.get("error") == "misdirected_request"
        assert served.hits() == 0


async def test_a_default_app_takes_unknown_hosts(engine: str, tmp_path: Path) -> None:
    async with serving(engine, tmp_path, default="canary") as served:
        status, body = await ask(served.port, "evil.example.net", "http://evil.example.net/")
        assert (status, body.get("replica")) == (200, "canary")


async def test_sni_and_host_must_name_the_same_app_on_tls(engine: str, tmp_path: Path) -> None:
    async with serving(engine, tmp_path) as served:
        port, tls = served.tls_port, served.client_tls
        status, body = await ask(port, "api.example.com", sni="api.example.com", tls=tls)
        assert (status, body.get("replica")) == (200, "api")
        # the same SNI may reach the app a path prefix under it names
        status, body = await ask(port, "api.example.com", "/v2/x", sni="api.example.com", tls=tls)
        assert (status, body.get("replica")) == (200, "v2")
        before = served.hits()
        for sni, host in [
            ("api.example.com", "ui.example.com"),
            ("ui.example.com", "canary.example.com"),
        ]:
            status, body = await ask(port, host, sni=sni, tls=tls)
            assert (status, body.get("error")) == (421, "misdirected_request"), (sni, host)
        assert served.hits() == before


async def test_one_app_without_hosts_serves_every_host_as_before(
    engine: str, tmp_path: Path
) -> None:
    async with running_replica("only") as only:
        in_flight = InFlightCounter()
        snapshot = snapshot_of(only, in_flight)
        config = parse_config(
            static_config([("only", f"http://127.0.0.1:{only.port}")], proxy={"engine": engine}),
            environ={},
        )
        kind: Any = FastEngine if engine == "fast" else AiohttpEngine
        server = kind(proxy_settings(config), lambda: snapshot, Observers(), in_flight)
        await server.start()
        try:
            status, body = await ask(server.addresses[0][1], "whatever.example.org")
            assert (status, body.get("replica")) == (200, "only")
        finally:
            await server.stop(0.5)
