"""The middleware every request passes: request id and access log, errors as JSON, limits, headers,
and the request metrics (duration by route and status class, in flight).

The access log records method, route, status, duration, client address (`client_address`), the
user's name and the query id of a query route: never bodies, query-string values, parameter
values, tokens, or the values of `Authorization`, `Cookie` and `Set-Cookie`. A failure is logged
with its type and the request id; its message only when it is one of our own errors
(`ApplianceError`, whose messages never hold a value).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict

from appliance import deadlines, metrics
from appliance.errors import ApplianceError, PayloadTooLarge, UpstreamTimeout
from appliance.http import access, client_address
from appliance.http.app_keys import REQUEST_ID, SETTINGS

log = logging.getLogger("appliance.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def error_body(exc: ApplianceError) -> dict[str, Any]:
    """`{"error": {"code", "message", "field"?, "line"?, "column"?}}`: the envelope of every
    error the API answers (and an NDJSON stream's last line when a run fails midway). The
    optional members appear only when the error has them."""
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.field is not None:
        error["field"] = exc.field
    if exc.line is not None:
        error["line"] = exc.line
        if exc.column is not None:
            error["column"] = exc.column
    error.update(exc.members())
    return {"error": error}


# Request ids: a random prefix for this process, then a counter (unique, and distinct across
# restarts, without a random draw per request).
_REQUEST_PREFIX = secrets.token_hex(4)
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    return f"{_REQUEST_PREFIX}{next(_request_numbers):08x}"


Guard = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def front(guard: Guard | None = None) -> Middleware:
    """The one middleware every request passes (one layer, not one per concern: each layer costs
    every request): a request id, the body-size limit and the request timer, then `guard` (the
    access checks) and the handler; every failure as JSON; security headers; one access-log
    line and the request counter."""

    @web.middleware
    async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = new_request_id()
        request[REQUEST_ID] = request_id
        started = time.perf_counter()
        status = 500
        metrics.request_started()
        try:
            settings = request.app[SETTINGS]
            proxies = settings.server.trusted_proxies
            if proxies:  # without the setting, forwarded headers are never read
                request[client_address.CLIENT] = client_address.choose(
                    request.remote, request.headers.getall("X-Forwarded-For", ()), proxies)
            try:
                limit = settings.server.max_body_bytes
                length = request.content_length
                if length is not None and length > limit:
                    raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
                with deadlines.limit(settings.server.request_timeout):
                    if guard is None:
                        response = await handler(request)
                    else:
                        response = await guard(request, handler)
            except Exception as exc:  # not CancelledError: a BaseException, it propagates
                response = _failure(request, exc)
            if not response.prepared:  # a stream sets its headers itself (`secure`)
                secure(request, response, dev=settings.dev, request_id=request_id)
            status = response.status
            metrics.observe_request(request.method, _route_label(request), status,
                                    time.perf_counter() - started)
            return response
        finally:
            metrics.request_ended()
            if log.isEnabledFor(logging.INFO):
                _log_request(request, request_id, status, started)

    return front_middleware


# A query id as the store makes them (`queries.service`): only such an id is logged, never
# whatever else a client wrote in its place in the path.
_QUERY_ID = re.compile(r"q_[0-9a-f]{16}")
_QUERY_ROUTE = "/api/v1/queries/{id}"


def _log_request(request: web.Request, request_id: str, status: int, started: float) -> None:
    route = request.match_info.route.resource
    canonical = route.canonical if route is not None else "<unmatched>"
    extra: dict[str, Any] = {
        "request_id": request_id,
        "method": request.method,
        "route": canonical,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "client": client_address.of(request),
    }
    found = access.principal(request)
    if found is not None:
        extra["user"] = found.username  # the name only: never the session or the token
        if found.via == "token":
            extra["token_id"] = found.credential_id  # the token's id, not its secret
    if canonical.startswith(_QUERY_ROUTE):
        query_id = request.match_info.get("id", "")
        if _QUERY_ID.fullmatch(query_id):
            extra["query_id"] = query_id
    log.info("request", extra=extra)


def _route_label(request: web.Request) -> str:
    """The route's pattern for the request counter: never the path itself."""
    match_info = request.match_info
    resource = match_info.route.resource
    if match_info.http_exception is not None or resource is None:
        return "(unmatched)"
    return resource.canonical


def _failure(request: web.Request, exc: Exception) -> web.Response:
    """The error envelope (`error_body`) with the right status, for what a handler raised."""
    if isinstance(exc, ApplianceError):
        if exc.status >= 500:  # our own message: written for the client, never holds a value
            log.warning("request failed", extra={
                "request_id": request.get(REQUEST_ID), "code": exc.code,
                "exception": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "error": exc.message})
        response = web.json_response(error_body(exc), status=exc.status)
        response.headers.update(exc.response_headers())
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:  # a redirect and the like, as it is
            return web.Response(status=exc.status, headers=exc.headers, body=exc.body)
        code = _STATUS_CODES.get(exc.status, "error")
        message = {
            404: "no such path",
            405: f"method {request.method} is not allowed here",
            413: f"the request body is larger than {request.app[SETTINGS].server.max_body_bytes}"
                 " bytes",
        }.get(exc.status, exc.reason)
        response = error_response(exc.status, code, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if isinstance(exc, TimeoutError):
        return error_response(UpstreamTimeout.status, "request_timeout",
                              "the request took too long and was stopped")
    # Its type and the request id, never its message: a driver's or the runtime's message may
    # quote data from the request (a value, a row, a secret).
    log.error(
        "unhandled error",
        extra={"request_id": request.get(REQUEST_ID),
               "exception": f"{type(exc).__module__}.{type(exc).__qualname__}"},
    )
    return error_response(500, "internal_error",
                          f"internal error (request id {request.get(REQUEST_ID)})")


_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_HSTS = "max-age=63072000; includeSubDomains"


def secure(request: web.Request, response: web.StreamResponse, *,
           dev: bool | None = None, request_id: str | None = None) -> None:
    """Headers on every response, errors and streams included: `front` sets them on what a
    handler returns; a handler that prepares its response itself calls this first. A header the
    handler set itself is kept (the console's pages have their own policy). `dev` and
    `request_id`: the settings' flag and the request's id, when the caller has them at hand."""
    headers = response.headers
    api = request.path.startswith("/api/")
    hsts = not (request.app[SETTINGS].dev if dev is None else dev)
    if request_id is None:
        request_id = request.get(REQUEST_ID, "")
    if len(headers) == 1 and "Content-Type" in headers:
        # What most handlers return (a body and its type): every header added in one step.
        headers.extend(_ALL_HEADERS[api, hsts])
        headers["X-Request-Id"] = request_id
        return
    headers["Server"] = "appliance"
    headers.setdefault("X-Request-Id", request_id)
    for name, value in _SECURITY_HEADERS:
        headers.setdefault(name, value)
    if api:
        headers.setdefault("Cache-Control", "no-store")
    if hsts:
        headers.setdefault("Strict-Transport-Security", _HSTS)


# (an /api/ path, HSTS): the headers `secure` adds to a response that has none of them (a
# multidict: extending one from another skips folding each name's case again).
_ALL_HEADERS = {
    (api, hsts): CIMultiDict((("Server", "appliance"), *_SECURITY_HEADERS,
                              *((("Cache-Control", "no-store"),) if api else ()),
                              *((("Strict-Transport-Security", _HSTS),) if hsts else ())))
    for api in (False, True) for hsts in (False, True)
}
