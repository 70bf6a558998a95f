"""HTTP route describing the roles (any signed-in caller, also before required 2FA is set up):
their names, lowest first, read from `appliance.roles`, and the least role of every route as the
routes declare it (`http/access`), so that the console opens a page when its caller may call the
route the page reads, and names no role itself.

Thin and read-only: never a user, never a principal (GET /api/v1/session says who the caller is).
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from appliance import roles
from appliance.http import access

_ROLES: Final = web.AppKey("roles_description", dict)


@access.requires(roles.VIEWER, during_enrolment=True, during_password_change=True)
async def list_roles(request: web.Request) -> web.Response:
    """The roles, lowest first (each may what the roles before it may), and `routes`: each
    signed-in route (`"METHOD /path"`) with the least role that may call it."""
    return web.json_response(request.app[_ROLES])


async def _describe_routes(app: web.Application) -> None:
    # Every route is added by now (the application is frozen at start-up); the rules are code.
    app[_ROLES]["routes"] = {
        f"{method} {path}": rule.role
        for method, path, rule in sorted(access.route_table(app), key=lambda r: (r[1], r[0]))
        if rule is not None and rule.role != access.PUBLIC and method != "HEAD"}


def add_routes(app: web.Application) -> None:
    description: dict[str, Any] = dict(roles.describe())
    app[_ROLES] = description  # filled in with the routes at start-up (_describe_routes)
    app.on_startup.append(_describe_routes)
    app.router.add_get("/api/v1/roles", list_roles)
