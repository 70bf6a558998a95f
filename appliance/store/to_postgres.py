"""Moving a SQLite store into an empty PostgreSQL database (`appliance store migrate`): the
schema, every row, the identity counters and the caller's checks, in ONE transaction on the
target that commits only when the checks pass.

Owns what counts as an empty target (no table at all, or a fresh migration with no row in any
table of ours), that transaction, and the read-only view of it the checks read through. Never
writes to a target that holds rows or tables it does not expect, never commits a copy whose
checks failed, and never logs or reports a row's value or the password (errors carry a table
name, a SQLSTATE and an exception class only).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import ApplianceError, StoreError
from appliance.store import copy
from appliance.store.base import Params, Row, Step, Store, Transaction
from appliance.store.migrations import LATEST, MIGRATIONS
from appliance.store.placeholders import to_numbered
from appliance.store.postgres import MIGRATION_LOCK, WRITE_LOCK, PostgresStore

T = TypeVar("T")
_INSERT_INTO = re.compile(r'\s*INSERT INTO "([a-z0-9_]+)"')


class TargetNotEmpty(StoreError):
    """The target database already holds appliance rows, an older or newer appliance schema, or
    tables that are not the appliance's: nothing is copied over them."""

    code = "store_not_empty"
    exit_code = 2


class CopyRefused(StoreError):
    """A check of the copied store failed (a sealed field that does not open, a broken audit
    chain): the transaction was rolled back, the target is as it was."""

    exit_code = 1


@dataclass(frozen=True)
class MoveReport:
    target: str
    rows: dict[str, int]  # rows copied per table
    created_schema: bool  # False: the target held a fresh migration already


Check = Callable[[Store], Awaitable[None]]


async def move_into(snapshot: Path, target: PostgresStore, check: Check) -> MoveReport:
    """Copy the SQLite file `snapshot` (a consistent copy of the source, at schema version
    LATEST, that nobody writes) into `target`'s database, then `check(view)` the copy through
    the same transaction before it commits. `TargetNotEmpty`, `StoreUnavailable` or whatever
    `check` raises leave the target as it was."""
    source = SQLiteFile(snapshot)
    try:
        version = await source.schema_version()
        if version != LATEST:
            raise StoreError(f"the source store is at schema version {version}, this appliance "
                             f"writes {LATEST}: start `appliance serve` on it once to migrate")
        tables = await copy.sqlite_tables_in_order(source)
        conn = await target.connect()
        try:
            async with conn.transaction():
                # The migration lock first (as an instance starting on the target would take
                # it), then every writer's lock: nothing else changes the target meanwhile.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                where = str(target.target)
                created = await _prepare(conn, where, set(tables))
                rows = await copy.copy_tables(source, _InTransaction(conn), tables)
                await _restart_identities(conn)
                await check(TransactionView(conn, where))
        except ApplianceError:  # a refusal, a check that failed, a wrong instance secret
            raise
        except Exception as exc:
            raise _failed(str(target.target), exc) from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            if not conn.is_closed():
                conn.terminate()
    finally:
        source.close()
    return MoveReport(str(target.target), rows, created)


# --- the target ---------------------------------------------------------------------------------


async def _prepare(conn: Any, where: str, ours: set[str]) -> bool:
    """Refuse a target that is not empty; create the schema in an empty one (True) or accept a
    fresh migration of this version (False)."""
    # The catalog, not information_schema: that one hides tables this user may not read.
    found = {str(r["relname"]) for r in await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')")}
    if "schema_migrations" not in found:
        if found:
            raise TargetNotEmpty(
                f"the target {where} is not empty: its schema holds tables that are not the "
                f"appliance's ({_names(found)}); give it an empty database")
        await _create_schema(conn, where)
        return True
    version = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))
    if version != LATEST:
        raise TargetNotEmpty(
            f"the target {where} holds an appliance schema at version {version} (this appliance "
            f"writes {LATEST}); give it an empty database")
    foreign = found - ours - copy.NOT_COPIED
    if foreign:
        raise TargetNotEmpty(f"the target {where} holds tables that are not the appliance's "
                             f"({_names(foreign)}); give it an empty database")
    filled = [table for table in sorted((found & ours) - copy.NOT_COPIED)
              if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {copy.quoted_name(table)})")]
    if filled:
        raise TargetNotEmpty(
            f"the target {where} already holds appliance data (rows in {_names(filled)}); "
            "nothing was copied: give it an empty database (this verb never merges stores)")
    return False


async def _create_schema(conn: Any, where: str) -> None:
    """Every migration, as `PostgresStore` would apply them, but inside the copy's transaction:
    if the copy fails, no table is left behind."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY,"
        " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
    for migration in MIGRATIONS:
        try:
            for statement in migration.for_dialect("postgresql"):
                await conn.execute(statement)
        except Exception as exc:
            raise StoreError(f"the target {where}: migration {migration.version} "
                             f"({migration.name}) failed: SQLSTATE "
                             f"{getattr(exc, 'sqlstate', '?')} ({type(exc).__name__})") from None
        await conn.execute("INSERT INTO schema_migrations (version, name, applied_at)"
                           " VALUES ($1, $2, $3)", migration.version, migration.name, time.time())


async def _restart_identities(conn: Any) -> None:
    """Identity columns (keyring_unseal.slot) go on after the highest copied value, or the next
    row the store numbers would collide with a copied one."""
    columns = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()"
        " AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')")
    for column in columns:
        table = copy.quoted_name(column["table_name"])
        name = copy.quoted_name(column["column_name"])
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence($1, $2),"
            f" COALESCE((SELECT MAX({name}) FROM {table}), 0) + 1, false)",
            table, column["column_name"])


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered[:5]) + (f" and {len(ordered) - 5} more" if len(ordered) > 5 else "")


def _failed(where: str, exc: Exception) -> StoreError:
    sqlstate = getattr(exc, "sqlstate", None)
    what = f"SQLSTATE {sqlstate}, " if sqlstate else ""
    return StoreError(f"copying into {where} failed ({what}{type(exc).__name__}); nothing was "
                      "written to it")


class _InTransaction:
    """`copy.RowSink` over the one open transaction: each batch is one pipelined INSERT."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def write(self, fn: Callable[[Step], T], *, durable: bool = True) -> T:
        step = _Recorded()
        result = fn(step)
        for sql, rows in step.calls:
            try:
                await self._conn.executemany(to_numbered(sql), rows)
            except Exception as exc:
                match = _INSERT_INTO.match(sql)
                table = match.group(1) if match else "?"
                sqlstate = getattr(exc, "sqlstate", None)
                raise StoreError(
                    f"copying table {table} failed ({f'SQLSTATE {sqlstate}, ' if sqlstate else ''}"
                    f"{type(exc).__name__}); nothing was written to the target") from None
        return result


class _Recorded:
    """`Step` that records the copy's inserts, run by `_InTransaction` once `fn` returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[Any, ...]]]] = []

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        raise StoreError("the copy only inserts")

    def insert(self, sql: str, params: Params = ()) -> None:
        self.calls.append((sql, [tuple(params)]))

    def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        batch = [tuple(row) for row in rows]
        self.calls.append((sql, batch))
        return len(batch)


class TransactionView:
    """A `Store` that reads through the copy's open transaction (so checks see the copy before
    it commits) and refuses every write."""

    bridged_writes = False  # it writes nothing

    def __init__(self, conn: Any, where: str) -> None:
        self._conn = conn
        self._where = where

    def __repr__(self) -> str:
        return f"<TransactionView {self._where}>"

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row = await self._conn.fetchrow(to_numbered(sql), *params)
        return dict(row) if row is not None else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return [dict(row) for row in await self._conn.fetch(to_numbered(sql), *params)]

    async def fetch_tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.fetch(to_numbered(sql), *params)]

    async def lookup(self, sql: str, params: Params = ()) -> Row | None:
        return await self.fetch_one(sql, params)

    async def search(self, sql: str, params: Params = ()) -> list[Row]:
        return await self.fetch_all(sql, params)  # a copy's reads: no filters to plan for

    def version(self) -> int | None:
        return None  # nothing may be cached

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: None

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[Transaction]:
        raise StoreError("the copy is checked read-only")
        yield  # pragma: no cover

    async def write(self, fn: Callable[[Step], T], *, durable: bool = True,
                    blocking: bool = False) -> T:
        raise StoreError("the copy is checked read-only")

    async def snapshot(self, to: Path) -> None:
        raise StoreError("the copy is checked read-only")

    async def schema_version(self) -> int:
        return int(await self._conn.fetchval(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    async def ping(self) -> None:
        await self._conn.fetchval("SELECT 1")

    async def close(self) -> None:
        return None


# --- the source ---------------------------------------------------------------------------------


class SQLiteFile:
    """`copy.RowSource` and `copy.Reader` over a SQLite file opened read-only (a snapshot)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self._conn.close()

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        def read() -> list[Row]:
            return [dict(r) for r in self._conn.execute(sql, tuple(params))]

        return await asyncio.to_thread(read)

    async def schema_version(self) -> int:
        rows = await self.fetch_all("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        return int(rows[0]["v"])

    async def tables(self) -> set[str]:
        rows = await self.fetch_all(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        return {str(r["name"]) for r in rows}

    async def batches(self, table: str, size: int) -> AsyncIterator[list[Row]]:
        cursor = self._conn.execute(f"SELECT * FROM {copy.quoted_name(table)}")
        try:
            while True:
                rows = await asyncio.to_thread(cursor.fetchmany, size)
                if not rows:
                    return
                yield [dict(r) for r in rows]
        finally:
            cursor.close()
