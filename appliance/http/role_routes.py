"""HTTP route describing the roles (any signed-in caller, also before required 2FA is set up):
their names, lowest first, read from `appliance.roles`, for the console's navigation and forms.

Thin and read-only: never a user, never a principal (GET /api/v1/session says who the caller is).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from appliance import roles
from appliance.http import access

_ROLES: Final = web.AppKey("roles_description", dict)


@access.requires(roles.VIEWER, during_enrolment=True, during_password_change=True)
async def list_roles(request: web.Request) -> web.Response:
    """The roles, lowest first: each may what the roles before it may."""
    return web.json_response(request.app[_ROLES])


def add_routes(app: web.Application) -> None:
    app[_ROLES] = roles.describe()  # fixed: the names live in code
    app.router.add_get("/api/v1/roles", list_roles)
