"""`GET /metrics` (Prometheus text; an admin bearer token or a loopback client). The per-response
counter that feeds `appliance_http_requests` is kept by `middleware.front`.

Wires the application's parts into `appliance.metrics` sources; owns no metric itself. Never uses a
request path, a query string or a header value as a label.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from aiohttp import web

from appliance import metrics
from appliance.errors import Forbidden, Unauthorized
from appliance.http import access
from appliance.http.keys import AUTH, DATASOURCES, EGRESS, TLS

_SOURCES = web.AppKey("metrics_sources", metrics.Sources)


def install(app: web.Application) -> None:
    metrics.install_audit_counter()
    app[_SOURCES] = metrics.Sources(
        egress=lambda: app[EGRESS].counters.snapshot(),
        certificate_not_after=lambda: _not_after(app),
        pools=lambda: _pools(app),
    )
    app.router.add_get("/metrics", get_metrics)


def _not_after(app: web.Application) -> float | None:
    info = app[TLS].info
    return info.not_after.timestamp() if info is not None else None


def _pools(app: web.Application) -> Iterator[metrics.PoolSample]:
    service = app.get(DATASOURCES)
    for engine in service.open_engines() if service is not None else []:
        stats = engine.pool_stats()  # None: the driver does not say
        yield metrics.PoolSample(datasource=engine.target.name, kind=engine.target.kind,
                                 size=stats.size if stats is not None else None,
                                 idle=stats.idle if stats is not None else None)


def _loopback(remote: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@access.public  # checked here: a loopback client, or an admin's bearer token
async def get_metrics(request: web.Request) -> web.Response:
    if not _loopback(request.remote):  # a loopback client is trusted, token or not
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("metrics need an admin bearer token (or a loopback client)",
                               code="unauthenticated")
        found = await request.app[AUTH].authenticate_bearer(value.strip())
        if found is None:
            raise Unauthorized("invalid, expired or revoked token", code="invalid_token")
        if not found.at_least("admin"):
            raise Forbidden("metrics need the admin role", code="forbidden_role")
    body = metrics.exposition(request.app[_SOURCES])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
