"""The simulated Phala Cloud API (`/api/v1`), with failures injected at run time.

`ctx.api_mode` (set by `Simulator.break_api`) decides how every call is answered:
"ok", "500", "timeout" (hang until the mode changes), "garbage" (not JSON), "invalid"
(JSON of the wrong schema) or "429" (with Retry-After).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from router.simulator import records
from router.simulator.state import SimContext

API_MODES = ("ok", "500", "timeout", "garbage", "invalid", "429")
PREFIX = "/api/v1"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cloud_api_app(ctx: SimContext) -> web.Application:
    @web.middleware
    async def gate(request: web.Request, handler: _Handler) -> web.StreamResponse:
        ctx.api_requests += 1
        key = request.headers.get("X-API-Key", "")
        # Attestations are public: Phala's own verifier reads them without a key.
        public = request.path.endswith(("/attestations", "/attestation"))
        if not public and not hmac.compare_digest(key.encode(), ctx.api_key.encode()):
            return _error(401, "Invalid or missing API key", "AUTH_INVALID_KEY")
        while ctx.api_mode == "timeout":
            await ctx.api_unblocked.wait()
        mode = ctx.api_mode
        if mode == "500":
            return _error(500, "Internal server error (injected)", "INTERNAL")
        if mode == "429":
            response = _error(429, "Too many requests (injected)", "RATE_LIMITED")
            response.headers["Retry-After"] = str(ctx.retry_after)
            return response
        if mode == "garbage":
            return web.Response(
                text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        if mode == "invalid":
            return web.json_response({"unexpected": True, "items": "not a list"})
        return await handler(request)

    def check_app(request: web.Request) -> str:
        """The app_id of the path, one of the apps this cloud hosts; 404 otherwise."""
        app_id = request.match_info["app_id"].lower().removeprefix("app_")
        if app_id not in ctx.apps:
            raise web.HTTPNotFound(
                text='{"detail": "App not found", "error_code": "NOT_FOUND"}',
                content_type="application/json",
            )
        return app_id

    async def list_cvms(request: web.Request) -> web.StreamResponse:
        app_id = check_app(request)
        version = request.headers.get("X-Phala-Version")
        return web.json_response(records.cvm_list(ctx, version, app_id))

    async def get_app(request: web.Request) -> web.StreamResponse:
        app_id = check_app(request)
        version = request.headers.get("X-Phala-Version")
        return web.json_response(records.app_document(ctx, version, app_id))

    async def status_batch(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(422, "body must be JSON {'vm_uuids': [...]}", "VALIDATION")
        uuids = body.get("vm_uuids") if isinstance(body, dict) else None
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            return _error(422, "vm_uuids must be a list of strings", "VALIDATION")
        if len(uuids) > 100:
            return _error(422, "at most 100 vm_uuids per call", "VALIDATION")
        return web.json_response(records.batch_status(ctx, uuids))

    async def app_attestations(request: web.Request) -> web.StreamResponse:
        app_id = check_app(request)
        return web.json_response(records.app_attestations(ctx, app_id))

    async def cvm_attestation(request: web.Request) -> web.StreamResponse:
        replica = ctx.find(request.match_info["cvm_id"])
        if replica is None:
            return _error(404, "CVM not found", "NOT_FOUND")
        return web.json_response(records.cvm_attestation(replica, ctx))

    app = web.Application(middlewares=[gate])
    app.router.add_get(f"{PREFIX}/apps/{{app_id}}/cvms", list_cvms)
    app.router.add_get(f"{PREFIX}/apps/{{app_id}}/attestations", app_attestations)
    app.router.add_get(f"{PREFIX}/apps/{{app_id}}", get_app)
    app.router.add_post(f"{PREFIX}/status/batch", status_batch)
    app.router.add_get(f"{PREFIX}/cvms/{{cvm_id}}/attestation", cvm_attestation)
    return app


def _error(status: int, detail: str, code: str) -> web.Response:
    return web.json_response({"detail": detail, "error_code": code}, status=status)
