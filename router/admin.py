"""The admin listener: /healthz, /readyz, /status, /metrics and operator actions.

It refuses to start off loopback without a token (the config already refuses that), and
when a token is configured every endpoint except the liveness/readiness probes requires
`Authorization: Bearer <token>`, compared in constant time (a malformed header is a 401).
Without a token, `router.admin_guard` keeps browsers out: a foreign `Host` (DNS rebinding)
or a cross-site `Origin` on a state-changing request is refused with 403.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any, Protocol

from aiohttp import web

from router import status_page
from router.admin_guard import refusal
from router.errors import ConfigError
from router.settings_types import split_host_port

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# /status.html is a static shell holding no data: its script fetches /status with the token.
# The router's attestation (router.self_attestation) is public evidence, rationed by itself.
OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/status.html", "/.well-known/phala-router/attestation"}
)
MetricsSource = Callable[[], Awaitable[tuple[bytes, str]]]
RECENT_ACTIONS = 20


def admin_token(token_env: str | None, environ: Mapping[str, str]) -> str | None:
    """The token `admin.token_env` names (None: no token asked for). ConfigError when the
    variable is unset or empty: the admin API never opens unprotected by mistake."""
    if token_env is None:
        return None
    token = environ.get(token_env)
    if not token:
        raise ConfigError(f"admin.token_env: environment variable {token_env} is not set or empty")
    return token


class AdminBackend(Protocol):
    """What the admin API needs from the running router (implemented by RouterApp)."""

    @property
    def ready(self) -> bool: ...

    def status(self, app: str | None = None) -> dict[str, Any]: ...

    def drain(self, replica_id: str, drained: bool, app: str | None = None) -> None: ...

    def set_active_limit(self, count: int | None, app: str | None = None) -> None: ...

    async def recheck(self, replica_id: str | None, app: str | None = None) -> None: ...

    def reload(self) -> Any:
        """Re-read the config; returns a dataclass with applied, restart_required, error."""

    def effective_config(self) -> dict[str, Any]:
        """The running config; secrets appear only as the names of their variables."""


class AdminServer:
    def __init__(
        self,
        listen: str,
        backend: AdminBackend,
        token: str | None,
        metrics: MetricsSource | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._listen = listen
        self._backend = backend
        self._token = token.encode() if token else None
        self._metrics = metrics
        self._wall = wall
        # Operator actions, newest last, shown in /status so everyone sees who changed what.
        self.actions: deque[dict[str, Any]] = deque(maxlen=RECENT_ACTIONS)
        self._runner: web.AppRunner | None = None
        self.extra_routes: list[tuple[str, str, Handler]] = []
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/status.html", status_page.handle)
        app.router.add_get("/", status_page.redirect)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_page)
        app.router.add_post("/admin/replicas/{id}/drain", self._drain)
        app.router.add_post("/admin/replicas/{id}/undrain", self._undrain)
        app.router.add_post("/admin/replicas/{id}/recheck", self._recheck)
        app.router.add_post("/admin/recheck", self._recheck)
        app.router.add_post("/admin/active-limit", self._active_limit)
        # The same actions for one app of several (the paths above act on the primary app).
        app.router.add_post("/admin/apps/{app}/replicas/{id}/drain", self._drain)
        app.router.add_post("/admin/apps/{app}/replicas/{id}/undrain", self._undrain)
        app.router.add_post("/admin/apps/{app}/replicas/{id}/recheck", self._recheck)
        app.router.add_post("/admin/apps/{app}/recheck", self._recheck)
        app.router.add_post("/admin/apps/{app}/active-limit", self._active_limit)
        app.router.add_post("/admin/reload", self._reload)
        app.router.add_get("/admin/config", self._config)
        for method, path, handler in self.extra_routes:
            app.router.add_route(method, path, handler)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = split_host_port(self._listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None:
            if request.path not in OPEN_PATHS and not hmac.compare_digest(
                _bearer(request), self._token
            ):
                return web.json_response(
                    {"error": "unauthorized", "hint": "send Authorization: Bearer <admin token>"},
                    status=401,
                )
            return await handler(request)
        refused = refusal(
            request.method, request.headers.get("Host"), request.headers.get("Origin"), self.port
        )
        if refused is not None:
            return web.json_response(refused.body(), status=refused.status)
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self._backend.ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        app = request.query.get("app")
        try:
            document = {**self._backend.status(app), "admin_actions": list(self.actions)}
        except LookupError:
            return web.json_response({"error": "unknown_app", "app": app}, status=404)
        return web.json_response(document, dumps=lambda o: json.dumps(o, indent=1))

    async def _metrics_page(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        body, content_type = await self._metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _record(self, request: web.Request, action: str, target: str | None) -> None:
        self.actions.append(
            {"at": round(self._wall(), 3), "action": action, "target": target, "by": request.remote}
        )

    def _app_named(self, request: web.Request) -> str | None:
        """The app a path names (None: the primary app); 404 for an app not configured."""
        app = request.match_info.get("app")
        try:
            self._backend.status(app)
        except LookupError:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "unknown_app", "app": app}),
                content_type="application/json",
            ) from None
        return app

    def _known(self, request: web.Request) -> str:
        replica_id = request.match_info["id"]
        ids = {r["id"] for r in self._backend.status(self._app_named(request))["replicas"]}
        if replica_id not in ids:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "unknown_replica", "replica": replica_id}),
                content_type="application/json",
            )
        return replica_id

    async def _drain(self, request: web.Request) -> web.Response:
        replica_id = self._known(request)
        self._backend.drain(replica_id, True, self._app_named(request))
        self._record(request, "drain", replica_id)
        log.info("admin: drained replica %s", replica_id)
        return web.json_response({"drained": replica_id})

    async def _undrain(self, request: web.Request) -> web.Response:
        replica_id = self._known(request)
        self._backend.drain(replica_id, False, self._app_named(request))
        self._record(request, "undrain", replica_id)
        log.info("admin: undrained replica %s", replica_id)
        return web.json_response({"undrained": replica_id})

    async def _recheck(self, request: web.Request) -> web.Response:
        replica_id = self._known(request) if "id" in request.match_info else None
        await self._backend.recheck(replica_id, self._app_named(request))
        self._record(request, "recheck", replica_id)
        log.info("admin: re-check of %s", replica_id or "all replicas")
        return web.json_response({"rechecked": replica_id or "all"})

    async def _reload(self, request: web.Request) -> web.Response:
        result = asdict(self._backend.reload())
        self._record(request, "reload", "refused" if result.get("error") else "applied")
        return web.json_response(result, status=400 if result.get("error") else 200)

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(
            self._backend.effective_config(), dumps=lambda o: json.dumps(o, indent=1)
        )

    async def _active_limit(self, request: web.Request) -> web.Response:
        app = self._app_named(request)
        try:
            body = await request.json()
            count = body["count"]
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {
                    "error": "bad_request",
                    "hint": 'send {"count": K} with K >= 1, or {"count": null} to lift it',
                },
                status=400,
            )
        self._backend.set_active_limit(count, app)
        self._record(request, "active-limit", None if count is None else str(count))
        log.info("admin: active-limit set to %s", count)
        return web.json_response({"active_limit": count})


def _bearer(request: web.Request) -> bytes:
    """The token a request presents, b"" if none. aiohttp decodes header bytes as UTF-8
    with surrogate escapes: anything outside ASCII cannot be the token, and must not reach
    compare_digest (it would raise: a 500 instead of a 401)."""
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
    return given.encode() if given.isascii() else b""
