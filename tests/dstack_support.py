"""A fake dstack guest agent on a unix socket, speaking the HTTP API dstack-sdk calls
(`/Info`, `/GetQuote`, `/GetTlsKey`), with simulator-signed quotes: a "CVM" for the router's
own attestation. `tamper` makes its quotes lie (a flipped bit, another nonce, another
instance); the RA-TLS certificates it hands out stay honest."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from router.attestation.eventlog import parse_event_log, replay_rtmrs
from router.simulator.quotes import VM_CONFIG, SimulatedQuotes, flip_bit, make_quote
from router.simulator.ratls import Identity, SimCa, ra_tls_certificate

APP_COMPOSE = json.dumps(
    {"manifest_version": 2, "name": "phala-router", "runner": "docker-compose"}
)


@dataclass(frozen=True)
class RouterCvm:
    app_id: str = "5e" * 20
    instance_id: str = "7a" * 20
    compose_hash: str = "9c" * 32


@dataclass
class FakeGuestAgent:
    me: RouterCvm = field(default_factory=RouterCvm)
    quotes: SimulatedQuotes = field(default_factory=SimulatedQuotes)
    quote_requests: list[str] = field(default_factory=list)
    info_requests: int = 0
    # "" (honest), "tampered" (a flipped bit in the quote), "stale" (ignores the report_data),
    # "other_instance" (quotes name another instance than the certificates)
    tamper: str = ""
    fail: bool = False
    ca: SimCa = field(default_factory=SimCa)

    @property
    def public_key(self) -> bytes:
        return self.quotes.public_key

    def _quote(self, report_data: bytes) -> tuple[bytes, list[dict[str, Any]]]:
        me = self.me
        if self.tamper == "stale":
            report_data = b"\x01" * 64
        instance = "ee" * 20 if self.tamper == "other_instance" else me.instance_id
        quote, events = make_quote(
            me.app_id, instance, me.compose_hash, report_data, key=self.quotes.key
        )
        return (flip_bit(quote) if self.tamper == "tampered" else quote), events

    async def info(self, request: web.Request) -> web.Response:
        self.info_requests += 1
        if self.fail:
            return web.Response(status=500, text="guest agent broken")
        _quote, events = self._quote(b"")
        rtmrs = replay_rtmrs(parse_event_log(events))
        me = self.me
        tcb = {
            "mrtd": "00" * 48,
            **{f"rtmr{i}": rtmrs[i].hex() for i in range(4)},
            "app_compose": APP_COMPOSE,
            "event_log": events,
            "mr_aggregated": "00" * 32,
            "os_image_hash": json.loads(VM_CONFIG)["os_image_hash"],
            "compose_hash": me.compose_hash,
            "device_id": "de" * 32,
        }
        return web.json_response(
            {
                "app_id": me.app_id,
                "instance_id": me.instance_id,
                "app_cert": "",
                "tcb_info": json.dumps(tcb),
                "app_name": "phala-router",
                "device_id": "de" * 32,
                "key_provider_info": json.dumps({"name": "kms", "id": "ab" * 16}),
                "compose_hash": me.compose_hash,
                "os_image_hash": json.loads(VM_CONFIG)["os_image_hash"],
                "vm_config": VM_CONFIG,
            }
        )

    async def get_tls_key(self, request: web.Request) -> web.Response:
        me = self.me
        identity = Identity(me.app_id, me.instance_id, me.compose_hash)
        key, cert = ra_tls_certificate(identity, self.quotes.key, self.ca, host="router.test")
        assert self.ca.cert is not None
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        chain = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (cert, self.ca.cert)]
        return web.json_response({"key": pem, "certificate_chain": chain})

    async def get_quote(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.quote_requests.append(body["report_data"])
        if self.fail:
            return web.Response(status=500, text="tdx quote generation failed")
        report_data = bytes.fromhex(body["report_data"])
        quote, events = self._quote(report_data)
        return web.json_response(
            {
                "quote": quote.hex(),
                "event_log": json.dumps(events),
                "report_data": report_data.hex(),
                "vm_config": VM_CONFIG,
            }
        )


@asynccontextmanager
async def guest_agent_socket(agent: FakeGuestAgent) -> AsyncIterator[str]:
    """Serve `agent` on a unix socket; yields its path (short: socket paths are limited)."""
    with tempfile.TemporaryDirectory(prefix="dstack", dir="/tmp") as folder:
        socket = str(Path(folder) / "dstack.sock")
        app = web.Application()
        app.router.add_post("/Info", agent.info)
        app.router.add_post("/GetQuote", agent.get_quote)
        app.router.add_post("/GetTlsKey", agent.get_tls_key)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, path=socket).start()
        try:
            yield socket
        finally:
            await runner.cleanup()
