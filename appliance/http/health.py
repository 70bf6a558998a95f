"""Liveness and readiness: `/healthz` (the process answers) and `/readyz` (it can do its work).

Never reveals configuration beyond which check failed.
"""

from __future__ import annotations

from aiohttp import web

from appliance.errors import ApplianceError
from appliance.http import access
from appliance.http.app_keys import CORE


@access.public
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@access.public
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await request.app[CORE].store.ping()
        checks["store"] = "ok"
    except ApplianceError as exc:
        checks["store"] = exc.message
    ok, detail = request.app[CORE].tls.ready()
    checks["tls"] = detail if not ok else "ok"
    ready = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
