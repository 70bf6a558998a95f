"""HTTP route describing the datasource kinds (developers and admins): each kind's title, config
fields and secret fields, where a datasource of it points (`where`) and what a query's body is
(`body`), read from the kinds registry, for the console's datasource forms, list and query editor.

Thin and read-only: never a value of any datasource, never a secret (secret fields are names).
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from appliance.http import access
from appliance.kinds import all_kinds

_KINDS: Final = web.AppKey("kinds_description", dict)


def describe() -> dict[str, Any]:
    return {"kinds": [kind.describe() for kind in all_kinds()]}


@access.developer
async def list_kinds(request: web.Request) -> web.Response:
    """The datasource kinds: config fields (with `when` conditions), secret fields, where, body."""
    return web.json_response(request.app[_KINDS])


def add_routes(app: web.Application) -> None:
    app[_KINDS] = describe()  # the registry is fixed once the kinds are imported
    app.router.add_get("/api/v1/kinds", list_kinds)
