"""The application factory: the aiohttp application as routes over one core, and nothing else.

The core (`appliance.core`) is opened by the application's one lifecycle and closed with it;
every handler reaches a service as `request.app[CORE].<service>`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from appliance.core import open_core
from appliance.http import (
    access,
    auth_routes,
    config_routes,
    console_routes,
    datasource_routes,
    egress_routes,
    health,
    instance_routes,
    keyring_routes,
    kind_routes,
    metrics_routes,
    middleware,
    openapi,
    query_routes,
    role_routes,
    tls_routes,
)
from appliance.http.app_keys import CORE, SETTINGS
from appliance.settings import Settings
from appliance.tls import TLSManager


def build_app(settings: Settings, tls: TLSManager) -> web.Application:
    app = web.Application(
        middlewares=[middleware.front(access.guard)],
        client_max_size=settings.server.max_body_bytes,
        handler_args={"max_field_size": 16 * 1024, "max_line_size": 16 * 1024},
    )
    app[SETTINGS] = settings
    app.on_startup.insert(0, _check_routes)  # before the core opens: refuse undeclared routes

    async def core_lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with open_core(settings, tls=tls, serving=True) as core:
            app[CORE] = core
            yield

    app.cleanup_ctx.append(core_lifecycle)
    health.add_routes(app)
    auth_routes.add_routes(app)
    role_routes.add_routes(app)  # GET /api/v1/roles, read from appliance.roles
    datasource_routes.add_routes(app)
    kind_routes.add_routes(app)  # GET /api/v1/kinds, read from the kinds registry
    query_routes.add_routes(app)
    config_routes.add_routes(app)  # GET /api/v1/export, POST /api/v1/import (admin)
    egress_routes.add_routes(app)
    tls_routes.add_routes(app)
    keyring_routes.add_routes(app)
    instance_routes.add_routes(app)  # GET /api/v1/instances, from the store's heartbeats
    console_routes.add_routes(app)  # the web console's static shell at /
    metrics_routes.add_routes(app)  # GET /metrics and the per-response counter
    openapi.add_routes(app)  # GET /api/v1/openapi.json, built from the routes above
    return app


async def _check_routes(app: web.Application) -> None:
    access.check_routes(app)
