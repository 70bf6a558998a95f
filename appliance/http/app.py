"""The application factory: builds the aiohttp application from its parts, and nothing else.

Lifecycles (store, TLS maintenance) are attached through `cleanup_ctx`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from appliance import state_dir
from appliance.console import console
from appliance.http import (
    access,
    auth_routes,
    datasource_routes,
    egress_routes,
    health,
    keyring_routes,
    kind_routes,
    metrics_routes,
    middleware,
    openapi,
    query_routes,
    tls_routes,
)
from appliance.http.keys import AUDIT, EGRESS, KEYRING, SETTINGS, STORE, TLS
from appliance.keyring import keyring_lifecycle
from appliance.settings import Settings
from appliance.store import open_sqlite_store
from appliance.tls import TLSManager


def build_app(settings: Settings, tls: TLSManager) -> web.Application:
    app = web.Application(
        middlewares=[middleware.front(access.guard)],
        client_max_size=settings.server.max_body_bytes,
        handler_args={"max_field_size": 16 * 1024, "max_line_size": 16 * 1024},
    )
    app[SETTINGS] = settings
    app[TLS] = tls
    app.cleanup_ctx.append(_store_lifecycle)
    egress_routes.install(app)  # the one egress dialer; stored policy once the store is open
    app.cleanup_ctx.append(keyring_lifecycle(SETTINGS, STORE, KEYRING))
    app.cleanup_ctx.append(_tls_lifecycle)
    access.install(app)  # refuses to start with a route that declares no role
    health.add_routes(app)
    auth_routes.add_routes(app)
    datasource_routes.add_routes(app)  # also opens the datasource and query services
    kind_routes.add_routes(app)  # GET /api/v1/kinds, read from the kinds registry
    query_routes.add_routes(app)
    tls_routes.add_routes(app)
    keyring_routes.add_routes(app)
    console.add_routes(app)  # the web console's static shell at /
    metrics_routes.install(app)  # GET /metrics and the per-response counter
    openapi.add_routes(app)  # GET /api/v1/openapi.json, built from the routes above
    return app


async def _store_lifecycle(app: web.Application) -> AsyncIterator[None]:
    path = Path(app[SETTINGS].server.state_dir) / state_dir.STORE_FILE
    store = await open_sqlite_store(path)
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _tls_lifecycle(app: web.Application) -> AsyncIterator[None]:
    tls = app[TLS]
    settings = app[SETTINGS]
    if settings.tls.mode == "acme" and tls.acme is None:
        await tls.open_acme(app[STORE], app[KEYRING], app[EGRESS],
                            audit=lambda: app.get(AUDIT),
                            check_interval=settings.tls.renew_check_interval,
                            has_http_listener=settings.server.http_listen is not None)
    if tls.info is None:
        tls.load_initial()
    task = asyncio.create_task(tls.maintain(), name="tls-maintenance")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
