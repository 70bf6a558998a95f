"""HTTP routes for datasources (developers and admins only; a viewer sees nothing of them), and the
lifecycle that opens the datasource, query and run services and closes every pool at shutdown.

Thin handlers: parse, authorise (declared with `access`), call the service, serialise. Never
echoes a secret: responses show `{"set": true}`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from appliance.datasources import DatasourceService
from appliance.egress import Dialer, PolicyHolder
from appliance.errors import ApplianceError
from appliance.http import access
from appliance.http.json_body import read_object
from appliance.http.keys import (
    AUDIT,
    DATASOURCES,
    EGRESS,
    KEYRING,
    QUERIES,
    RUNNER,
    SETTINGS,
    STORE,
)
from appliance.queries import QueryService, Runner


@access.developer
async def list_datasources(request: web.Request) -> web.Response:
    return web.json_response({"datasources": await request.app[DATASOURCES].list()})


@access.developer
async def create_datasource(request: web.Request) -> web.Response:
    body = await read_object(request)
    created = await request.app[DATASOURCES].create(body, access.context(request))
    return web.json_response(created, status=201)


@access.developer
async def get_datasource(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DATASOURCES].get(request.match_info["id"]))


@access.developer
async def update_datasource(request: web.Request) -> web.Response:
    body = await read_object(request)
    updated = await request.app[DATASOURCES].update(request.match_info["id"], body,
                                                    access.context(request))
    return web.json_response(updated)


@access.developer
async def delete_datasource(request: web.Request) -> web.Response:
    await request.app[DATASOURCES].delete(request.match_info["id"], access.context(request))
    return web.Response(status=204)


@access.developer
async def test_datasource(request: web.Request) -> web.Response:
    """200 `{"ok": true}`, or the failure's status with `{"ok": false, "error": {...}}`."""
    try:
        result = await request.app[DATASOURCES].test(request.match_info["id"],
                                                     access.context(request))
    except ApplianceError as exc:
        if exc.status == 404:
            raise
        return web.json_response({"ok": False, "error": {"code": exc.code,
                                                         "message": exc.message}},
                                 status=exc.status)
    return web.json_response(result)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    datasources = DatasourceService(app[STORE], app[KEYRING], app[EGRESS], app[AUDIT],
                                    state_dir=Path(settings.server.state_dir))
    await datasources.bind_legacy_secrets()  # once after an upgrade; a no-op afterwards
    queries = QueryService(app[STORE], datasources, app[AUDIT])
    app[DATASOURCES] = datasources
    app[QUERIES] = queries
    app[RUNNER] = Runner(queries)
    try:
        yield
    finally:
        await datasources.close()


def add_routes(app: web.Application) -> None:
    if EGRESS not in app:
        app[EGRESS] = Dialer(PolicyHolder(app[SETTINGS].egress))
    app.cleanup_ctx.append(_lifecycle)
    router = app.router
    router.add_get("/api/v1/datasources", list_datasources)
    router.add_post("/api/v1/datasources", create_datasource)
    router.add_get("/api/v1/datasources/{id}", get_datasource)
    router.add_patch("/api/v1/datasources/{id}", update_datasource)
    router.add_delete("/api/v1/datasources/{id}", delete_datasource)
    router.add_post("/api/v1/datasources/{id}/test", test_datasource)
