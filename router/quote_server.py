"""`phala-router quote-server`: the replica side of `attestation.mode: fresh`.

Runs inside the CVM next to the app (a compose service mounting `/var/run/dstack.sock`).
The router asks `GET <path>?nonce=<64 hex>`; we ask dstack for a quote whose report_data is
`sha512(b"phala-router/attest/v1:" + nonce)` and return dstack's answer unchanged:
`{quote, event_log, report_data, vm_config}`. The quote server holds no secret and decides
nothing: everything it returns is checked by the router against Intel's signature and the
RTMRs, so a compromised sidecar can only make its replica fail attestation.

Quoting costs the CVM real work, so at most `max_concurrent` quotes are made at once; more
callers get 503 rather than a queue.
"""

from __future__ import annotations

import asyncio
import logging
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


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def create_app(
    *,
    endpoint: str | None = DEFAULT_ENDPOINT,
    path: str = DEFAULT_PATH,
    timeout: float = 10.0,
    max_concurrent: int = 4,
) -> web.Application:
    """The quote-server app. `endpoint` is the dstack socket path (or an http URL, e.g. the
    dstack simulator's); None lets dstack-sdk pick (DSTACK_SIMULATOR_ENDPOINT, then the
    usual socket paths)."""
    try:
        from dstack_sdk import AsyncDstackClient
    except ImportError:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the quote server needs dstack-sdk: pip install 'phala-router[quote-server]'"
        ) from None
    FreshConfig(path=path)  # the same path rules as the router's config
    busy = asyncio.Semaphore(max_concurrent)

    async def quote(request: web.Request) -> web.Response:
        try:
            nonce = parse_nonce(request.query.get("nonce", ""))
        except ValueError as exc:
            return _error(400, "bad_nonce", f"{exc}; send ?nonce=<64 hex characters>")
        if busy.locked():
            return _error(503, "busy", "too many quotes in progress; retry shortly")
        async with busy:
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
) -> None:
    """Serve until interrupted (the body of `phala-router quote-server`)."""
    host, port = split_host_port(listen)
    log.info("quote server on %s, path %s, dstack at %s", listen, path, endpoint or "(auto)")
    web.run_app(create_app(endpoint=endpoint, path=path), host=host, port=port, print=None)
