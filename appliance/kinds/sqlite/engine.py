"""The SQLite engine: a small pool of connections to a database file, read-only unless the
datasource says otherwise.

Owns opening the file (`mode=ro` URI, `query_only`, no ATTACH, no PRAGMA from queries), timing
statements out with `interrupt`, and what a failed statement says (a sentence per result code,
never SQLite's message text). Never creates a file, never logs a value or a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import sqlite3
import stat
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiosqlite

from appliance.datasources.engine import Engine, EngineRuns, PoolStats, RowStream, Target
from appliance.datasources.errors import (
    DatasourceFileRefused,
    DatasourceTimeout,
    DatasourceUnreachable,
    QueryFailed,
    named,
)
from appliance.kinds.sql.binding import BoundStatement
from appliance.kinds.sqlite.config import in_state_dir

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


class _Refused(Exception):
    """The file may not be opened; the argument says why (no path, no value)."""


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _state_files(state: Path) -> set[tuple[int, int]]:
    """The identities of the files in the state directory (outside `demo/`): a hard link to the
    store is the store under another name."""
    found: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(state):
        if Path(root) == state:
            dirs[:] = [d for d in dirs if d != "demo"]
        for name in files:
            with contextlib.suppress(OSError):
                found.add(_identity(os.stat(os.path.join(root, name), follow_symlinks=False)))
    return found


def _checked_identity(path: str) -> tuple[int, int]:
    """The file at `path`, opened without following a final symbolic link: its identity."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused("it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _Refused("it is not a regular file")
    return _identity(st)


def open_file(path: str, *, read_only: bool, state: Path | None) -> sqlite3.Connection:
    """Open the datasource's file (in the connection's thread), checked as it is now: not a
    symbolic link (last component), not in the state directory `state` (resolved) once every link
    is resolved, not the same file as one there; then the file SQLite opened is checked to be the
    one checked. Raises `_Refused`, OSError or sqlite3.Error."""
    identity = _checked_identity(path)
    resolved = os.path.realpath(path)
    if state is not None:
        if in_state_dir(Path(resolved), state):
            raise _Refused("it lies in the appliance's state directory")
        if identity in _state_files(state):
            raise _Refused("it is the same file as one in the appliance's state directory")
    mode = "ro" if read_only else "rw"
    conn = sqlite3.connect(f"file:{urllib.parse.quote(resolved)}?mode={mode}", uri=True,
                           isolation_level=None, check_same_thread=False)
    try:
        # SQLite resolves links itself: the name it opened, and the file now under that name,
        # must be the ones checked (a file swapped in between is refused).
        opened = conn.execute("SELECT file FROM pragma_database_list WHERE name = 'main'"
                              ).fetchone()
        if opened is None or opened[0] != resolved or _checked_identity(resolved) != identity:
            raise _Refused("it changed while it was being opened")
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteEngine(Engine):
    def __init__(self, target: Target, state_dir: Path | None = None) -> None:
        super().__init__(target)
        self._state = state_dir.resolve() if state_dir is not None else None
        self._idle: list[aiosqlite.Connection] = []
        self._all: set[aiosqlite.Connection] = set()
        self._slots = asyncio.Semaphore(self.target.limits.max_connections)
        self._runs = EngineRuns(target.name)

    def pool_stats(self) -> PoolStats | None:
        return PoolStats(size=len(self._all), idle=len(self._idle))

    async def _open_connection(self) -> aiosqlite.Connection:
        path = str(self.target.config["path"])
        read_only = bool(self.target.config.get("read_only", True))
        try:
            conn = await aiosqlite.Connection(
                functools.partial(open_file, path, read_only=read_only, state=self._state),
                iter_chunk_size=64)
        except _Refused as exc:
            raise DatasourceFileRefused(self.name, str(exc)) from None
        except (sqlite3.Error, OSError):
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
        """A connection for one run (`EngineRetired` once the engine is closing). The run that
        holds a connection is the only one to close it: after a failure, or when the engine
        closed meanwhile."""
        with self._runs.run():
            try:
                async with asyncio.timeout(timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise DatasourceTimeout(self.name, timeout, "free a connection") from None
            conn: aiosqlite.Connection | None = None
            healthy = False
            try:
                conn = self._idle.pop() if self._idle else await self._open_connection()
                self._all.add(conn)
                yield conn
                healthy = not conn.in_transaction
            finally:
                if conn is not None:
                    if healthy and not self._runs.retired:
                        self._idle.append(conn)
                    else:
                        await self._close_one(conn)
                self._slots.release()

    async def _close_one(self, conn: aiosqlite.Connection) -> None:
        """Close a connection no one else holds. Never two closes of one connection at once:
        aiosqlite's second close waits forever for a worker thread the first one stopped."""
        try:
            with contextlib.suppress(Exception):
                await conn.close()
        finally:
            self._all.discard(conn)

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
                raise await self._translate(conn, exc, timeout, bound.identifiers) from None
            columns = [d[0] for d in cursor.description or ()]
            try:
                if stream:
                    yield RowStream(columns, self._batches(conn, cursor, fetch, timeout,
                                                           bound.identifiers))
                else:
                    yield RowStream(columns, _one_batch(first))
            finally:
                with contextlib.suppress(Exception):
                    await cursor.close()

    async def _batches(self, conn: aiosqlite.Connection, cursor: aiosqlite.Cursor, fetch: int,
                       timeout: float, identifiers: tuple[str, ...]
                       ) -> AsyncIterator[list[Any]]:
        remaining = fetch
        while remaining > 0:
            try:
                async with asyncio.timeout(timeout):
                    batch = list(await cursor.fetchmany(min(STREAM_BATCH, remaining)))
            except BaseException as exc:
                raise await self._translate(conn, exc, timeout, identifiers) from None
            if not batch:
                return
            remaining -= len(batch)
            yield batch

    async def _translate(self, conn: aiosqlite.Connection, exc: BaseException,
                         timeout: float, identifiers: tuple[str, ...]) -> BaseException:
        if isinstance(exc, asyncio.CancelledError):
            await conn.interrupt()
            return exc
        if isinstance(exc, TimeoutError):
            await conn.interrupt()
            return DatasourceTimeout(self.name, timeout, "finish the statement")
        if isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc):
            return DatasourceTimeout(self.name, timeout, "finish the statement")
        if isinstance(exc, sqlite3.Error):
            return statement_failed(self.name, exc, identifiers)
        return exc

    async def close(self) -> None:
        """No run starts from now on; the idle connections are closed now, and each one in use
        by the run that holds it, when that run ends (each is bounded by its own time limit);
        returns once every run has ended. Idempotent."""
        self._runs.retired = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._close_one(conn)
        await self._runs.retire()


# What a statement's failure says, by SQLite's (extended) result code name: a fixed sentence, and
# for a few message shapes the schema names they hold. Other messages are never shown: some quote
# a bound value ("JSON path error near '…'", a trigger's RAISE with an expression).
_SENTENCES: Final = {
    "SQLITE_CONSTRAINT_UNIQUE": "a unique constraint would be violated (the key exists)",
    "SQLITE_CONSTRAINT_PRIMARYKEY": "a primary key would be violated (the key exists)",
    "SQLITE_CONSTRAINT_NOTNULL": "a NOT NULL column would get NULL",
    "SQLITE_CONSTRAINT_CHECK": "a check constraint would be violated",
    "SQLITE_CONSTRAINT_FOREIGNKEY": "a foreign key constraint would be violated",
    "SQLITE_CONSTRAINT_TRIGGER": "a trigger refused the change",
    "SQLITE_CONSTRAINT_DATATYPE": "a value's type does not fit its column (STRICT table)",
    "SQLITE_CONSTRAINT": "a constraint would be violated",
    "SQLITE_MISMATCH": "datatype mismatch",
    "SQLITE_TOOBIG": "a value is too big",
    "SQLITE_RANGE": "a placeholder is out of range",
    "SQLITE_READONLY": "the datasource is read-only",
    "SQLITE_AUTH": "not authorized (ATTACH, DETACH and PRAGMA are refused)",
    "SQLITE_BUSY": "the database is locked; run it again",
    "SQLITE_LOCKED": "a table is locked; run it again",
    "SQLITE_CORRUPT": "the database file is malformed",
    "SQLITE_NOTADB": "the file is not an SQLite database",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_ERROR": "the statement failed",
}
# (message pattern, what the name is): names from the schema or the statement's text.
_NAMED: Final = (
    (re.compile(r"(?:UNIQUE|NOT NULL) constraint failed: ([\w.]+(?:, [\w.]+)*)"), "column"),
    (re.compile(r"CHECK constraint failed: (\w+)"), "constraint"),
    (re.compile(r"no such table: ([\w.]+)"), "no such table"),
    (re.compile(r"no such column: ([\w.]+)"), "no such column"),
    (re.compile(r"no such function: (\w+)"), "no such function"),
    (re.compile(r"near \"(\w+)\": syntax error"), "syntax error near"),
)
_DATATYPE_CODE: Final = 3091  # SQLITE_CONSTRAINT_DATATYPE (named "unknown" before SQLite 3.41)


def statement_failed(datasource: str, exc: sqlite3.Error,
                     identifiers: tuple[str, ...] = ()) -> QueryFailed:
    """A failed statement as `QueryFailed`: a sentence for its result code and the schema names
    of a few known message shapes (none holding one of the run's `identifiers`)."""
    code = getattr(exc, "sqlite_errorname", "") or ""
    if getattr(exc, "sqlite_errorcode", None) == _DATATYPE_CODE:
        code = "SQLITE_CONSTRAINT_DATATYPE"
    if code.startswith("SQLITE_"):
        primary = "_".join(code.split("_", 2)[:2])  # SQLITE_CONSTRAINT_CHECK: SQLITE_CONSTRAINT
        problem = _SENTENCES.get(code) or _SENTENCES.get(primary) or "the statement failed"
    else:  # raised by the sqlite3 module itself (binding, a closed cursor)
        code, problem = type(exc).__name__, "the statement could not be run"
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    for pattern, what in _NAMED:
        found = pattern.fullmatch(text)
        if found is not None:
            names = named(((what, found.group(1)),), identifiers)
            if names:
                problem += f" ({names})"
            break
    return QueryFailed(datasource, problem, code)


async def _one_batch(rows: list[Any]) -> AsyncIterator[list[Any]]:
    if rows:
        yield rows
