"""HTTP routes for the egress policy (`GET|PUT|DELETE /api/v1/egress`) and the probe.

Thin handlers: parse, authorise (admin, declared with `access`), call `RuntimeEgress` or the dialer,
serialise (the process's one dialer and its runtime policy are the core's). Never logs request
bodies.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.egress.runtime import FIELDS, as_json, parse_changes
from appliance.errors import BadRequest
from appliance.http import access
from appliance.http.app_keys import CORE
from appliance.http.json_body import read_object

PROBE_TIMEOUT = 5.0
MAX_HOST_LENGTH = 300


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/egress", get_egress)
    app.router.add_put("/api/v1/egress", put_egress)
    app.router.add_delete("/api/v1/egress", reset_egress)
    app.router.add_post("/api/v1/egress/probe", probe)


def _view(app: web.Application) -> dict[str, Any]:
    runtime = app[CORE].egress_runtime
    out = as_json(runtime.effective)
    out["addresses_to_allow"] = app[CORE].egress.addresses_to_allow()
    out["overridden"] = sorted(runtime.override)
    return out


@access.admin
async def get_egress(request: web.Request) -> web.Response:
    return web.json_response(_view(request.app))


@access.admin
async def put_egress(request: web.Request) -> web.Response:
    changes = parse_changes(await read_object(request))
    app = request.app
    await app[CORE].egress_runtime.change(app[CORE].store, app[CORE].audit, changes,
                                     context=access.context(request))
    return web.json_response(_view(app))


@access.admin
async def reset_egress(request: web.Request) -> web.Response:
    """Back to the settings file's values: every override removed."""
    app = request.app
    runtime = app[CORE].egress_runtime
    await runtime.change(app[CORE].store, app[CORE].audit, dict.fromkeys(FIELDS),
                         context=access.context(request), action="egress.reset")
    return web.json_response(_view(app))


@access.admin
async def probe(request: web.Request) -> web.Response:
    body = await read_object(request)
    unknown = sorted(set(body) - {"host", "port"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; send host and port", code="bad_field")
    host, port = body.get("host"), body.get("port")
    if not isinstance(host, str) or not host.strip():
        raise BadRequest("'host' must be a non-empty string", code="bad_field", field="host")
    if len(host) > MAX_HOST_LENGTH:
        raise BadRequest(f"'host' is longer than {MAX_HOST_LENGTH} characters", code="bad_field",
                         field="host")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        raise BadRequest("'port' must be an integer from 1 to 65535", code="bad_field",
                         field="port")
    result = await request.app[CORE].egress.probe(host.strip(), port, timeout=PROBE_TIMEOUT)
    out: dict[str, Any] = {
        "allowed": result.allowed,
        "rule": result.rule,
        "addresses": list(result.addresses),
        "connected": result.connected,
        "source_address": result.source_address,
    }
    if result.error:
        out["error"] = result.error
    return web.json_response(out)
