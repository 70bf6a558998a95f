"""Stored queries: create, read, change and delete them (compiled when saved), and the cache of
compiled queries that runs use, invalidated on every change (here, or on another instance:
`follow`).

Owns the `queries` table and the two views of a query: the full one for developers, and
`id, name, description, parameters` for viewers (never the body); a query's `groups` (who may
see it: `appliance.groups`) are kept with it and in its compiled form, and the lists take a
filter over them. Never stores, logs or caches a parameter value or a result.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from appliance.audit import AuditLog, Context
from appliance.datasources import DatasourceService
from appliance.datasources.config import LIMIT_MAXIMA, NAME_RE
from appliance.errors import BadRequest, Conflict, NotFound, Unprocessable
from appliance.groups import check_groups
from appliance.kinds.registry import Template
from appliance.parameters import InvalidQuery
from appliance.queries.compile import compile_query
from appliance.queries.secret_findings import ALLOW_FIELD, SecretFindings, requested_allowances
from appliance.queries.secret_scan import Finding
from appliance.timestamps import rfc3339

FIELDS: Final = frozenset({"name", "datasource_id", "body", "parameters", "timeout_ms",
                           "max_rows", "description", "groups", ALLOW_FIELD})
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
    groups: tuple[str, ...] = ()  # who may see it (`appliance.groups`): () = every viewer


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


def _groups(value: Any) -> str:
    """The query's groups as stored: a sorted JSON list of kept names ([] = every viewer)."""
    try:
        names = check_groups([] if value is None else value)
    except BadRequest as exc:
        raise InvalidQuery(exc.message, field="groups") from None
    return json.dumps(list(names))


def groups_of(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(json.loads(row["groups"]))


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidQuery(f"'description' must be a string of at most {MAX_DESCRIPTION} "
                           f"characters", field="description")
    return value


def _via(details: dict[str, Any], via: str | None) -> dict[str, Any]:
    """An audit entry's details, with how the change came (`via: import`) when not the API."""
    if via is not None:
        details["via"] = via
    return details


class QueryService:
    def __init__(self, store: Any, datasources: DatasourceService, audit: AuditLog,
                 secret_findings: SecretFindings) -> None:
        self.store = store
        self.datasources = datasources
        self.audit = audit
        self.secret_findings = secret_findings
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
            "groups": list(groups_of(row)),
            "version": row["version"],
            "created_at": rfc3339(row["created_at"]),
            "updated_at": rfc3339(row["updated_at"]),
        })
        return out

    async def _row(self, query_id: str, tx: Any = None) -> dict[str, Any]:
        reader = tx if tx is not None else self.store
        row = await reader.fetch_one("SELECT * FROM queries WHERE id = ?", (query_id,))
        if row is None:
            raise QueryNotFound("no such query")
        return dict(row)

    async def list(self, *, full: bool,
                   shown: Callable[[tuple[str, ...]], bool] | None = None
                   ) -> list[dict[str, Any]]:
        """Every query, or those whose groups `shown` accepts."""
        rows = await self.store.fetch_all("SELECT * FROM queries ORDER BY name")
        return [self.view(row, full=full) for row in rows
                if shown is None or shown(groups_of(row))]

    async def get(self, query_id: str, *, full: bool) -> dict[str, Any]:
        return self.view(await self._row(query_id), full=full)

    async def groups(self, query_id: str) -> tuple[str, ...]:
        """The query's groups as stored now (one indexed point read, never the cache: a change
        here or on another instance counts from the next request); QueryNotFound if none."""
        row = await self.store.lookup("SELECT groups FROM queries WHERE id = ?", (query_id,))
        if row is None:
            raise QueryNotFound("no such query")
        return groups_of(row)

    # --- changes --------------------------------------------------------------------------

    async def _kind_of(self, merged: Mapping[str, Any], tx: Any) -> str:
        datasource_id = merged.get("datasource_id")
        if not isinstance(datasource_id, str):
            raise InvalidQuery("'datasource_id' must be the id of a datasource",
                               field="datasource_id")
        try:
            kind = await self.datasources.kind_of(datasource_id, tx)
        except NotFound:
            raise Unprocessable("'datasource_id' names no datasource",
                                code="invalid_query", field="datasource_id") from None
        return kind

    def check(self, kind: str, merged: Mapping[str, Any]) -> tuple[tuple[Any, ...], Template]:
        """Every check a saved query passes (API, console, import, and `import --dry-run`
        before anything is written): its fields, compile and binding check for `kind`. The
        secret scan at save time belongs here too. Returns the row's columns and the template."""
        self.check_fields(merged)
        if "body" not in merged:
            raise InvalidQuery("'body' is missing", field="body")
        template = compile_query(kind, merged["body"], merged.get("parameters", []))
        return self._columns(merged, template), template

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
            _groups(merged.get("groups")),
        )

    async def _scan(self, kind: str, merged: Mapping[str, Any]) -> Sequence[Finding]:
        """The secret findings of a query as it would be saved, in a thread (the loop keeps
        serving between the scan's GIL turns: a 1 MiB body takes up to about 0.3 s)."""
        return await asyncio.to_thread(self.secret_findings.scan, kind, merged["body"],
                                       merged.get("parameters", []), merged.get("description"))

    async def create(self, body: Mapping[str, Any], context: Context, *,
                     may_allow: bool = False) -> dict[str, Any]:
        """Create a query. A credential in it is refused (422 `secret_in_query`) unless an
        admin (`may_allow`) allows its finding in `allow_secret_findings`."""
        async with self.store.transaction() as tx:
            query_id = await self.create_in(tx, body, context, may_allow=may_allow)
        return await self.get(query_id, full=True)

    @staticmethod
    def check_fields(body: Mapping[str, Any]) -> None:
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise InvalidQuery(f"unknown field(s): {', '.join(k[:40] for k in unknown)}")

    async def create_in(self, tx: Any, body: Mapping[str, Any], context: Context, *,
                        query_id: str | None = None, via: str | None = None,
                        may_allow: bool = False) -> str:
        """Create a query inside the caller's transaction `tx` (an import: with the id its
        file names, and `via` in its audit entry); its id. Scanned for secrets like every
        save (the API, the console and imports alike)."""
        self.check_fields(body)
        requested = requested_allowances(body)
        kind = await self._kind_of(body, tx)
        columns, _ = self.check(kind, body)
        findings = await self._scan(kind, body)
        allowing = await self.secret_findings.check(tx, None, findings, requested,
                                                    may_allow=may_allow)
        query_id = query_id or "q_" + secrets.token_hex(8)
        now = time.time()
        await self._check_unique(tx, columns[0], None)
        await tx.execute(
            "INSERT INTO queries (id, name, datasource_id, body, parameters, timeout_ms, "
            "max_rows, groups, version, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (query_id, *columns, now, now))
        groups = json.loads(columns[6])
        await self.audit.record(tx, action="query.create", target=f"query:{query_id}",
                                context=context, details=_via({
                                    "name": columns[0], "datasource": columns[1],
                                    **({"groups": groups} if groups else {})}, via))
        await self.secret_findings.record(tx, query_id, allowing, context)
        return query_id

    async def update(self, query_id: str, body: Mapping[str, Any], context: Context, *,
                     may_allow: bool = False) -> dict[str, Any]:
        """Change a query; the whole query as it would be saved is scanned, as on create."""
        async with self.store.transaction() as tx:
            await self.update_in(tx, query_id, body, context, may_allow=may_allow)
        self.forget(query_id)
        return await self.get(query_id, full=True)

    async def update_in(self, tx: Any, query_id: str, body: Mapping[str, Any],
                        context: Context, *, via: str | None = None,
                        may_allow: bool = False) -> None:
        """Change a query inside the caller's transaction `tx` (the caller forgets its compiled
        form after the commit)."""
        self.check_fields(body)
        requested = requested_allowances(body)
        row = await self._row(query_id, tx)
        stored = json.loads(row["body"])
        merged: dict[str, Any] = {
            "name": row["name"], "datasource_id": row["datasource_id"], "body": stored["body"],
            "description": stored.get("description"),
            "parameters": json.loads(row["parameters"]),
            "timeout_ms": row["timeout_ms"], "max_rows": row["max_rows"],
            "groups": list(groups_of(row)),
        }
        merged.update(body)
        kind = await self._kind_of(merged, tx)
        columns, _ = self.check(kind, merged)
        findings = await self._scan(kind, merged)
        allowing = await self.secret_findings.check(tx, query_id, findings, requested,
                                                    may_allow=may_allow)
        await self._check_unique(tx, columns[0], query_id)
        await tx.execute(
            "UPDATE queries SET name = ?, datasource_id = ?, body = ?, parameters = ?, "
            "timeout_ms = ?, max_rows = ?, groups = ?, version = version + 1, updated_at = ? "
            "WHERE id = ?", (*columns, time.time(), query_id))
        details = _via({"name": columns[0], "fields": sorted(body)}, via)
        if columns[6] != row["groups"]:  # who may see it: from and to (names, no value)
            details["groups"] = {"from": list(groups_of(row)), "to": json.loads(columns[6])}
        await self.audit.record(tx, action="query.update", target=f"query:{query_id}",
                                context=context, details=details)
        await self.secret_findings.record(tx, query_id, allowing, context)

    async def delete(self, query_id: str, context: Context) -> None:
        async with self.store.transaction() as tx:
            await self.delete_in(tx, query_id, context)
        self.forget(query_id)

    async def delete_in(self, tx: Any, query_id: str, context: Context, *,
                        via: str | None = None) -> None:
        row = await self._row(query_id, tx)
        await tx.execute("DELETE FROM queries WHERE id = ?", (query_id,))
        await self.audit.record(tx, action="query.delete", target=f"query:{query_id}",
                                context=context, details=_via({"name": row["name"]}, via))

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
                                 max_rows=row["max_rows"], version=int(row["version"]),
                                 groups=groups_of(row))
        if generation == self._generation:
            self._cache[query_id] = compiled
        return compiled

    async def versions(self, tx: Any = None) -> dict[str, int]:
        """Every querie's id and version (an import's check that nothing moved since its
        plan was made)."""
        reader = tx if tx is not None else self.store
        rows = await reader.fetch_all("SELECT id, version FROM queries")
        return {str(row["id"]): int(row["version"]) for row in rows}

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
