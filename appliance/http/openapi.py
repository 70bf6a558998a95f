"""The OpenAPI 3.1 description served at `/api/v1/openapi.json`, built from the live router.

Every route appears with the role it declares (`x-required-role`); request bodies of the public
interface are described here. Never includes examples with real data.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.datasources.config import LIMIT_DEFAULTS
from appliance.http import access
from appliance.kinds import BODY_LANGUAGES, Kind, all_kinds

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable"},
                "message": {"type": "string", "description": "human text; never a secret, a "
                            "parameter value or a result"},
                "field": {
                    "type": "string",
                    "description": "the input the error is about, when there is one: a "
                                   "request body key (name, kind, datasource_id, description, "
                                   "timeout_ms, max_rows, username, password, ...); a "
                                   "datasource's config.<key> or secrets.<key>, or config / "
                                   "secrets as a whole; body (a query's body); parameters (a "
                                   "query's declarations), parameters[<i>] (the i-th, from 0) "
                                   "or parameters[<i>].<key> (name, type, required, default, "
                                   "choices, description); on a run, param.<name> (one "
                                   "parameter's value) or params (the values as a whole). "
                                   "Names only, never a value; a viewer's run errors name at "
                                   "most a parameter.",
                },
                "line": {"type": "integer", "minimum": 1,
                         "description": "with field body: the line in the query's SQL text "
                                        "(1-based)"},
                "column": {"type": "integer", "minimum": 1,
                           "description": "with line: the column, in characters (1-based)"},
                "findings": {
                    "type": "array",
                    "description": "with code secret_in_query: each credential found in the "
                                   "query (rule, title, field, place, line?, column?, hint, "
                                   "fingerprint); never the text itself",
                    "items": {"type": "object"},
                },
            },
        }
    },
}

_STR = {"type": "string"}
_STR_LIST = {"type": "array", "items": _STR}

_PARAMETER = {
    "type": "object",
    "required": ["name", "type"],
    "properties": {
        "name": _STR,
        "type": {
            "type": "string",
            "description": "string, integer, number, boolean, date, datetime, json, identifier, "
                           "or array<T> of a scalar type",
        },
        "required": {"type": "boolean"},
        "default": {},
        "choices": {"type": "array"},
    },
}



def _config_description() -> str:
    """Each kind's config keys (GET /api/v1/kinds describes them in full), then the limits."""
    kinds = "; ".join(f"{kind.name}: {', '.join(field.name for field in kind.fields)}"
                      for kind in all_kinds())
    return (f"{kinds}; every kind: {', '.join(LIMIT_DEFAULTS)} (GET /api/v1/kinds describes "
            "each kind's keys)")


def _secret_names() -> list[str]:
    names: dict[str, None] = {}
    for kind in all_kinds():
        names.update(dict.fromkeys(secret.name for secret in kind.secrets))
    return list(names)


def _destination_description() -> str:
    def shown(kind: Kind) -> str:
        return ", ".join(("origin of " if field.destination == "origin" else "") + field.name
                         for field in kind.fields if field.destination)

    return "; ".join(f"{kind.name}: {shown(kind)}" for kind in all_kinds())


# Request bodies of the public interface (PRODUCT.md), by (method, path).
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/session"): {
        "type": "object",
        "required": ["username", "password"],
        "properties": {"username": _STR, "password": _STR, "totp": _STR},
    },
    ("POST", "/api/v1/datasources"): {
        "type": "object",
        "required": ["name", "kind", "config"],
        "properties": {
            "name": _STR,
            "kind": {"enum": [kind.name for kind in all_kinds()]},
            "config": {"type": "object", "description": _config_description()},
            "secrets": {"type": "object", "description": "write-only: "
                        f"{', '.join(_secret_names())}; responses show {{\"set\": true}}"},
        },
    },
    ("PATCH", "/api/v1/datasources/{id}"): {
        "type": "object",
        "description": f"A change of the destination ({_destination_description()}) "
                       "without every set secret entered again (or cleared) is 409 "
                       "secrets_required: secrets are sealed for their destination.",
        "properties": {"name": _STR, "config": {"type": "object"},
                       "secrets": {"type": "object", "description": "a value replaces the "
                                   "secret, null clears it"}},
    },
    ("POST", "/api/v1/queries"): {
        "type": "object",
        "required": ["name", "datasource_id", "body"],
        "properties": {
            "name": _STR,
            "datasource_id": _STR,
            "body": {"description": "SQL text with {{ name }} bindings; REST: {method, path, "
                     "query, headers, json}; MongoDB: {collection, operation, ...}"},
            "parameters": {"type": "array", "items": _PARAMETER},
            "timeout_ms": {"type": "integer"},
            "max_rows": {"type": "integer"},
            "allow_secret_findings": {
                "type": "array", "items": _STR,
                "description": "admin only: fingerprints of secret_in_query findings to allow "
                               "as false positives for this query (audited)"},
        },
    },
    ("POST", "/api/v1/queries/{id}/run"): {
        "type": "object",
        "properties": {"params": {"type": "object"}},
    },
    ("PUT", "/api/v1/egress"): {
        "type": "object",
        "properties": {
            "source_address": _STR_LIST,
            "mode": {"enum": ["default", "strict"]},
            "allow": _STR_LIST,
            "deny": _STR_LIST,
            "allow_private": {"type": "boolean"},
        },
    },
    ("POST", "/api/v1/egress/probe"): {
        "type": "object",
        "required": ["host", "port"],
        "properties": {"host": _STR, "port": {"type": "integer"}},
    },
}

# Answers of the read-only descriptions the console draws from, by (method, path).
RESPONSE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/roles"): {
        "type": "object",
        "required": ["roles", "routes"],
        "properties": {"roles": {"type": "array", "items": _STR,
                                 "description": "the role names, lowest first: each role may "
                                                "what the roles before it may"},
                       "routes": {"type": "object", "additionalProperties": _STR,
                                  "description": "every signed-in route, as \"METHOD /path\", "
                                                 "with the least role that may call it"}},
    },
    ("GET", "/api/v1/kinds"): {
        "type": "object",
        "required": ["kinds"],
        "properties": {"kinds": {"type": "array", "description": "in the order offered", "items": {
            "type": "object",
            "required": ["name", "title", "where", "body", "fields", "secrets"],
            "properties": {
                "name": _STR, "title": _STR,
                "where": {"type": "string", "description": "where a datasource points, as a "
                          "format over its config keys: {key} stands for config[key] "
                          "(nothing when absent), e.g. {host}:{port}/{database}"},
                "body": {"enum": list(BODY_LANGUAGES), "description": "a query's body: SQL text, "
                         "or a JSON value"},
                "fields": {"type": "array", "items": {"type": "object"}},
                "secrets": {"type": "array", "items": {"type": "object"}},
            },
        }}},
    },
}

_RUN_RESULT = {
    "type": "object",
    "properties": {
        "columns": _STR_LIST,
        "rows": {"type": "array", "items": {"type": "array"}},
        "row_count": {"type": "integer"},
        "truncated": {"type": "boolean"},
        "duration_ms": {"type": "number"},
    },
}


def build_spec(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        method = route.method.upper()
        if method in ("HEAD", "*") or route.resource is None:
            continue
        path = route.resource.canonical
        if not path.startswith(("/api/", "/healthz", "/readyz", "/metrics")):
            continue
        rule = access.rule_of(route)
        operation: dict[str, Any] = {
            "summary": _summary(route.handler, method, path),
            "x-required-role": rule.role if rule else None,
            "responses": {
                "default": {"description": "error",
                            "content": {"application/json": {"schema": _ERROR}}},
            },
        }
        if rule is not None and rule.role != "public":
            operation["security"] = [{"session": []}, {"bearer": []}]
        else:
            operation["security"] = []
        params = re.findall(r"{(\w+)}", path)
        if params:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": _STR} for name in params
            ]
        body = REQUEST_BODIES.get((method, path))
        if body is not None:
            operation["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": body}}
            }
        ok: dict[str, Any] = {"description": "success"}
        if path.endswith("/run") and method == "POST":
            ok["content"] = {
                "application/json": {"schema": _RUN_RESULT},
                "application/x-ndjson": {"schema": {
                    "description": "a header line {columns}, then one JSON array per row"}},
                "text/csv": {"schema": {
                    "description": "RFC 4180 with a header row, streamed; a text value a "
                                   "spreadsheet would run as a formula starts with ' "
                                   "(docs/queries.md, Results as CSV)"}},
            }
        answer = RESPONSE_BODIES.get((method, path))
        if answer is not None:
            ok["content"] = {"application/json": {"schema": answer}}
        operation["responses"]["2XX"] = ok
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Appliance API", "version": __version__,
                 "description": "Errors are always {\"error\": {\"code\", \"message\"}}, "
                                "with \"field\", \"line\" and \"column\" when the error "
                                "is about one input (see the Error schema). "
                                "Cookie-authenticated state-changing requests need a matching "
                                "Origin and the header X-Appliance-CSRF: 1."},
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie",
                            "name": "__Host-appliance-session"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {"Error": _ERROR},
        },
        "paths": dict(sorted(paths.items())),
    }


def _summary(handler: Any, method: str, path: str) -> str:
    doc = inspect.getdoc(handler) or ""
    return doc.splitlines()[0] if doc else f"{method} {path}"


_SPEC = web.AppKey("openapi_spec", dict)


@access.public
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI description of this API."""
    return web.json_response(request.app[_SPEC])


async def _build_on_startup(app: web.Application) -> None:
    app[_SPEC] = build_spec(app)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.on_startup.append(_build_on_startup)
