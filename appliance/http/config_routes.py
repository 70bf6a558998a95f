"""HTTP routes for queries as code (admins only): `GET /api/v1/export` returns the files of an
export, `POST /api/v1/import` takes them and answers with the plan (and applies it unless
`dry_run`), with the semantics of `appliance import`.

Thin handlers: parse, authorise, call, serialise. Never echoes a file's content in an error nor
any secret value (files hold none).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.errors import BadRequest
from appliance.http import access
from appliance.http.app_keys import CORE
from appliance.http.json_body import read_object

IMPORT_KEYS = frozenset({"files", "dry_run", "prune"})


@access.admin
async def export_config(request: web.Request) -> web.Response:
    from appliance.config_files import export_files  # lazy: only an export or import needs it

    core = request.app[CORE]
    files = await export_files(core.datasources, core.queries, core.audit,
                               access.context(request))
    return web.json_response({"files": files})


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if type(value) is not bool:
        raise BadRequest(f"'{key}' must be true or false", field=key)
    return value


@access.admin
async def import_config(request: web.Request) -> web.Response:
    from appliance.config_files import apply_plan, plan_import  # lazy: see export_config

    body = await read_object(request)
    unknown = sorted(set(body) - IMPORT_KEYS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(k[:40] for k in unknown)}; the fields "
                         "are files, dry_run, prune")
    files = body.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BadRequest("'files' must be an object of path → text (as GET /api/v1/export "
                         "returns)", field="files")
    dry_run, prune = _flag(body, "dry_run"), _flag(body, "prune")
    core = request.app[CORE]
    plan = await plan_import(files, core.datasources, core.queries, prune=prune)
    applied = False
    if not dry_run and plan.pending:
        await apply_plan(plan, core.store, core.datasources, core.queries, core.audit,
                         access.context(request))
        applied = True
    return web.json_response({**plan.to_json(), "dry_run": dry_run, "applied": applied})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/export", export_config)
    app.router.add_post("/api/v1/import", import_config)
