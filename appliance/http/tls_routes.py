"""The TLS admin API: `GET /api/v1/tls` (what is served and when it renews) and
`POST /api/v1/tls/renew` (order a new ACME certificate now).

Thin handlers over `TLSManager`; admin only. Never returns key material.
"""

from __future__ import annotations

from aiohttp import web

from appliance.errors import Conflict
from appliance.http import access
from appliance.http.app_keys import CORE


@access.admin
async def get_tls(request: web.Request) -> web.Response:
    return web.json_response(request.app[CORE].tls.status())


@access.admin
async def renew(request: web.Request) -> web.Response:
    tls = request.app[CORE].tls
    if tls.acme is None:
        raise Conflict(f"tls.mode is {tls.settings.mode!r}: only acme certificates are renewed "
                       "on request", code="not_acme")
    outcome = await tls.acme.renew(reason="forced", actor=access.context(request).actor)
    return web.json_response({"renewed": outcome.renewed, **tls.status()})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/tls", get_tls)
    app.router.add_post("/api/v1/tls/renew", renew)
