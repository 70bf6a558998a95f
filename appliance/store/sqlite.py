"""The embedded store: one SQLite file in the state directory, WAL, one writer at a time.

Owns the connections, pragmas and migrations. Writes always run inside an explicit
`BEGIN IMMEDIATE … COMMIT`, so a crash leaves either the whole record or none of it.

Three connections over the one file: a writer and a reader, each on its own aiosqlite thread, and
an inline connection used on the event loop's thread for the request path's point reads
(`lookup`) and the audit log's non-durable group commits. The inline connection never waits: it
has no busy timeout, so when another connection or process holds the file it steps aside and the
call takes the threaded path. It never checkpoints the WAL itself either (that fsync would stall
the loop); the reader's thread does it every `CHECKPOINT_EVERY` inline commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from appliance.errors import StoreError
from appliance.state_dir import FILE_MODE
from appliance.store.aiosqlite_private import run_on_thread
from appliance.store.base import CommitHooks, H, Params, Row, Step
from appliance.store.listeners import Listeners
from appliance.store.migrations import LATEST, MIGRATIONS, Migration

T = TypeVar("T")

CHECKPOINT_EVERY = 256
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


class _Busy(enum.Enum):
    """What an inline write returns when the file was busy (a result of its own, never `fn`'s)."""

    BUSY = enum.auto()


_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 10000",
    "PRAGMA secure_delete = ON",
)
_INLINE_PRAGMAS = (
    "PRAGMA busy_timeout = 0",  # never wait on the event loop: step aside instead
    "PRAGMA synchronous = NORMAL",  # only non-durable writes commit here
    "PRAGMA wal_autocheckpoint = 0",  # checkpoints run on the reader's thread
    "PRAGMA foreign_keys = ON",
    "PRAGMA secure_delete = ON",
)


class _SQLiteTransaction:
    """`Transaction` on the writer connection; a statement's error is a `StoreError` (as on
    every store), and the block that sees it rolls back."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.hooks = CommitHooks()

    def hook(self, key: object, make: Callable[[], H]) -> H:
        return self.hooks.get(key, make)

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            cursor = await self._conn.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        count = cursor.rowcount
        await cursor.close()
        return count

    async def insert(self, sql: str, params: Params = ()) -> None:
        await self.execute(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        try:
            async with self._conn.execute(sql, tuple(params)) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        return dict(row) if row is not None else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            async with self._conn.execute(sql, tuple(params)) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        return [dict(row) for row in rows]

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        try:
            cursor = await self._conn.executemany(sql, [tuple(row) for row in rows])
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        count = cursor.rowcount
        await cursor.close()
        return count


class _SQLiteStep:
    """`Step` over the sqlite3 connection `write` runs its function on."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row = self._conn.execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None

    def insert(self, sql: str, params: Params = ()) -> None:
        self._conn.execute(sql, tuple(params))

    def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        return self._conn.executemany(sql, rows).rowcount


class SQLiteStore:
    """A writer connection (serialised by a lock), a reader connection and the inline
    connection, over one WAL file."""

    bridged_writes = False  # `write` runs inline or on the writer's thread, never step by step

    def __init__(self, path: Path, writer: aiosqlite.Connection,
                 reader: aiosqlite.Connection, inline: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._inline = inline
        self._write_lock = asyncio.Lock()
        self._inline_commits = 0
        self._checkpoint: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._version: int | None = None  # `version`'s reading in this turn of the loop
        self._listeners = Listeners("store-sqlite-watch", self.version)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        try:
            async with self._reader.execute(sql, tuple(params)) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc
        return dict(row) if row is not None else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            async with self._reader.execute(sql, tuple(params)) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc
        return [dict(row) for row in rows]

    async def search(self, sql: str, params: Params = ()) -> list[Row]:
        return await self.fetch_all(sql, params)  # SQLite plans each statement with its values
    async def fetch_tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        try:
            async with self._reader.execute(sql, tuple(params)) as cursor:
                cursor.row_factory = None  # plain tuples: no sqlite3.Row for each row
                return [tuple(row) for row in await cursor.fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    async def lookup(self, sql: str, params: Params = ()) -> Row | None:
        """One row by primary key or unique index, read on the event loop's thread without a
        thread hop (the request path's token and session checks). Only for indexed point reads:
        the loop waits for it. When the file is busy it reads through the reader thread."""
        try:
            row = self._inline.execute(sql, tuple(params)).fetchone()
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise StoreError(f"store read failed: {exc}") from exc
            return await self.fetch_one(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc
        return dict(row) if row is not None else None

    def version(self) -> int | None:
        """SQLite's `data_version` on the inline connection: it changes whenever another
        connection commits, this process's writer or another process (the CLI). The inline
        connection's own commits do not change it: they are `write(durable=False)`, which only
        appends query-run audit entries, never a record a lookup reads.

        Read once per turn of the event loop (the reading takes SQLite's file locks, two
        system calls): whatever asks again in the same turn is serving a request received
        before the turn's first reading, so a commit that reading did not see came after the
        request arrived, as for a request already past its check. The reading is forgotten
        before anything woken in a later turn runs."""
        if self._version is not None:
            return self._version
        try:
            version = int(self._inline.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None
        try:
            asyncio.get_running_loop().call_soon(self._forget_version)
        except RuntimeError:  # no loop running: nothing would forget it
            return version
        self._version = version
        return version

    def _forget_version(self) -> None:
        self._version = None

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`data_version` is read twice a second while someone listens; a change calls back (also
        after this process's own writer commits: SQLite's counter cannot tell them apart)."""
        return self._listeners.add(callback)

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[_SQLiteTransaction]:
        """Always durable (`durable` is taken and ignored): the writer's own thread commits with
        `synchronous = FULL`. A caller cancelled once its block ended waits for the COMMIT
        (`CommitHooks.finish`)."""
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            tx = _SQLiteTransaction(self._writer)
            try:
                yield tx
            except BaseException:
                await self._writer.rollback()
                raise
            await tx.hooks.finish(self._commit, self._writer.rollback)

    async def _commit(self) -> None:
        """COMMIT on the writer; rolled back when it fails (a failed COMMIT may leave the
        transaction open: a deferred constraint, a full disk)."""
        try:
            await self._writer.commit()
        except sqlite3.Error as exc:
            await self._writer.rollback()
            raise StoreError(f"store commit failed: {exc}") from exc

    async def write(self, fn: Callable[[Step], T], *, durable: bool = True,
                    blocking: bool = False) -> T:
        """Run `fn(step)` inside one transaction on the writer's own thread: the whole
        write costs one thread hop, for hot paths (the audit log's group commit). `fn` must be
        quick, must not commit, and must raise to roll back. With `durable=False` the commit skips
        fsync (`synchronous = NORMAL` in WAL mode): still atomic and safe against a process crash,
        but the newest such commits can be lost to a power failure: only for records that may be
        lost that way (query-run metadata). A non-durable write commits on the event loop's
        thread when the file is free at once (unless `blocking`: `fn` does I/O of its own), and
        takes the writer's thread otherwise."""
        if not durable and not blocking and not self._write_lock.locked():
            result = self._write_inline(fn)
            if result is not _Busy.BUSY:
                return result
        async with self._write_lock:
            try:
                return await run_on_thread(self._writer, _run_in_transaction, fn, durable)
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed: {exc}") from exc

    def _write_inline(self, fn: Callable[[Step], T]) -> T | _Busy:
        """`fn`'s result if it committed on the inline connection; `_Busy.BUSY` if the file was
        busy before anything was written."""
        conn = self._inline
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return _Busy.BUSY
            raise StoreError(f"store write failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        try:
            result = fn(_SQLiteStep(conn))
            conn.commit()
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # keep the first error, not the rollback's
                conn.rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"store write failed: {exc}") from exc
            raise
        self._inline_commits += 1
        if self._inline_commits >= CHECKPOINT_EVERY and (
                self._checkpoint is None or self._checkpoint.done()):
            self._inline_commits = 0
            self._checkpoint = asyncio.get_running_loop().create_task(
                self._checkpoint_wal(), name="store-wal-checkpoint")
        return result

    async def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database file, off the event loop; never waits for others."""
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def snapshot(self, to: Path) -> None:
        """SQLite's online backup API, on a read-only connection of its own in a worker thread:
        a consistent copy (a rollback-journal file, no WAL beside it) while others go on."""
        await asyncio.to_thread(_snapshot, self.path, to)

    async def schema_version(self) -> int:
        row = await self.fetch_one("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        return int(row["v"]) if row else 0

    async def ping(self) -> None:
        await self.fetch_one("SELECT 1 AS ok")

    async def close(self) -> None:
        """Close the three connections. Idempotent; a close while another runs waits for that
        one (two overlapping closes of one aiosqlite connection: the second waits forever)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await self._listeners.close()
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        with contextlib.suppress(Exception):
            self._inline.close()
        for conn in (self._reader, self._writer):
            with contextlib.suppress(Exception):
                await conn.close()


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the file (try again later)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _run_in_transaction(conn: sqlite3.Connection, fn: Callable[[Step], T], durable: bool) -> T:
    """On the writer thread: BEGIN IMMEDIATE, fn, COMMIT (ROLLBACK if fn raises)."""
    if not durable:
        conn.execute("PRAGMA synchronous = NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(_SQLiteStep(conn))
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return result
    finally:
        if not durable:
            conn.execute("PRAGMA synchronous = FULL")


def _snapshot(path: Path, to: Path) -> None:
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.close(fd)
        dst = sqlite3.connect(to)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


async def _connect(path: Path, *, readonly: bool = False) -> aiosqlite.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in _PRAGMAS:
            if readonly and "journal_mode" in pragma:
                continue
            await conn.execute(pragma)
    except BaseException:
        await conn.close()  # its worker thread would otherwise keep the process alive
        raise
    return conn


async def open_sqlite_store(path: Path, *, migrate: bool = True) -> SQLiteStore:
    """Open (creating if needed) the store file, 0600, and bring its schema to the latest version.

    With `migrate=False` the schema is left as it is (for `doctor`, which only reports).
    """
    created = not path.exists()
    try:
        if created:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.close(fd)
        writer = await _connect(path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"store {path} is not a usable SQLite database: {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None
    try:
        await writer.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL) STRICT"
        )
        if migrate:
            await _migrate(writer)
        reader = await _connect(path)
    except sqlite3.DatabaseError as exc:
        await writer.close()
        raise StoreError(f"store {path} is not a usable SQLite database: {exc}") from None
    except BaseException:
        await writer.close()
        raise
    try:
        inline = _connect_inline(path)
    except BaseException as exc:
        for conn in (reader, writer):
            await conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot open store {path}: {exc}") from None
        raise
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)
    return SQLiteStore(path, writer, reader, inline)


def _connect_inline(path: Path) -> sqlite3.Connection:
    """The connection used on the event loop's thread (and only there: sqlite3 checks)."""
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in _INLINE_PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


async def _migrate(conn: aiosqlite.Connection) -> None:
    async with conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    if current > LATEST:
        raise StoreError(
            f"the store is at schema version {current}, newer than this appliance knows "
            f"({LATEST}); run the newer appliance, or restore a backup"
        )
    for migration in MIGRATIONS:
        if migration.version > current:
            await _apply(conn, migration)


async def _apply(conn: aiosqlite.Connection, migration: Migration) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have applied it while we waited for the lock.
        async with conn.execute(
            "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
        ) as cur:
            if await cur.fetchone():
                await conn.rollback()
                return
        for statement in migration.for_dialect("sqlite"):
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, time.time()),
        )
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
