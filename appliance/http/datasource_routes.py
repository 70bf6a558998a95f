"""HTTP routes for datasources (developers and admins only; a viewer sees nothing of them).

Thin handlers: parse, authorise (declared with `access`), call the service, serialise. Never
echoes a secret: responses show `{"set": true}`.
"""

from __future__ import annotations

from aiohttp import web

from appliance.errors import ApplianceError
from appliance.http import access
from appliance.http.app_keys import CORE
from appliance.http.json_body import read_object


@access.developer
async def list_datasources(request: web.Request) -> web.Response:
    return web.json_response({"datasources": await request.app[CORE].datasources.list()})


@access.developer
async def create_datasource(request: web.Request) -> web.Response:
    body = await read_object(request)
    created = await request.app[CORE].datasources.create(body, access.context(request))
    return web.json_response(created, status=201)


@access.developer
async def get_datasource(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CORE].datasources.get(request.match_info["id"]))


@access.developer
async def update_datasource(request: web.Request) -> web.Response:
    body = await read_object(request)
    updated = await request.app[CORE].datasources.update(request.match_info["id"], body,
                                                    access.context(request))
    return web.json_response(updated)


@access.developer
async def delete_datasource(request: web.Request) -> web.Response:
    await request.app[CORE].datasources.delete(request.match_info["id"], access.context(request))
    return web.Response(status=204)


@access.developer
async def test_datasource(request: web.Request) -> web.Response:
    """200 `{"ok": true}`, or the failure's status with `{"ok": false, "error": {...}}`."""
    try:
        result = await request.app[CORE].datasources.test(request.match_info["id"],
                                                     access.context(request))
    except ApplianceError as exc:
        if exc.status == 404:
            raise
        return web.json_response({"ok": False, "error": {"code": exc.code,
                                                         "message": exc.message}},
                                 status=exc.status)
    return web.json_response(result)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/datasources", list_datasources)
    router.add_post("/api/v1/datasources", create_datasource)
    router.add_get("/api/v1/datasources/{id}", get_datasource)
    router.add_patch("/api/v1/datasources/{id}", update_datasource)
    router.add_delete("/api/v1/datasources/{id}", delete_datasource)
    router.add_post("/api/v1/datasources/{id}/test", test_datasource)
