"""`phala-router quote-server`: the replica side of `attestation.mode: fresh`.

Runs inside the CVM next to the app (a compose service mounting `/var/run/dstack.sock`).
The router asks `GET <path>?nonce=<64 hex>`; we ask dstack for a quote whose report_data is
`sha512(b"phala-router/attest/v1:" + nonce)` and return dstack's answer unchanged:
`{quote, event_log, report_data, vm_config}`. The quote server holds no secret and decides
nothing: everything it returns is checked by the router against Intel's signature and the
RTMRs, so a compromised sidecar can only make its replica fail attestation.

Quoting costs the CVM real work and the server is reachable by anyone at `<id>-8099`, so:
- each client address has a budget (`ClientBudget`): a burst of `burst` quotes, refilled at
  one per `refill` seconds; past it, 429 with Retry-After. The router asks once per replica
  per `attestation.interval`, plus at most `fresh.retries` retries: far inside the budget.
  Behind the dstack gateway every caller arrives from the gateway's address, so the budget
  is shared there; hence
- a caller presenting `Authorization: Bearer <token>` (the value of the env var named by
  `--token-env`, e.g. a Phala encrypted secret; the router sends `attestation.fresh.token_env`)
  skips the budget and has a slot of its own, so the router's nonce requests stay cheap and
  answered however busy the public endpoint is;
- at most `max_concurrent` public quotes are made at once; more callers get 503.
A flood can at worst make the replica fail attestation (denial of service), never pass.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
from aiohttp import web

from router.attestation.quote import fresh_report_data, parse_nonce
from router.attestation.settings import FreshConfig
from router.settings_types import split_host_port

log = logging.getLogger(__name__)

DEFAULT_PATH = FreshConfig().path
DEFAULT_ENDPOINT = "/var/run/dstack.sock"
DEFAULT_LISTEN = "0.0.0.0:8099"


DEFAULT_BURST = 6
DEFAULT_REFILL = 2.0  # seconds per quote, per client address
MAX_CLIENTS = 4096


def _error(status: int, code: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


class ClientBudget:
    """A token bucket per client address: `burst` quotes, one more every `refill` seconds.
    Remembers at most MAX_CLIENTS addresses (the least recently seen are forgotten)."""

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        refill: float = DEFAULT_REFILL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = burst
        self._refill = refill
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """0.0 when `client` may have a quote now, else the seconds until it may."""
        now = self._clock()
        tokens, at = self._buckets.pop(client, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - at) / self._refill)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1.0 - tokens) * self._refill
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def _is_router(request: web.Request, token: str | None) -> bool:
    if not token:
        return False
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(
    *,
    endpoint: str | None = DEFAULT_ENDPOINT,
    path: str = DEFAULT_PATH,
    timeout: float = 10.0,
    max_concurrent: int = 4,
    budget: ClientBudget | None = None,
    router_token: str | None = None,
) -> web.Application:
    """The quote-server app. `endpoint` is the dstack socket path (or an http URL, e.g. the
    dstack simulator's); None lets dstack-sdk pick (DSTACK_SIMULATOR_ENDPOINT, then the
    usual socket paths). `router_token`: callers presenting it skip the client budget."""
    try:
        from dstack_sdk import AsyncDstackClient
    except ImportError:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the quote server needs dstack-sdk: pip install 'phala-router[quote-server]'"
        ) from None
    FreshConfig(path=path)  # the same path rules as the router's config
    busy = asyncio.Semaphore(max_concurrent)
    reserved = asyncio.Semaphore(1)  # the router's own slot
    budget = budget or ClientBudget()

    async def quote(request: web.Request) -> web.Response:
        try:
            nonce = parse_nonce(request.query.get("nonce", ""))
        except ValueError as exc:
            return _error(400, "bad_nonce", f"{exc}; send ?nonce=<64 hex characters>")
        slot = reserved if _is_router(request, router_token) else busy
        if slot is busy:
            wait = budget.take(request.remote or "unknown")
            if wait > 0:
                return _error(
                    429, "rate_limited", "quote budget for this client spent; retry later",
                    **{"Retry-After": str(max(1, round(wait)))},
                )  # fmt: skip
            if busy.locked():
                return _error(503, "busy", "too many quotes in progress; retry shortly")
        async with slot:
            try:
                async with AsyncDstackClient(endpoint, timeout=timeout) as client:
                    answer: Any = await client.get_quote(fresh_report_data(nonce))
            except FileNotFoundError as exc:
                log.error("dstack socket missing: %s", exc)
                return _error(503, "dstack_unavailable", f"{exc}; mount /var/run/dstack.sock")
            except (httpx.HTTPError, OSError, ValueError, RuntimeError) as exc:
                log.warning("dstack GetQuote failed: %s", exc)
                return _error(502, "dstack_failed", f"dstack GetQuote failed: {exc}")
        return web.json_response(
            {
                "quote": answer.quote,
                "event_log": answer.event_log,
                "report_data": answer.report_data,
                "vm_config": answer.vm_config,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get(path, quote)
    app.router.add_get("/healthz", healthz)
    return app


def run(
    listen: str = DEFAULT_LISTEN,
    *,
    endpoint: str | None = DEFAULT_ENDPOINT,
    path: str = DEFAULT_PATH,
    router_token: str | None = None,
) -> None:
    """Serve until interrupted (the body of `phala-router quote-server`)."""
    host, port = split_host_port(listen)
    log.info("quote server on %s, path %s, dstack at %s", listen, path, endpoint or "(auto)")
    web.run_app(
        create_app(endpoint=endpoint, path=path, router_token=router_token),
        host=host,
        port=port,
        print=None,
    )
