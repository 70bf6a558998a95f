"""Stored queries: create, read, change and delete them (compiled when saved), and the cache of
compiled queries that runs use, invalidated on every change (here, or on another instance:
`follow`).

Owns the `queries` table and the two views of a query: the full one for developers, and
`id, name, description, parameters` for viewers (never the body). Never stores, logs or caches
a parameter value or a result.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from appliance.audit import AuditLog, Context
from appliance.datasources import DatasourceService
from appliance.datasources.config import LIMIT_MAXIMA, NAME_RE
from appliance.errors import Conflict, NotFound, Unprocessable
from appliance.kinds.registry import Template
from appliance.parameters import InvalidQuery
from appliance.queries.compile import compile_query

FIELDS: Final = frozenset({"name", "datasource_id", "body", "parameters", "timeout_ms",
                           "max_rows", "description"})
VIEWER_FIELDS: Final = ("id", "name", "description", "parameters")
MAX_DESCRIPTION: Final = 2000


class QueryNotFound(NotFound):
    code = "query_not_found"


@dataclass(frozen=True)
class CompiledQuery:
    """A stored query as runs use it: its template and limits (never any value)."""

    id: str
    name: str
    datasource_id: str
    kind: str
    template: Template
    timeout_ms: int | None
    max_rows: int | None
    version: int


def _limit(body: Mapping[str, Any], key: str, maximum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= maximum:
        raise InvalidQuery(f"'{key}' must be an integer from 1 to {maximum}", field=key)
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidQuery("'name' must be 1 to 100 characters: letters, digits, space, '_', "
                           "'.', '-', starting with a letter or digit", field="name")
    return value


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidQuery(f"'description' must be a string of at most {MAX_DESCRIPTION} "
                           f"characters", field="description")
    return value


class QueryService:
    def __init__(self, store: Any, datasources: DatasourceService, audit: AuditLog) -> None:
        self.store = store
        self.datasources = datasources
        self.audit = audit
        self._cache: dict[str, CompiledQuery] = {}
        self._generation = 0  # bumped on every change: a read that raced a change is not cached

    # --- views ----------------------------------------------------------------------------

    @staticmethod
    def view(row: Mapping[str, Any], *, full: bool) -> dict[str, Any]:
        stored = json.loads(row["body"])
        out = {"id": row["id"], "name": row["name"], "description": stored.get("description"),
               "parameters": json.loads(row["parameters"])}
        if not full:
            return out
        out.update({
            "datasource_id": row["datasource_id"],
            "body": stored["body"],
            "timeout_ms": row["timeout_ms"],
            "max_rows": row["max_rows"],
            "version": row["version"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        })
        return out

    async def _row(self, query_id: str, tx: Any = None) -> dict[str, Any]:
        reader = tx if tx is not None else self.store
        row = await reader.fetch_one("SELECT * FROM queries WHERE id = ?", (query_id,))
        if row is None:
            raise QueryNotFound("no such query")
        return dict(row)

    async def list(self, *, full: bool) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all("SELECT * FROM queries ORDER BY name")
        return [self.view(row, full=full) for row in rows]

    async def get(self, query_id: str, *, full: bool) -> dict[str, Any]:
        return self.view(await self._row(query_id), full=full)

    # --- changes --------------------------------------------------------------------------

    async def _compile(self, merged: Mapping[str, Any]) -> tuple[str, Template]:
        datasource_id = merged.get("datasource_id")
        if not isinstance(datasource_id, str):
            raise InvalidQuery("'datasource_id' must be the id of a datasource",
                               field="datasource_id")
        try:
            kind = await self.datasources.kind_of(datasource_id)
        except NotFound:
            raise Unprocessable("'datasource_id' names no datasource",
                                code="invalid_query", field="datasource_id") from None
        if "body" not in merged:
            raise InvalidQuery("'body' is missing", field="body")
        return kind, compile_query(kind, merged["body"], merged.get("parameters", []))

    def _columns(self, merged: Mapping[str, Any], template: Template) -> tuple[Any, ...]:
        return (
            _name(merged.get("name")),
            merged["datasource_id"],
            json.dumps({"body": merged["body"],
                        "description": _description(merged.get("description"))},
                       ensure_ascii=False, sort_keys=True),
            json.dumps(template.parameters.to_json(), ensure_ascii=False),
            _limit(merged, "timeout_ms", LIMIT_MAXIMA["statement_timeout_ms"]),
            _limit(merged, "max_rows", LIMIT_MAXIMA["max_rows"]),
        )

    async def create(self, body: Mapping[str, Any], context: Context) -> dict[str, Any]:
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise InvalidQuery(f"unknown field(s): {', '.join(k[:40] for k in unknown)}")
        _, template = await self._compile(body)
        columns = self._columns(body, template)
        query_id = "q_" + secrets.token_hex(8)
        now = time.time()
        async with self.store.transaction() as tx:
            await self._check_unique(tx, columns[0], None)
            await tx.execute(
                "INSERT INTO queries (id, name, datasource_id, body, parameters, timeout_ms, "
                "max_rows, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (query_id, *columns, now, now))
            await self.audit.record(tx, action="query.create", target=f"query:{query_id}",
                                    context=context, details={"name": columns[0],
                                                              "datasource": columns[1]})
        return await self.get(query_id, full=True)

    async def update(self, query_id: str, body: Mapping[str, Any],
                     context: Context) -> dict[str, Any]:
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise InvalidQuery(f"unknown field(s): {', '.join(k[:40] for k in unknown)}")
        row = await self._row(query_id)
        stored = json.loads(row["body"])
        merged: dict[str, Any] = {
            "name": row["name"], "datasource_id": row["datasource_id"], "body": stored["body"],
            "description": stored.get("description"),
            "parameters": json.loads(row["parameters"]),
            "timeout_ms": row["timeout_ms"], "max_rows": row["max_rows"],
        }
        merged.update(body)
        _, template = await self._compile(merged)
        columns = self._columns(merged, template)
        async with self.store.transaction() as tx:
            await self._row(query_id, tx)
            await self._check_unique(tx, columns[0], query_id)
            await tx.execute(
                "UPDATE queries SET name = ?, datasource_id = ?, body = ?, parameters = ?, "
                "timeout_ms = ?, max_rows = ?, version = version + 1, updated_at = ? "
                "WHERE id = ?", (*columns, time.time(), query_id))
            await self.audit.record(tx, action="query.update", target=f"query:{query_id}",
                                    context=context, details={"name": columns[0],
                                                              "fields": sorted(body)})
        self.forget(query_id)
        return await self.get(query_id, full=True)

    async def delete(self, query_id: str, context: Context) -> None:
        async with self.store.transaction() as tx:
            row = await self._row(query_id, tx)
            await tx.execute("DELETE FROM queries WHERE id = ?", (query_id,))
            await self.audit.record(tx, action="query.delete", target=f"query:{query_id}",
                                    context=context, details={"name": row["name"]})
        self.forget(query_id)

    async def _check_unique(self, tx: Any, name: str, own_id: str | None) -> None:
        found = await tx.fetch_one("SELECT id FROM queries WHERE name = ?", (name,))
        if found is not None and found["id"] != own_id:
            raise Conflict(f"a query named '{name}' exists", code="query_exists", field="name")

    # --- the run-time cache -------------------------------------------------------------------

    async def compiled(self, query_id: str) -> CompiledQuery:
        """The compiled query (cached; a change or delete drops the cache entry)."""
        found = self._cache.get(query_id)
        if found is not None:
            return found
        generation = self._generation
        row = await self._row(query_id)
        kind = await self.datasources.kind_of(str(row["datasource_id"]))
        stored = json.loads(row["body"])
        template = compile_query(kind, stored["body"], json.loads(row["parameters"]))
        compiled = CompiledQuery(id=str(row["id"]), name=str(row["name"]),
                                 datasource_id=str(row["datasource_id"]), kind=kind,
                                 template=template, timeout_ms=row["timeout_ms"],
                                 max_rows=row["max_rows"], version=int(row["version"]))
        if generation == self._generation:
            self._cache[query_id] = compiled
        return compiled

    async def follow(self) -> None:
        """Drop the compiled queries another instance (or a CLI verb) changed or deleted, with
        one query. A compilation under way meanwhile is used once, not cached."""
        self._generation += 1
        if not self._cache:
            return
        rows = await self.store.fetch_all("SELECT id, version FROM queries")
        current = {str(row["id"]): int(row["version"]) for row in rows}
        for query_id, compiled in list(self._cache.items()):
            if current.get(query_id) != compiled.version:
                self.forget(query_id)

    def forget(self, query_id: str) -> None:
        self._generation += 1
        self._cache.pop(query_id, None)
