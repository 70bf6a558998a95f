"""The SQLite engine: a small pool of connections to a database file, read-only unless the
datasource says otherwise.

Owns opening the file (`mode=ro` URI, `query_only`, no ATTACH, no PRAGMA from queries) and timing
statements out with `interrupt`. Never creates a file, never logs a value or a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiosqlite

from appliance.datasources.engine import Engine, PoolStats, RowStream, Target
from appliance.datasources.errors import (
    DatasourceTimeout,
    DatasourceUnreachable,
    QueryFailed,
)
from appliance.query import BoundStatement

STREAM_BATCH = 1000
# aiosqlite's DEBUG records quote every statement with its parameter values: never below INFO.
logging.getLogger("aiosqlite").setLevel(logging.INFO)
_DENIED_ACTIONS = frozenset({sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA})


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None,
                trigger: str | None) -> int:
    """Queries may not attach other files (the appliance's own store, say) or change pragmas."""
    if action in _DENIED_ACTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class SQLiteEngine(Engine):
    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._idle: list[aiosqlite.Connection] = []
        self._all: set[aiosqlite.Connection] = set()
        self._slots = asyncio.Semaphore(self.target.limits.max_connections)
        self._closed = False

    def pool_stats(self) -> PoolStats | None:
        return PoolStats(size=len(self._all), idle=len(self._idle))

    def _uri(self) -> str:
        mode = "ro" if self.target.config.get("read_only", True) else "rw"
        path = urllib.parse.quote(str(self.target.config["path"]))
        return f"file:{path}?mode={mode}"

    async def _open_connection(self) -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(self._uri(), uri=True, isolation_level=None,
                                           check_same_thread=False)
        except sqlite3.Error:
            raise DatasourceUnreachable(self.name, "unreachable (the database file cannot be "
                                                   "opened)") from None
        try:
            if self.target.config.get("read_only", True):
                await conn.execute("PRAGMA query_only = ON")
            await conn.execute("PRAGMA trusted_schema = OFF")
            await conn.set_authorizer(_authorizer)
        except BaseException:
            await conn.close()
            raise
        return conn

    @contextlib.asynccontextmanager
    async def _connection(self, timeout: float) -> AsyncIterator[aiosqlite.Connection]:
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise DatasourceTimeout(self.name, timeout, "free a connection") from None
        conn: aiosqlite.Connection | None = None
        healthy = False
        try:
            if self._closed:
                raise DatasourceUnreachable(self.name, "being reconfigured; try again")
            conn = self._idle.pop() if self._idle else await self._open_connection()
            self._all.add(conn)
            yield conn
            healthy = not conn.in_transaction
        finally:
            if conn is not None:
                if healthy and not self._closed:
                    self._idle.append(conn)
                else:
                    self._all.discard(conn)
                    with contextlib.suppress(Exception):
                        await conn.close()
            self._slots.release()

    async def test(self, timeout: float) -> None:
        async with self._connection(timeout) as conn:
            try:
                async with asyncio.timeout(timeout):
                    await (await conn.execute("SELECT count(*) FROM sqlite_schema")).fetchall()
            except TimeoutError:
                await conn.interrupt()
                raise DatasourceTimeout(self.name, timeout) from None
            except sqlite3.DatabaseError:
                raise DatasourceUnreachable(self.name, "not a readable SQLite database") from None

    @contextlib.asynccontextmanager
    async def open(self, bound: BoundStatement, *, timeout: float, fetch: int,
                   stream: bool = False) -> AsyncIterator[RowStream]:
        async with self._connection(timeout) as conn:
            try:
                async with asyncio.timeout(timeout):
                    cursor = await conn.execute(bound.sql, bound.values)
                    if stream:
                        first: list[Any] = []
                    else:
                        first = list(await cursor.fetchmany(fetch))
            except BaseException as exc:
                raise await self._translate(conn, exc, timeout) from None
            columns = [d[0] for d in cursor.description or ()]
            try:
                if stream:
                    yield RowStream(columns, self._batches(conn, cursor, fetch, timeout))
                else:
                    yield RowStream(columns, _one_batch(first))
            finally:
                with contextlib.suppress(Exception):
                    await cursor.close()

    async def _batches(self, conn: aiosqlite.Connection, cursor: aiosqlite.Cursor, fetch: int,
                       timeout: float) -> AsyncIterator[list[Any]]:
        remaining = fetch
        while remaining > 0:
            try:
                async with asyncio.timeout(timeout):
                    batch = list(await cursor.fetchmany(min(STREAM_BATCH, remaining)))
            except BaseException as exc:
                raise await self._translate(conn, exc, timeout) from None
            if not batch:
                return
            remaining -= len(batch)
            yield batch

    async def _translate(self, conn: aiosqlite.Connection, exc: BaseException,
                         timeout: float) -> BaseException:
        if isinstance(exc, asyncio.CancelledError):
            await conn.interrupt()
            return exc
        if isinstance(exc, TimeoutError):
            await conn.interrupt()
            return DatasourceTimeout(self.name, timeout, "finish the statement")
        if isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc):
            return DatasourceTimeout(self.name, timeout, "finish the statement")
        if isinstance(exc, sqlite3.Error):
            # SQLite's messages name tables and columns, never bound values.
            code = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
            return QueryFailed(self.name, str(exc), code)
        return exc

    async def close(self) -> None:
        self._closed = True
        conns, self._idle = list(self._all), []
        self._all.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()


async def _one_batch(rows: list[Any]) -> AsyncIterator[list[Any]]:
    if rows:
        yield rows
