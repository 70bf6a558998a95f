"""HTTP routes for stored queries and running them (JSON; NDJSON or CSV streamed with bounded
memory, as the `Accept` header asks).

Thin handlers: parse, authorise (declared with `access`), call the service, serialise. A viewer
gets `id, name, description, parameters` of a query and error messages that hold nothing of the
query's body or its datasource's configuration. There is no client-supplied mode flag: what a
caller sees follows from their role alone. Never logs a parameter value or a row.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance import groups
from appliance.errors import ApplianceError, BadRequest
from appliance.http import access, middleware
from appliance.http.app_keys import CORE
from appliance.http.json_body import read_object
from appliance.queries import QueryNotFound, Run, result_csv
from appliance.queries.result_json import dumps
from appliance.queries.run import CSV

JSON = "application/json"
NDJSON = "application/x-ndjson"
_OFFERED = (JSON, NDJSON, result_csv.MEDIA_TYPE)
# Errors a viewer sees as they are: about their own input, or the query's existence.
_VIEWER_VISIBLE = frozenset({"invalid_parameter", "query_not_found", "bad_request",
                             "malformed_json", "unsupported_media_type", "payload_too_large",
                             "audit_unavailable", "request_timeout"})


def _is_developer(request: web.Request) -> bool:
    return access.require_principal(request).at_least("developer")


async def _check_visible(request: web.Request, query_id: str) -> None:
    """A query the caller may not see is answered exactly as one that does not exist (404,
    the same error): its name, even its existence, is not revealed. Developers and admins see
    every query (no store read); a viewer's check reads the query's groups and, when it has
    some, the viewer's membership (one indexed point read each), never a cache."""
    found = access.require_principal(request)
    if groups.sees_every_query(found):
        return
    core = request.app[CORE]
    wanted = await core.queries.groups(query_id)
    if wanted and not await core.auth.groups.may_see(found, wanted):
        raise QueryNotFound("no such query")


@access.viewer
async def list_queries(request: web.Request) -> web.Response:
    found = access.require_principal(request)
    core = request.app[CORE]
    if groups.sees_every_query(found):
        return web.json_response({"queries": await core.queries.list(full=True)})
    member_of = frozenset(await core.auth.groups.of(found.user_id))
    listed = await core.queries.list(
        full=False, shown=lambda wanted: groups.visible(wanted, member_of))
    return web.json_response({"queries": listed})


def _is_admin(request: web.Request) -> bool:
    return access.require_principal(request).at_least("admin")


@access.developer
async def create_query(request: web.Request) -> web.Response:
    body = await read_object(request)
    created = await request.app[CORE].queries.create(body, access.context(request),
                                                     may_allow=_is_admin(request))
    return web.json_response(created, status=201)


@access.viewer
async def get_query(request: web.Request) -> web.Response:
    query_id = request.match_info["id"]
    await _check_visible(request, query_id)
    found = await request.app[CORE].queries.get(query_id, full=_is_developer(request))
    return web.json_response(found)


@access.developer
async def update_query(request: web.Request) -> web.Response:
    body = await read_object(request)
    updated = await request.app[CORE].queries.update(request.match_info["id"], body,
                                                     access.context(request),
                                                     may_allow=_is_admin(request))
    return web.json_response(updated)


@access.admin
async def list_secret_findings(request: web.Request) -> web.Response:
    found = await request.app[CORE].queries.secret_findings.stored()
    return web.json_response({"findings": [finding.to_json() for finding in found]})


@access.admin
async def allow_secret_finding(request: web.Request) -> web.Response:
    allowed = await request.app[CORE].queries.secret_findings.allow(
        request.match_info["id"], request.match_info["fingerprint"], access.context(request))
    return web.json_response(allowed)


@access.admin
async def withdraw_secret_finding(request: web.Request) -> web.Response:
    """Withdraw an allowance: the finding counts again (doctor, the next save)."""
    withdrawn = await request.app[CORE].queries.secret_findings.withdraw(
        request.match_info["id"], request.match_info["fingerprint"], access.context(request))
    return web.json_response(withdrawn)


@access.developer
async def delete_query(request: web.Request) -> web.Response:
    await request.app[CORE].queries.delete(request.match_info["id"], access.context(request))
    return web.Response(status=204)


def _about_viewer_input(exc: ApplianceError) -> bool:
    """Whether the error points at nothing but the viewer's own input: no place in the body, and
    a field that is one run parameter (`param.<name>`), the run's values (`params`) or none."""
    field = exc.field
    return exc.line is None and exc.column is None and (
        field is None or field == "params" or field.startswith("param."))


def for_viewer(exc: ApplianceError) -> ApplianceError:
    """The same status and code with a message that shows nothing of the query or datasource
    configuration (driver messages can quote the statement; egress errors name the host), and
    a field only when it names the viewer's own input."""
    if exc.code in _VIEWER_VISIBLE:
        if _about_viewer_input(exc):
            return exc
        safe = ApplianceError(exc.message, code=exc.code)
        safe.status = exc.status
        return safe
    datasource = getattr(exc, "datasource", None)
    where = f"datasource '{datasource}'" if datasource else "its datasource"
    if exc.code == "query_failed":
        state = getattr(exc, "state", "")
        message = f"the query failed on {where}" + (f" ({state})" if state else "")
    elif exc.status == 504:
        message = f"{where} did not answer in time"
    elif exc.status == 403:
        message = f"{where} may not be reached (refused by the egress policy)"
    elif exc.status >= 500:
        message = f"the query could not be run: {where} is unavailable"
    else:
        message = "the query could not be run"
    safe = ApplianceError(message, code=exc.code)
    safe.status = exc.status
    return safe


def _params(body: dict[str, Any]) -> Any:
    """The run body's `params` (an object, or null): the body takes nothing else."""
    if len(body) > 1 or (body and "params" not in body):
        raise BadRequest("the run body takes only 'params'", code="bad_field")
    params = body.get("params", {})
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'params' must be an object", code="bad_field", field="params")
    return params


def negotiate(accept: str) -> str:
    """The run's answer type for an `Accept` header: the offered type (JSON, NDJSON, CSV) with
    the highest q, the first listed on a tie; JSON when none is named (`*/*`, empty, other)."""
    best, best_q = JSON, 0.0
    for part in accept.split(","):
        media, _, rest = part.partition(";")
        media = media.strip().lower()
        if media not in _OFFERED:
            continue
        q = 1.0
        for option in rest.split(";"):
            key, _, value = option.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if 0.0 < q <= 1.0 and q > best_q:
            best, best_q = media, q
    return best


def _summary(run: Run) -> dict[str, Any]:
    return {"row_count": run.row_count, "truncated": run.truncated,
            "duration_ms": run.duration_ms}


@access.viewer
async def run_query(request: web.Request) -> web.StreamResponse:
    try:
        await _check_visible(request, request.match_info["id"])
        params = _params(await read_object(request)) if request.body_exists else {}
        wanted = negotiate(request.headers.get("Accept", ""))
        if wanted == NDJSON:
            return await _stream(request, params)
        if wanted == result_csv.MEDIA_TYPE:
            return await _stream_csv(request, params)
        run = await request.app[CORE].runner.run_buffered(request.match_info["id"], params,
                                                          context=access.context(request))
        body = b"".join((
            b'{"columns":', dumps(run.columns).encode(), b',"rows":[', b",".join(run.rows),
            b'],"row_count":', str(run.row_count).encode(),
            b',"truncated":', b"true" if run.truncated else b"false",
            b',"duration_ms":', str(run.duration_ms).encode(), b"}"))
        return web.Response(body=body, content_type="application/json", charset="utf-8")
    except ApplianceError as exc:
        raise exc if _is_developer(request) else for_viewer(exc) from None


async def _stream(request: web.Request, params: Any) -> web.StreamResponse:
    """A header line `{"columns": [...]}`, one JSON array per row, then a summary object
    (`row_count, truncated, duration_ms`) or `{"error": {...}}` if the run failed midway."""
    developer = _is_developer(request)
    response = web.StreamResponse(headers={"Content-Type": f"{NDJSON}; charset=utf-8"})
    middleware.secure(request, response)  # prepared here, before `front` sees it
    failure: ApplianceError | None = None
    started = False
    try:
        async with request.app[CORE].runner.run_streamed(request.match_info["id"], params,
                                                         context=access.context(request)) as run:
            await response.prepare(request)
            started = True
            await response.write(dumps({"columns": run.columns}).encode() + b"\n")
            async for batch in run.encoded_batches():
                await response.write(b"\n".join(batch) + b"\n")
    except ApplianceError as exc:
        if not started:
            raise
        failure = exc if developer else for_viewer(exc)
    if failure is not None:
        await response.write(dumps(middleware.error_body(failure)).encode() + b"\n")
    else:
        await response.write(dumps(_summary(run)).encode() + b"\n")
    await response.write_eof()
    return response


async def _stream_csv(request: web.Request, params: Any) -> web.StreamResponse:
    """The rows as CSV (`result_csv`), written as they are read, as a download named after the
    query. `X-Appliance-Row-Limit` says the run's effective row limit before the first row (a
    CSV has no place for "truncated": a file of exactly that many rows may have been cut).

    A run that fails after the first bytes were sent has no way to say so inside a CSV: the
    connection is then closed before the chunked body's end, so every HTTP client reports an
    incomplete transfer (curl: exit 18; a browser: a failed download) instead of handing over a
    file that looks whole. The run's audit entry records the failure."""
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
    middleware.secure(request, response)  # prepared here, before `front` sees it
    started = False
    try:
        async with request.app[CORE].runner.run_streamed(request.match_info["id"], params,
                                                         context=access.context(request),
                                                         mode=CSV) as run:
            name = result_csv.filename(run.query.name)
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
            response.headers["X-Appliance-Row-Limit"] = str(run.max_rows)
            await response.prepare(request)
            started = True
            await response.write(result_csv.header(run.columns))
            async for batch in run.encoded_batches():
                await response.write(result_csv.rows(batch))
    except ApplianceError:
        if not started:
            raise
        _abort(request)
        return response
    await response.write_eof()
    return response


def _abort(request: web.Request) -> None:
    """Close the connection now, mid-body: the client sees an incomplete transfer."""
    if request.transport is not None:
        request.transport.abort()


def add_routes(app: web.Application) -> None:
    router = app.router
    # The run route first: aiohttp tries the routes under /api/v1/queries in the order they were
    # added, and a run (the hot path) then matches the first it tries.
    router.add_post("/api/v1/queries/{id}/run", run_query)
    router.add_get("/api/v1/queries", list_queries)
    router.add_post("/api/v1/queries", create_query)
    # Before /api/v1/queries/{id}, which would take "secret-findings" for an id.
    router.add_get("/api/v1/queries/secret-findings", list_secret_findings)
    router.add_post("/api/v1/queries/{id}/secret-findings/{fingerprint}/allow",
                    allow_secret_finding)
    router.add_delete("/api/v1/queries/{id}/secret-findings/{fingerprint}/allow",
                      withdraw_secret_finding)
    router.add_get("/api/v1/queries/{id}", get_query)
    router.add_patch("/api/v1/queries/{id}", update_query)
    router.add_delete("/api/v1/queries/{id}", delete_query)
