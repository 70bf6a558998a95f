"""Secret findings of stored queries: the refusal at save time (422 `secret_in_query`), the
false positives an admin allowed (the `query_secret_allowances` table), and the findings of every
stored query (the admin API and `appliance doctor`).

Owns the `query_secret_allowances` table and the allowance rule: only an admin allows or
withdraws an allowance, one finding of one query at a time, audited with the rule and the
place. Never stores, logs, audits or answers the matched text: findings carry a place, a rule,
a hint and a keyed fingerprint.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from appliance.audit import AuditLog, Context
from appliance.errors import Forbidden, NotFound, Unprocessable
from appliance.keyring.sources import InstanceSecret
from appliance.keyring.unseal import open_root, read_slots
from appliance.kinds.registry import kind_named
from appliance.queries.secret_scan import (
    FINGERPRINT_CHARS,
    UNALLOWABLE,
    Finding,
    fingerprint_key,
    scan_query,
)

ALLOW_FIELD: Final = "allow_secret_findings"
ALLOWANCES_SCHEMA: Final = 14  # the store migration that made query_secret_allowances
MAX_ALLOW: Final = 100
_FINGERPRINT_RE: Final = re.compile(f"[0-9a-f]{{{FINGERPRINT_CHARS}}}")


class SecretInQuery(Unprocessable):
    """A query holds a credential: refused, naming where (never what)."""

    code = "secret_in_query"

    def __init__(self, findings: Sequence[Finding]) -> None:
        first = findings[0]
        more = len(findings) - 1
        message = f"{first.describe()} is written in the query; {first.advice}"
        if more:
            message += f" ({more} more finding{'s' if more > 1 else ''}: see 'findings')"
        message += (". A false positive: an admin can allow it by its fingerprint "
                    f"('{ALLOW_FIELD}' on save)")
        super().__init__(message, field=first.field, line=first.line, column=first.column)
        self.findings = tuple(findings)

    def members(self) -> dict[str, Any]:
        return {"findings": [finding.to_json() for finding in self.findings]}


class AllowNeedsAdmin(Forbidden):
    code = "admin_required"


class FindingNotFound(NotFound):
    code = "secret_finding_not_found"


class AllowanceNotFound(NotFound):
    code = "secret_allowance_not_found"


def body_language(kind: str) -> str:
    """"sql" or "json": what the kind's query body is (the registry says)."""
    found = kind_named(kind)
    return found.body if found is not None else "json"


def scan_stored(kind: str, row: Mapping[str, Any], key: bytes) -> list[Finding]:
    """The findings of a stored query row (`body` as the service stores it, `parameters`)."""
    stored = json.loads(row["body"])
    return scan_query(body_language(kind), stored.get("body"), json.loads(row["parameters"]),
                      stored.get("description"), key)


def requested_allowances(body: Mapping[str, Any]) -> frozenset[str]:
    """The fingerprints a save asks to allow (`allow_secret_findings`), checked for shape."""
    raw = body.get(ALLOW_FIELD)
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or len(raw) > MAX_ALLOW or not all(
            isinstance(item, str) and _FINGERPRINT_RE.fullmatch(item) for item in raw):
        raise Unprocessable(f"'{ALLOW_FIELD}' must be a list of at most {MAX_ALLOW} finding "
                            f"fingerprints ({FINGERPRINT_CHARS} hex digits each, as a "
                            "'secret_in_query' error names them)", code="invalid_query",
                            field=ALLOW_FIELD)
    return frozenset(raw)


@dataclass(frozen=True)
class StoredFinding:
    """A finding of a stored query, and whether an admin allowed it."""

    query_id: str
    query_name: str
    finding: Finding
    allowed: bool

    def to_json(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "query_name": self.query_name,
                **self.finding.to_json(), "allowed": self.allowed}


class SecretFindings:
    """The save-time check, the allowances and the stored queries' findings."""

    def __init__(self, store: Any, audit: AuditLog, key: bytes) -> None:
        self.store = store
        self.audit = audit
        self._key = key

    def __repr__(self) -> str:
        return "SecretFindings(<key>)"

    def scan(self, kind: str, body: Any, parameters: Any, description: Any) -> list[Finding]:
        return scan_query(body_language(kind), body, parameters, description, self._key)

    async def _allowed(self, reader: Any, query_id: str) -> set[str]:
        rows = await reader.fetch_all(
            "SELECT fingerprint FROM query_secret_allowances WHERE query_id = ?", (query_id,))
        return {str(row["fingerprint"]) for row in rows}

    async def check(self, tx: Any, query_id: str | None, findings: Sequence[Finding],
                    requested: frozenset[str], *, may_allow: bool) -> list[Finding]:
        """Refuse a save whose findings are neither allowed before for this query nor allowed
        now (`requested`, admin only); return the findings this save allows."""
        if requested and not may_allow:
            raise AllowNeedsAdmin(f"only an admin may set '{ALLOW_FIELD}': ask an admin to "
                                  "review the finding", field=ALLOW_FIELD)
        by_fingerprint = {finding.fingerprint: finding for finding in findings
                          if finding.rule not in UNALLOWABLE}
        unknown = requested - by_fingerprint.keys()
        if unknown:
            raise Unprocessable(f"'{ALLOW_FIELD}': {len(unknown)} fingerprint(s) name no "
                                "finding of this query as saved", code="invalid_query",
                                field=ALLOW_FIELD)
        allowed = await self._allowed(tx, query_id) if query_id is not None else set()
        left = [f for f in findings if f.fingerprint not in allowed | requested
                or f.rule in UNALLOWABLE]
        if left:
            raise SecretInQuery(left)
        return [by_fingerprint[fp] for fp in sorted(requested - allowed)]

    async def refuse_unallowed(self, reader: Any, query_id: str | None, kind: str,
                               query: Mapping[str, Any]) -> None:
        """The check for a caller that saves queries its own way (`appliance import`): scan
        `query` (its `body`, `parameters`, `description`) as a datasource of `kind` would run
        it, and raise SecretInQuery for any finding not allowed before for `query_id` (None:
        a new query). `reader`: the store or the caller's transaction."""
        findings = await asyncio.to_thread(self.scan, kind, query.get("body"),
                                           query.get("parameters", []),
                                           query.get("description"))
        await self.check(reader, query_id, findings, frozenset(), may_allow=False)

    async def record(self, tx: Any, query_id: str, findings: Iterable[Finding],
                     context: Context) -> None:
        """Record allowances (in the caller's transaction), each audited with rule and place."""
        for finding in findings:
            await tx.execute(
                "INSERT INTO query_secret_allowances (query_id, fingerprint, rule, field, place, "
                "allowed_by, allowed_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (query_id, fingerprint) DO NOTHING",
                (query_id, finding.fingerprint, finding.rule, finding.field, finding.place,
                 context.actor, time.time()))
            await self.audit.record(
                tx, action="query.secret_finding.allow", target=f"query:{query_id}",
                context=context, details={"rule": finding.rule, "field": finding.field,
                                          "place": finding.place,
                                          "fingerprint": finding.fingerprint})

    async def allow(self, query_id: str, fingerprint: str, context: Context) -> dict[str, Any]:
        """Allow one finding of a stored query (admin: the route says so)."""
        async with self.store.transaction() as tx:
            row = await tx.fetch_one(
                "SELECT q.id, q.name, q.body, q.parameters, d.kind FROM queries q "
                "JOIN datasources d ON d.id = q.datasource_id WHERE q.id = ?", (query_id,))
            if row is None:
                raise NotFound("no such query", code="query_not_found")
            found = [f for f in scan_stored(str(row["kind"]), row, self._key)
                     if f.fingerprint == fingerprint and f.rule not in UNALLOWABLE]
            if not found:
                raise FindingNotFound("the query has no finding with this fingerprint (it may "
                                      "have changed since)")
            await self.record(tx, query_id, found, context)
        return StoredFinding(query_id, str(row["name"]), found[0], True).to_json()

    async def withdraw(self, query_id: str, fingerprint: str,
                       context: Context) -> dict[str, Any]:
        """Withdraw an admin's allowance of one finding of a stored query (admin: the route says
        so), audited as `query.secret_finding.withdraw` with what the allowance named (rule,
        field, place, fingerprint) and who had allowed it. The finding counts again: `doctor`
        reports it and the query's next save is refused (422 `secret_in_query`) unless it is
        allowed again. An allowance whose finding is no longer in the query can be withdrawn
        too."""
        async with self.store.transaction() as tx:
            query = await tx.fetch_one("SELECT name FROM queries WHERE id = ?", (query_id,))
            if query is None:
                raise NotFound("no such query", code="query_not_found")
            row = await tx.fetch_one(
                "SELECT rule, field, place, allowed_by FROM query_secret_allowances"
                " WHERE query_id = ? AND fingerprint = ?", (query_id, fingerprint))
            if row is None:
                raise AllowanceNotFound("the query has no allowed finding with this "
                                        "fingerprint (see GET /api/v1/queries/secret-findings)")
            await tx.execute("DELETE FROM query_secret_allowances WHERE query_id = ?"
                             " AND fingerprint = ?", (query_id, fingerprint))
            withdrawn = {"rule": str(row["rule"]), "field": str(row["field"]),
                         "place": str(row["place"]), "fingerprint": fingerprint}
            await self.audit.record(
                tx, action="query.secret_finding.withdraw", target=f"query:{query_id}",
                context=context, details={**withdrawn, "allowed_by": str(row["allowed_by"])})
        return {"query_id": query_id, "query_name": str(query["name"]), **withdrawn,
                "allowed": False}

    async def stored(self) -> list[StoredFinding]:
        """Every finding of every stored query, allowed ones marked, by query name."""
        return await stored_findings(self.store, self._key)


async def stored_findings(store: Any, key: bytes) -> list[StoredFinding]:
    """Every finding of every stored query (for the admin API and `appliance doctor`)."""
    rows = await store.fetch_all(
        "SELECT q.id, q.name, q.body, q.parameters, d.kind FROM queries q "
        "JOIN datasources d ON d.id = q.datasource_id ORDER BY q.name")
    allowances = []
    if await store.schema_version() >= ALLOWANCES_SCHEMA:  # doctor reads unmigrated stores
        allowances = await store.fetch_all(
            "SELECT query_id, fingerprint FROM query_secret_allowances")
    allowed = {(str(a["query_id"]), str(a["fingerprint"])) for a in allowances}
    out: list[StoredFinding] = []
    for row in rows:
        query_id = str(row["id"])
        # In a thread, as at save time: a store of large queries does not stall the loop.
        for finding in await asyncio.to_thread(scan_stored, str(row["kind"]), row, key):
            out.append(StoredFinding(query_id, str(row["name"]), finding,
                                     (query_id, finding.fingerprint) in allowed))
    return out


async def findings_in_store(store: Any, secret: InstanceSecret) -> list[StoredFinding] | None:
    """The stored queries' findings, for a reader that only reads (`appliance doctor`): the
    root key opened from the keyring's slots with the instance secret, nothing written. None
    when the store has no keyring yet (and so no query)."""
    slots = await read_slots(store)
    if not slots:
        return None
    root, _ = await open_root(slots, secret)
    return await stored_findings(store, fingerprint_key(root))
