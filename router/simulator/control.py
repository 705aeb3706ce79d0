"""The simulator's control API (JSON over HTTP), mirroring `Simulator`'s methods.

GET    /                      where everything is, and every replica
GET    /replicas              every replica's state
POST   /replicas              add one (body: SimReplicaConfig fields)
GET    /replicas/{id}         one replica (instance_id, vm_uuid or a unique prefix)
PATCH  /replicas/{id}         change knobs (body: ReplicaPatch fields), e.g.
                              {"attestation": "wrong_instance"} or {"compose_hash": "<64 hex>"}
POST   /replicas/{id}/stop    stop it (ports close, the API says stopped)
POST   /replicas/{id}/start   start it again
DELETE /replicas/{id}         remove it
PUT    /api-mode              {"mode": "ok|500|timeout|garbage|invalid|429"}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from router.simulator.settings import ReplicaPatch, SimReplicaConfig

if TYPE_CHECKING:
    from router.simulator.core import Simulator

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def control_app(sim: Simulator) -> web.Application:
    @web.middleware
    async def errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ]
            return web.json_response({"error": "; ".join(problems)}, status=400)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        data = await request.json()
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    def ident(request: web.Request) -> str:
        return request.match_info["id"]

    async def summary(request: web.Request) -> web.StreamResponse:
        return web.json_response(sim.summary())

    async def list_replicas(request: web.Request) -> web.StreamResponse:
        return web.json_response([r.describe() for r in sim.replicas])

    async def add(request: web.Request) -> web.StreamResponse:
        config = SimReplicaConfig.model_validate(await body(request))
        # ?app_id=: a replica of another app this cloud hosts (default: the first app)
        replica = await sim.add_replica(config, app_id=request.query.get("app_id"))
        return web.json_response(replica.describe(), status=201)

    async def show(request: web.Request) -> web.StreamResponse:
        return web.json_response(sim.replica(ident(request)).describe())

    async def patch(request: web.Request) -> web.StreamResponse:
        changes = ReplicaPatch.model_validate(await body(request))
        return web.json_response(sim.patch_replica(ident(request), changes).describe())

    async def stop(request: web.Request) -> web.StreamResponse:
        await sim.stop_replica(ident(request))
        return web.json_response(sim.replica(ident(request)).describe())

    async def start(request: web.Request) -> web.StreamResponse:
        await sim.start_replica(ident(request))
        return web.json_response(sim.replica(ident(request)).describe())

    async def remove(request: web.Request) -> web.StreamResponse:
        await sim.remove_replica(ident(request))
        return web.json_response({"removed": ident(request)})

    async def api_mode(request: web.Request) -> web.StreamResponse:
        if request.method == "PUT":
            sim.break_api(str((await body(request)).get("mode", "")))
        return web.json_response({"mode": sim.ctx.api_mode})

    async def shared_backend(request: web.Request) -> web.StreamResponse:
        if request.method == "PUT":
            rps = (await body(request)).get("rps")
            if rps is not None and (
                isinstance(rps, bool) or not isinstance(rps, int | float) or rps <= 0
            ):
                raise ValueError("rps must be a positive number or null")
            sim.set_shared_backend_rps(rps)
        bucket = sim.ctx.shared_backend
        return web.json_response({"rps": bucket.rate if bucket else None})

    app = web.Application(middlewares=[errors])
    app.router.add_get("/", summary)
    app.router.add_get("/replicas", list_replicas)
    app.router.add_post("/replicas", add)
    app.router.add_get("/replicas/{id}", show)
    app.router.add_patch("/replicas/{id}", patch)
    app.router.add_post("/replicas/{id}/stop", stop)
    app.router.add_post("/replicas/{id}/start", start)
    app.router.add_delete("/replicas/{id}", remove)
    app.router.add_route("*", "/api-mode", api_mode)
    app.router.add_route("*", "/shared-backend", shared_backend)
    return app
