"""The router's own attestation, when it runs in a Phala CVM (client -> router hop).

A client that sends its traffic through the router should be able to check the router first:
its code (compose hash), its app and instance, its TDX measurements, and that it is alive
now. When the dstack guest agent's socket is there (`listen_tls.dstack_socket`, else
`DSTACK_SIMULATOR_ENDPOINT`, else dstack's usual socket paths), the router answers
`GET /.well-known/phala-router/attestation` on its public listeners and on the admin one:

- without a query: what the guest agent's `Info` says (app id, instance id, compose hash and
  the app_compose itself, OS image, key provider, MRTD/RTMR0-3, the event log) and a quote
  made once at start with `report_data = sha512(ROUTER_NONCE_PREFIX)` (cached: replayable);
- with `?nonce=<32-128 hex>`: the same with a quote made now for that nonce,
  `report_data = sha512(b"phala-router/router-attestation/v1:" + nonce)` (fresh: a replayed
  answer names another nonce).

A quote costs the CVM real work and anyone can ask, so nonce quotes are rationed: answers are
remembered per nonce (a repeated nonce costs nothing), each client address has a token bucket
(`quote_server.ClientBudget`, 429 past it) and at most `max_concurrent` quotes are made at
once (503 past it). Outside a CVM the path answers 404 with the reason; it is never routed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web

from router.attestation.quote import ROUTER_NONCE_PREFIX, parse_router_nonce, router_report_data
from router.attestation.self_check import SelfCheck, build_self_check
from router.config import RouterConfig
from router.proxy.well_known import ATTESTATION_PATH, LocalAnswer
from router.quote_server import ClientBudget

log = logging.getLogger(__name__)

FORMAT = "phala-router/attestation/v1"
BINDING = (
    f"report_data = sha512(b'{ROUTER_NONCE_PREFIX.decode()}' + nonce); the cached quote "
    "(no ?nonce=) binds the empty nonce"
)
RA_TLS_BINDING = "report_data = sha512(b'ratls-cert:' + the certificate's SPKI DER)"
DSTACK_SOCKETS = (
    "/var/run/dstack.sock",
    "/run/dstack.sock",
    "/var/run/dstack/dstack.sock",
    "/run/dstack/dstack.sock",
)
NOT_IN_CVM = (
    "this router does not run in a Phala CVM: no dstack guest agent (set "
    "listen_tls.dstack_socket or DSTACK_SIMULATOR_ENDPOINT, or mount /var/run/dstack.sock)"
)
REMEMBERED_NONCES = 256
RETRY_LOAD_AFTER = 5.0  # seconds between attempts to reach a guest agent that failed


def find_guest_agent(
    configured: str | None,
    environ: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
) -> str | None:
    """The guest agent's endpoint (dstack-sdk's order), or None outside a CVM."""
    if configured:
        return configured
    if environ.get("DSTACK_SIMULATOR_ENDPOINT"):
        return environ["DSTACK_SIMULATOR_ENDPOINT"]
    return next((path for path in DSTACK_SOCKETS if exists(path)), None)


class GuestAgent(Protocol):
    async def info(self) -> dict[str, Any]: ...

    async def quote(self, report_data: bytes) -> dict[str, Any]: ...


class DstackAgent:
    """The dstack guest agent through dstack-sdk (a unix socket or the simulator's URL)."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def _client(self) -> Any:
        try:
            from dstack_sdk import AsyncDstackClient
        except ImportError:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the router's attestation needs dstack-sdk: pip install 'phala-router[quote-server]'"
            ) from None
        return AsyncDstackClient(self.endpoint, timeout=self.timeout)

    async def info(self) -> dict[str, Any]:
        async with self._client() as client:
            answer = await client.info()
        info: dict[str, Any] = answer.model_dump()
        return info

    async def quote(self, report_data: bytes) -> dict[str, Any]:
        async with self._client() as client:
            answer = await client.get_quote(report_data)
        quote: dict[str, Any] = answer.model_dump()
        return quote


def _json_or_text(value: object) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def identity_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """The app facts of the guest agent's Info answer."""
    tcb = info.get("tcb_info") or {}
    return {
        "app_id": info.get("app_id"),
        "app_name": info.get("app_name"),
        "instance_id": info.get("instance_id"),
        "device_id": info.get("device_id"),
        "compose_hash": info.get("compose_hash"),
        "os_image_hash": info.get("os_image_hash"),
        "key_provider": _json_or_text(info.get("key_provider_info")),
        "app_compose": tcb.get("app_compose"),
    }


def document(
    info: Mapping[str, Any], quote: Mapping[str, Any], nonce: bytes | None
) -> dict[str, Any]:
    """The endpoint's JSON: who the router is, and a quote with its event log."""
    tcb = info.get("tcb_info") or {}
    events = _json_or_text(quote.get("event_log"))
    return {
        "format": FORMAT,
        **identity_of(info),
        "measurements": {k: tcb.get(k) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")},
        "vm_config": quote.get("vm_config") or info.get("vm_config"),
        "nonce": nonce.hex() if nonce is not None else None,
        "binding": BINDING,
        "report_data": quote.get("report_data"),
        "quote": quote.get("quote"),
        "event_log": events,
    }


def _json(status: int, body: Mapping[str, Any], *headers: tuple[str, str]) -> LocalAnswer:
    return LocalAnswer(status, json.dumps(body).encode(), (("Cache-Control", "no-store"), *headers))


def _error(status: int, code: str, detail: str, *headers: tuple[str, str]) -> LocalAnswer:
    return _json(status, {"error": code, "detail": detail}, *headers)


class RouterAttestation:
    """Answers the attestation path (`router.proxy.well_known.AttestationEndpoint`)."""

    def __init__(
        self,
        agent: GuestAgent | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        budget: ClientBudget | None = None,
        max_concurrent: int = 2,
        self_check: SelfCheck | None = None,
    ) -> None:
        self.agent = agent
        self._clock = clock
        self._budget = budget or ClientBudget(clock=clock)
        self._busy = asyncio.Semaphore(max_concurrent)
        self._load_lock = asyncio.Lock()
        self._base: dict[str, Any] | None = None
        self._info: dict[str, Any] | None = None
        self._failed_at: float | None = None
        self.error: str | None = None
        self._answers: OrderedDict[bytes, LocalAnswer] = OrderedDict()
        self._self_check = self_check
        self.verdict: Mapping[str, Any] | None = None
        self.quotes_made = 0  # guest agent quotes, for tests

    @property
    def in_cvm(self) -> bool:
        return self.agent is not None

    async def load(self) -> dict[str, Any] | None:
        """The cached document (Info and the start quote), fetched on first use; None while
        the guest agent fails (asked again at most every RETRY_LOAD_AFTER seconds)."""
        if self._base is not None or self.agent is None:
            return self._base
        async with self._load_lock:
            now = self._clock()
            if self._base is not None or (
                self._failed_at is not None and now - self._failed_at < RETRY_LOAD_AFTER
            ):
                return self._base
            try:
                self._info = await self.agent.info()
                quote = await self.agent.quote(router_report_data(b""))
                self.quotes_made += 1
            except Exception as exc:  # socket gone, old OS, bad answer: say so, keep serving
                self._failed_at, self.error = now, f"dstack guest agent failed: {exc}"
                log.warning("router attestation: %s", self.error)
                return None
            self._base, self.error = document(self._info, quote, None), None
        return self._base

    async def warm(self) -> None:
        """At start, in the background: load the document, then check the start quote as a
        client would (for /status; requests never wait for this check)."""
        base = await self.load()
        if base is None or self._self_check is None:
            return
        try:
            self.verdict = await self._self_check(base)
        except Exception as exc:  # a check that cannot run is shown, never a pass
            log.exception("router attestation: checking the router's own quote failed")
            self.verdict = {"ok": False, "reason": "self_check_failed", "detail": str(exc)}

    async def answer(self, method: str, target: str, client: str) -> LocalAnswer:
        if method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "use GET", ("Allow", "GET, HEAD"))
        if self.agent is None:
            return _error(404, "not_in_cvm", NOT_IN_CVM)
        query = target[len(ATTESTATION_PATH) + 1 :] if "?" in target else ""
        nonces = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "nonce"]
        if len(nonces) > 1:
            return _error(400, "bad_nonce", "send one nonce: ?nonce=<32 to 128 hex characters>")
        if not nonces:
            base = await self.load()
            if base is None:
                return _error(
                    503, "guest_agent_unavailable", self.error or "", ("Retry-After", "5")
                )
            return _json(200, base)
        try:
            nonce = parse_router_nonce(nonces[0])
        except ValueError as exc:
            return _error(400, "bad_nonce", f"{exc}; send ?nonce=<32 to 128 hex characters>")
        return await self._fresh(nonce, client)

    async def _fresh(self, nonce: bytes, client: str) -> LocalAnswer:
        remembered = self._answers.get(nonce)
        if remembered is not None:  # the same nonce again: the same answer, no new quote
            return remembered
        wait = self._budget.take(client or "unknown")
        if wait > 0:
            return _error(
                429, "rate_limited", "quote budget for this client spent; retry later",
                ("Retry-After", str(max(1, round(wait)))),
            )  # fmt: skip
        if self._busy.locked():
            return _error(503, "busy", "too many quotes in progress", ("Retry-After", "1"))
        async with self._busy:
            base, agent = await self.load(), self.agent
            if base is None or self._info is None or agent is None:
                return _error(
                    503, "guest_agent_unavailable", self.error or "", ("Retry-After", "5")
                )
            try:
                quote = await agent.quote(router_report_data(nonce))
            except Exception as exc:  # a failed quote is the guest agent's, reported as such
                log.warning("router attestation: dstack GetQuote failed: %s", exc)
                return _error(502, "guest_agent_failed", f"dstack GetQuote failed: {exc}")
            self.quotes_made += 1
        answer = _json(200, document(self._info, quote, nonce))
        self._answers[nonce] = answer
        while len(self._answers) > REMEMBERED_NONCES:
            self._answers.popitem(last=False)
        return answer

    def summary(self, tls_spki_sha256: str | None = None) -> dict[str, Any] | None:
        """The `/status` block: None outside a CVM. `tls_spki_sha256`: the key of the RA-TLS
        certificate the listener serves (listen_tls.ra_tls), which its own quote binds."""
        if self.agent is None:
            return None
        if self._base is None:
            return {"available": False, "error": self.error or "not loaded yet"}
        keys = ("app_id", "app_name", "instance_id", "compose_hash", "os_image_hash")
        block: dict[str, Any] = {"available": True, **{k: self._base.get(k) for k in keys}}
        block["key_provider"] = self._base.get("key_provider")
        block["endpoint"] = ATTESTATION_PATH
        block["verified"] = dict(self.verdict) if self.verdict is not None else None
        block["key_binding"] = (
            {"listener": "ra-tls", "spki_sha256": tls_spki_sha256, "binding": RA_TLS_BINDING}
            if tls_spki_sha256
            else {"listener": "none", "binding": "no RA-TLS listener: the endpoint's quote "
                  "proves the CVM, not the TLS key clients talk to"}
        )  # fmt: skip
        return block


def build_router_attestation(
    config: RouterConfig,
    environ: Mapping[str, str],
    trusted_simulator_keys: frozenset[bytes] = frozenset(),
    *,
    clock: Callable[[], float] = time.monotonic,
) -> RouterAttestation:
    """The endpoint for this config: in a CVM when a guest agent is found (see the module)."""
    tls = config.listen_tls
    endpoint = find_guest_agent(tls.dstack_socket if tls is not None else None, environ)
    if endpoint is None:
        return RouterAttestation(None, clock=clock)
    log.info("router attestation: served at %s (dstack guest agent %s)", ATTESTATION_PATH, endpoint)
    check = build_self_check(config.attestation, trusted_simulator_keys, clock=clock)
    return RouterAttestation(DstackAgent(endpoint), clock=clock, self_check=check)


def admin_handler(endpoint: RouterAttestation) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The same answers on the admin listener (an open path there: the evidence is public)."""

    async def handle(request: web.Request) -> web.Response:
        local = await endpoint.answer(request.method, request.path_qs, request.remote or "")
        return web.Response(
            status=local.status, body=local.body, content_type=local.content_type,
            headers=dict(local.headers),
        )  # fmt: skip

    return handle
