"""Copying every table of one store into another of the same schema version: the PostgreSQL
store's `snapshot` (into a new SQLite file, so backups keep one format) and, the other way,
`store migrate`.

Owns the order of the copy (parents before children, from the target's foreign keys) and the
batched inserts. Never copies the target's own bookkeeping (`schema_migrations`, written by its
migrations; `store_clock`, each store's own) and never logs a row.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol, TypeVar

from appliance.errors import StoreError
from appliance.store.base import Params, Row, Step

T = TypeVar("T")

BATCH = 1000
# audit_prune_guard: SQLite's retention guard (migration 16); PostgreSQL's is a transaction-local
# setting, no table.
NOT_COPIED = frozenset({"schema_migrations", "store_clock", "audit_prune_guard"})
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class RowSource(Protocol):
    """A consistent view of a store to copy from (one read-only transaction)."""

    async def tables(self) -> set[str]: ...

    def batches(self, table: str, size: int) -> AsyncIterator[list[Row]]: ...


class RowSink(Protocol):
    """Where the rows go: a `Store`, or one transaction seen as its `write` (`store migrate`)."""

    async def write(self, fn: Callable[[Step], T], *, durable: bool = True) -> T: ...


class Reader(Protocol):
    """What ordering the tables reads: a `Store`, or any reader of a SQLite file."""

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...


async def copy_tables(source: RowSource, target: RowSink, tables: Sequence[str]
                      ) -> dict[str, int]:
    """Copy `tables` (in this order) that exist in `source` into `target`, `BATCH` rows per
    write; return the rows copied per table. The target's tables must be empty."""
    have = await source.tables()
    copied: dict[str, int] = {}
    for table in tables:
        if table in NOT_COPIED or table not in have:
            continue
        copied[table] = 0
        async for batch in source.batches(table, BATCH):
            if not batch:
                continue
            columns = list(batch[0])
            names = ", ".join(quoted_name(c) for c in columns)
            sql = (f"INSERT INTO {quoted_name(table)} ({names}) "
                   f"VALUES ({', '.join('?' for _ in columns)})")
            rows = [tuple(row[c] for c in columns) for row in batch]

            def insert(step: Step, sql: str = sql, rows: list[tuple[object, ...]] = rows) -> int:
                return step.execute_many(sql, rows)

            await target.write(insert)
            copied[table] += len(rows)
    return copied


async def sqlite_tables_in_order(store: Reader) -> list[str]:
    """A SQLite store's tables, each after every table its foreign keys point at."""
    rows = await store.fetch_all(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name")
    names = [str(r["name"]) for r in rows]
    parents: dict[str, set[str]] = {}
    for name in names:
        keys = await store.fetch_all(f"SELECT * FROM pragma_foreign_key_list({_literal(name)})")
        parents[name] = {str(k["table"]) for k in keys} - {name}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise StoreError("the store's foreign keys form a cycle; cannot order the copy")
        ordered.extend(ready)
    return ordered


def quoted_name(name: str) -> str:
    """A table or column name of ours, double-quoted; anything unexpected is refused."""
    if not _NAME.fullmatch(name):
        raise StoreError(f"unexpected table or column name {name!r} in the store")
    return f'"{name}"'


def _literal(name: str) -> str:
    return "'" + quoted_name(name)[1:-1] + "'"
