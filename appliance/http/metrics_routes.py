"""`GET /metrics` (Prometheus text): a bearer token with the `metrics` scope, or a client address
listed in `[metrics] allow` (empty by default: loopback is not trusted by itself). The
per-response counter that feeds `appliance_http_requests` is kept by `middleware.front`.

Wires the application's parts into `appliance.metrics` sources; owns no metric itself. Never uses a
request path, a query string or a header value as a label, and labels datasources by id unless
`[metrics] datasource_names` says otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

from aiohttp import web

from appliance import __version__, build_info, metrics
from appliance.auth.tokens import METRICS
from appliance.errors import Forbidden, Unauthorized
from appliance.http import access, client_address
from appliance.http.app_keys import CORE, SETTINGS
from appliance.settings import Network

_SOURCES = web.AppKey("metrics_sources", metrics.Sources)
_BUILD = web.AppKey("metrics_build", tuple[str, str, str])


def add_routes(app: web.Application) -> None:
    metrics.install_audit_counter()
    app[_SOURCES] = metrics.Sources(
        egress=lambda: app[CORE].egress.counters.snapshot(),
        certificate_not_after=lambda: _not_after(app),
        pools=lambda: _pools(app),
        tls=lambda: _tls_times(app),
        datasource_labels=lambda: _datasource_names(app),
    )
    app[_BUILD] = metrics.build_labels(__version__, _commit())
    app.router.add_get("/metrics", get_metrics)


def _not_after(app: web.Application) -> float | None:
    core = app.get(CORE)
    info = core.tls.info if core is not None else None
    return info.not_after.timestamp() if info is not None else None


@functools.cache
def _commit() -> str:
    """The build's commit, read once per process (it may run `git`), at start."""
    return build_info.commit()


def _tls_times(app: web.Application) -> metrics.TLSTimes:
    core = app.get(CORE)
    if core is None:
        return metrics.TLSTimes()
    _, next_renewal, last_success = core.tls.times()
    return metrics.TLSTimes(
        next_renewal=next_renewal.timestamp() if next_renewal is not None else None,
        acme_last_success=last_success.timestamp() if last_success is not None else None)


def _datasource_names(app: web.Application) -> dict[str, str]:
    """With `[metrics] datasource_names`: the names of the datasources whose engines are open
    (a datasource not opened since the start is labelled by its id)."""
    core = app.get(CORE)
    if core is None or not app[SETTINGS].metrics.datasource_names:
        return {}
    return {engine.target.id: engine.target.name for engine in core.open_engines()}


def _pools(app: web.Application) -> Iterator[metrics.PoolSample]:
    core = app.get(CORE)
    by_name = app[SETTINGS].metrics.datasource_names
    for engine in core.open_engines() if core is not None else []:
        stats = engine.pool_stats()  # None: the driver does not say
        target = engine.target
        yield metrics.PoolSample(datasource=target.name if by_name else target.id,
                                 kind=target.kind,
                                 size=stats.size if stats is not None else None,
                                 idle=stats.idle if stats is not None else None,
                                 waiting=stats.waiting if stats is not None else None,
                                 waits=stats.waits if stats is not None else None)


def allowed(client: str, allow: Sequence[Network]) -> bool:
    """True when the client address is in one of the `[metrics] allow` networks."""
    return client_address.in_networks(client, allow)


@access.public  # checked here: a listed client address, or a metrics-scoped bearer token
async def get_metrics(request: web.Request) -> web.Response:
    if not allowed(client_address.of(request), request.app[SETTINGS].metrics.allow):
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("metrics need a bearer token with the metrics scope "
                               "(appliance tokens create NAME --scope metrics)",
                               code="unauthenticated")
        found = await request.app[CORE].auth.authenticate_bearer(value.strip(), METRICS)
        if found is None:
            raise Unauthorized("invalid, expired or revoked token, or not a metrics token "
                               "(appliance tokens create NAME --scope metrics)",
                               code="invalid_token")
        if not found.at_least("admin"):  # the owner is no longer an admin
            raise Forbidden("a metrics token's owner must be an admin", code="forbidden_role")
    body = metrics.exposition(request.app[_SOURCES], request.app[_BUILD])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
