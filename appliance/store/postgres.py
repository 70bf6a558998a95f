"""The shared store: PostgreSQL, for several instances on one database (`[store] url`).

Owns the store's connections (a few readers, one writer, one listener; each made through the
egress dialer and `egress.postgres_auth` like a datasource's, purpose "store"), the translation
of the application's `?` SQL, the write lock, the store clock and the PostgreSQL migrations.
Never logs or reports a statement's values or a server's error text for a statement (SQLSTATE
and the error's class only), and never a password.

Writes are serialised across every instance on the cluster as SQLite's BEGIN IMMEDIATE serialises
them across processes: each `transaction()` and `write()` begins with
`SELECT pg_advisory_xact_lock(WRITE_LOCK)`, then does its work in READ COMMITTED, and the lock
goes with the commit. Every statement after the lock sees every commit made before it, so each
read-modify-write of the services (the audit chain's head, key rotation, login throttling,
"does this name exist") is as correct with several instances as it is with one SQLite file.
Reads outside a write take no lock and see the latest commit.

`version()` (what caches of `lookup` reads check) is a local counter moved by three things: this
process's own durable commit (at once), a NOTIFY from another instance's durable commit (on the
dedicated listener connection: milliseconds), and a once-a-second read of `store_clock` (the
fallback when a notification is lost: a dropped listener, a failover). Every durable write bumps
`store_clock` under the write lock and sends `pg_notify` in the same transaction, so the
notification is delivered exactly at commit. While neither the listener nor the poll has heard
from the database for `STALE_SECONDS`, `version()` is None and nothing may be cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from appliance.egress import Dialer, postgres_auth
from appliance.egress.dialer import EgressDenied, EgressTimeout, EgressUnreachable
from appliance.errors import StoreError, StoreUnavailable
from appliance.secret import Secret
from appliance.store import copy
from appliance.store.base import CommitHooks, H, Params, Row, Step, to_the_end
from appliance.store.listeners import Listeners
from appliance.store.migrations import LATEST, MIGRATIONS
from appliance.store.placeholders import to_numbered

T = TypeVar("T")
log = logging.getLogger("appliance.store")

# One constant for the whole cluster: every write of every instance takes this lock first.
WRITE_LOCK = 0x6170706C_73746F72  # "applstor"
MIGRATION_LOCK = WRITE_LOCK + 1  # held (per session) while one instance migrates
CHANNEL = "appliance_store"
READERS = 4
CONNECT_TIMEOUT = 10.0
POLL_SECONDS = 1.0
STALE_SECONDS = 3.0

_BEGIN = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
_BEGIN_NOT_DURABLE = (f"BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = off;"
                      f" SELECT pg_advisory_xact_lock({WRITE_LOCK})")
_BUMP = (f"WITH bumped AS (UPDATE store_clock SET clock = clock + 1 WHERE id = 1"
         f" RETURNING clock)"
         f" SELECT clock, pg_notify('{CHANNEL}', $1 || ' ' || clock) FROM bumped")
_PLAIN_INSERT = re.compile(r"\s*INSERT\s+INTO\b(?!.*\b(?:ON\s+CONFLICT|SELECT)\b)",
                           re.IGNORECASE | re.DOTALL)
_COUNT = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class PostgresTarget:
    """Where the store is and how to reach it (the password stays a `Secret`)."""

    host: str
    port: int
    user: str
    database: str
    tls: str
    ca_file: Path | None
    password: Secret[str] | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.database}"


class _Transaction:
    """`Transaction` over the writer connection, inside the write lock."""

    __slots__ = ("_conn", "hooks")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.hooks = CommitHooks()

    def hook(self, key: object, make: Callable[[], H]) -> H:
        return self.hooks.get(key, make)

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            return _count(await self._conn.execute(to_numbered(sql), *params))
        except Exception as exc:
            raise _failed("write", exc) from None

    async def insert(self, sql: str, params: Params = ()) -> None:
        await self.execute(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        try:
            row = await self._conn.fetchrow(to_numbered(sql), *params)
        except Exception as exc:
            raise _failed("write", exc) from None
        return dict(row) if row is not None else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            rows = await self._conn.fetch(to_numbered(sql), *params)
        except Exception as exc:
            raise _failed("write", exc) from None
        return [dict(row) for row in rows]

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """A plain INSERT … VALUES changes one row per parameter row (or raises): one pipelined
        round trip; anything else (an INSERT … SELECT may insert none) statement by statement,
        for the exact count."""
        batch = [tuple(row) for row in rows]
        if not batch:
            return 0
        try:
            if _PLAIN_INSERT.match(sql):
                await self._conn.executemany(to_numbered(sql), batch)
                return len(batch)
            total = 0
            for row in batch:
                total += _count(await self._conn.execute(to_numbered(sql), *row))
            return total
        except Exception as exc:
            raise _failed("write", exc) from None


class _Step:
    """`Step` for `write`'s function on a worker thread: each call runs on the event loop
    (`run_coroutine_threadsafe`) and returns before the next."""

    __slots__ = ("_loop", "_open", "_tx")

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._tx = _Transaction(conn)
        self._loop = loop
        self._open = True

    def _run(self, coro: Any) -> Any:
        if not self._open:
            coro.close()
            raise StoreError("store write cancelled")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._open = False

    def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self._run(self._tx.fetch_one(sql, params))
        return row

    def insert(self, sql: str, params: Params = ()) -> None:
        self._run(self._tx.execute(sql, params))

    def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        count: int = self._run(self._tx.execute_many(sql, rows))
        return count


class PostgresStore:
    """Readers (at most `READERS`, opened on demand), one writer, one listener, and the watch
    task that keeps `version()` current. Every connection is made again after it breaks."""

    bridged_writes = True  # `write`'s function runs on a worker thread, each step a hop

    def __init__(self, target: PostgresTarget, dialer: Dialer) -> None:
        self.target = target
        self._dialer = dialer
        self._idle: list[Any] = []
        self._readers = asyncio.Semaphore(READERS)
        self._writer: Any = None
        self._write_lock = asyncio.Lock()
        self._token = secrets.token_hex(8)  # this process's notifications, told from others'
        self._epoch = 0
        self._seen_clock: int | None = None
        self._synced_at = time.monotonic()
        self._listener: Any = None
        self._listeners = Listeners("store-postgres-listeners")
        self._wake = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._watch_failing = False
        self._closed = False
        self._idle_closed = False  # `close` has taken the idle connections: none is kept now

    def __repr__(self) -> str:
        return f"<PostgresStore {self.target}>"

    # --- connections ------------------------------------------------------------------------

    async def connect(self) -> Any:
        """A new connection to the store (through the dialer), or `StoreUnavailable`; never
        once the store is closed (a late read or write would open a connection nobody closes)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        target = self.target
        try:
            return await postgres_auth.connect(
                self._dialer, host=target.host, port=target.port, user=target.user,
                password=target.password.reveal() if target.password is not None else "",
                database=target.database, tls=target.tls, ca_file=target.ca_file,
                purpose="store", timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": "appliance-store"})
        except Exception as exc:
            raise connect_error(target, exc) from None

    async def _read(self, run: Callable[[Any], Awaitable[T]]) -> T:
        """`run(connection)` on a reader. A connection that broke while it sat idle (a restart,
        a failover, an idle timeout) is dropped and the read tried once more on a new one:
        reads are idempotent."""
        for attempt in (1, 2):
            async with self._readers:
                fresh = not self._idle
                conn = await self.connect() if fresh else self._idle.pop()
                try:
                    result = await run(conn)
                except Exception as exc:
                    if _reusable(conn, exc):
                        self._give_back(conn)
                    else:
                        conn.terminate()
                    if fresh or attempt == 2 or not isinstance(exc, _CONNECTION_ERRORS):
                        raise _failed("read", exc) from None
                    continue
                except BaseException:
                    conn.terminate()
                    raise
                self._give_back(conn)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_back(self, conn: Any) -> None:
        """A reader's connection, idle again; terminated if the store's close has already
        closed the idle ones while it was in use (or connecting): nobody would close it."""
        if self._idle_closed:
            conn.terminate()
        else:
            self._idle.append(conn)

    async def _writer_conn(self) -> Any:
        if self._writer is None or self._writer.is_closed():
            self._writer = await self.connect()
        return self._writer

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.terminate()  # the server rolls back what was open and frees the lock

    # --- reads ------------------------------------------------------------------------------

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        text = to_numbered(sql)
        row = await self._read(lambda conn: conn.fetchrow(text, *params))
        return dict(row) if row is not None else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        text = to_numbered(sql)
        rows = await self._read(lambda conn: conn.fetch(text, *params))
        return [dict(row) for row in rows]

    async def fetch_tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        text = to_numbered(sql)
        rows = await self._read(lambda conn: conn.fetch(text, *params))
        return [tuple(row) for row in rows]

    async def lookup(self, sql: str, params: Params = ()) -> Row | None:
        return await self.fetch_one(sql, params)

    async def search(self, sql: str, params: Params = ()) -> list[Row]:
        """`fetch_all`, planned for these values: a read-only transaction whose
        `plan_cache_mode` (for it alone) makes the cached prepared statement take a custom plan
        each time. Measured on an audit page for an actor with no entries (docs/performance.md):
        the generic plan read 100,000 rows by the primary key (38-54 ms), the custom one the
        actor's index (0.03 ms). Three more round trips (BEGIN, SET, COMMIT): for admin reads."""
        text = to_numbered(sql)

        async def run(conn: Any) -> list[Any]:
            async with conn.transaction(readonly=True):
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                return list(await conn.fetch(text, *params))

        return [dict(row) for row in await self._read(run)]

    # --- writes -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[_Transaction]:
        """On the event loop, no thread: BEGIN and the write lock (one round trip), each
        statement of the block, then (durable) the clock's bump and COMMIT. A caller cancelled
        once its block ended waits for the COMMIT's answer (`CommitHooks.finish`): cut short, it
        would drop the connection, and whether the server committed would be unknown."""
        async with self._write_lock:
            conn = await self._begin(_BEGIN if durable else _BEGIN_NOT_DURABLE)
            tx = _Transaction(conn)
            try:
                yield tx
            except BaseException:
                await self._rollback(conn)
                raise
            await tx.hooks.finish(functools.partial(self._commit, conn, durable=durable),
                                  functools.partial(self._rollback, conn))

    async def write(self, fn: Callable[[Step], T], *, durable: bool = True,
                    blocking: bool = False) -> T:
        """`fn(step)` on a worker thread (whatever `blocking` says) inside one transaction; each
        step call is run on the event loop. If the caller is cancelled while `fn` runs, its
        current call finishes first and the transaction is abandoned with its connection (the
        server rolls it back); cancelled at COMMIT, it waits for the COMMIT's answer (cut short,
        it would drop the connection, and whether the server committed would be unknown)."""
        async with self._write_lock:
            conn = await self._begin(_BEGIN if durable else _BEGIN_NOT_DURABLE)
            loop = asyncio.get_running_loop()
            step = _Step(conn, loop)
            running = loop.run_in_executor(None, fn, step)
            try:
                result = await asyncio.shield(running)
            except asyncio.CancelledError:
                step.close()
                with contextlib.suppress(BaseException):
                    await running
                self._drop_writer()
                raise
            except BaseException:
                await self._rollback(conn)
                raise
            await to_the_end(self._commit(conn, durable=durable))
            return result

    async def _begin(self, begin: str) -> Any:
        """BEGIN and the write lock on the writer; a writer that broke since its last use is
        replaced once (nothing of this write was sent yet)."""
        for attempt in (1, 2):
            fresh = self._writer is None or self._writer.is_closed()
            conn = await self._writer_conn()
            try:
                await conn.execute(begin)
                return conn
            except BaseException as exc:
                self._drop_writer()
                if not isinstance(exc, Exception):
                    raise
                if fresh or attempt == 2 or not isinstance(exc, _CONNECTION_ERRORS):
                    raise _failed("write", exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _commit(self, conn: Any, *, durable: bool) -> None:
        try:
            clock = None
            if durable:
                clock = await conn.fetchval(_BUMP, self._token)
            await conn.execute("COMMIT")
        except BaseException as exc:
            self._drop_writer()
            if isinstance(exc, Exception):
                raise _failed("commit", exc) from None
            raise
        if clock is not None:
            self._committed(int(clock))

    async def _rollback(self, conn: Any) -> None:
        try:
            await conn.execute("ROLLBACK")
        except BaseException:
            self._drop_writer()

    # --- the clock --------------------------------------------------------------------------

    def version(self) -> int | None:
        if time.monotonic() - self._synced_at > STALE_SECONDS:
            return None  # neither the listener nor the poll heard from the store lately
        return self._epoch

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Called when another instance's durable commit is seen (notification or poll)."""
        return self._listeners.add(callback)

    def _committed(self, clock: int) -> None:
        """This process's own durable commit moved the clock to `clock`."""
        self._epoch += 1
        seen = self._seen_clock
        self._seen_clock = clock if seen is None else max(seen, clock)
        if seen is not None and clock > seen + 1:  # another instance committed in between
            self._listeners.fire()

    def _observe(self, clock: int) -> None:
        """Another instance's commit (or our own, seen by the poll) moved the clock to `clock`."""
        self._synced_at = time.monotonic()
        seen = self._seen_clock
        if seen is None:
            self._seen_clock = clock
            return
        if clock > seen:
            self._seen_clock = clock
            self._epoch += 1
            self._listeners.fire()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        token, _, clock = payload.partition(" ")
        if token == self._token or not clock.isdigit():
            return
        self._observe(int(clock))

    def _on_listener_lost(self, conn: Any) -> None:
        self._wake.set()  # reconnect at once, then poll for what was missed

    async def start(self) -> None:
        """Listen, read the clock once, then keep `version()` current until `close()`."""
        await self._listen()
        await self._poll()
        self._watch = asyncio.get_running_loop().create_task(self._watching(),
                                                             name="store-postgres-watch")

    async def _watching(self) -> None:
        while not self._closed:
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                async with asyncio.timeout(POLL_SECONDS * 2):
                    await self._poll()
                if self._watch_failing:
                    log.info("store reachable again", extra={"store": str(self.target)})
                self._watch_failing = False
            except Exception as exc:
                if not self._watch_failing:
                    log.warning("store unreachable; retrying every second",
                                extra={"store": str(self.target),
                                       "error": getattr(exc, "message", type(exc).__name__)})
                self._watch_failing = True
            if self._closed:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    async def _listen(self) -> None:
        old, self._listener = self._listener, None
        if old is not None:
            old.terminate()
        conn = await self.connect()
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    async def _poll(self) -> None:
        row = await self.fetch_one("SELECT clock FROM store_clock WHERE id = 1")
        if row is None:
            raise StoreError("the store has no clock row (store_clock)")
        self._observe(int(row["clock"]))

    # --- the rest of the protocol -----------------------------------------------------------

    async def snapshot(self, to: Path) -> None:
        """Every table, as one REPEATABLE READ, read-only transaction sees them, into the new
        SQLite file `to` (0600) at the same schema version: backups keep one format."""
        from appliance.store.sqlite import open_sqlite_store

        if to.exists():
            raise FileExistsError(f"snapshot target {to} already exists")
        version = await self.schema_version()
        if version != LATEST:
            raise StoreError(f"the store is at schema version {version}, this appliance "
                             f"writes {LATEST}: start `appliance serve` once to migrate")
        conn = await self.connect()
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                target = await open_sqlite_store(to)
                try:
                    tables = await copy.sqlite_tables_in_order(target)
                    await copy.copy_tables(_Snapshot(conn), target, tables)
                finally:
                    await target.close()
        except BaseException as exc:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{to}{suffix}")
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise _failed("snapshot", exc) from None
            raise
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
        await asyncio.to_thread(_single_file, to)

    async def schema_version(self) -> int:
        row = await self.fetch_one("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        return int(row["v"]) if row else 0

    async def ping(self) -> None:
        await self.fetch_one("SELECT 1 AS ok")

    async def close(self) -> None:
        self._closed = True
        await self._listeners.close()
        task, self._watch = self._watch, None
        if task is not None:
            # Let the watcher finish the poll it may be in (it stops when it sees `_closed`):
            # cancelled inside a read, its connection would be terminated under a pending
            # query, whose future then fails unretrieved ("Future exception was never
            # retrieved" on a verb's stderr). Cancelled if it is not done within 2 s (a store
            # that does not answer), as the connections below are.
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=2)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._write_lock:
            conns = [self._listener, self._writer, *self._idle]
            self._listener = self._writer = None
            self._idle = []
            self._idle_closed = True
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
                if not conn.is_closed():
                    conn.terminate()


class _Snapshot:
    """`copy.RowSource` over one connection inside its REPEATABLE READ transaction."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def tables(self) -> set[str]:
        rows = await self._conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
        return {str(r["table_name"]) for r in rows}

    async def batches(self, table: str, size: int) -> AsyncIterator[list[Row]]:
        batch: list[Row] = []
        async for record in self._conn.cursor(f'SELECT * FROM "{table}"', prefetch=size):
            batch.append(dict(record))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


def _single_file(path: Path) -> None:
    """A rollback-journal database with nothing beside it, as SQLite's own snapshot leaves."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


# --- opening ------------------------------------------------------------------------------------


async def open_postgres_store(target: PostgresTarget, dialer: Dialer, *, migrate: bool = True,
                              must_exist: bool = False) -> PostgresStore:
    """Connect, check the schema (bringing it to the latest version with `migrate`, under an
    advisory lock), and start watching the clock. `StoreUnavailable` says what is wrong."""
    store = PostgresStore(target, dialer)
    try:
        conn = await store.connect()
        try:
            if migrate and not must_exist:
                await _migrate(conn, str(target))
            else:
                await _check_schema(conn, str(target), migrate=migrate)
        except Exception as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreUnavailable(f"the store {target} cannot be prepared: SQLSTATE "
                                   f"{getattr(exc, 'sqlstate', '?')} ({type(exc).__name__})"
                                   ) from None
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
        if await store.schema_version() >= 8:
            await store.start()
    except BaseException:
        await store.close()
        raise
    return store


async def _schema_version(conn: Any) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))


async def _check_schema(conn: Any, where: str, *, migrate: bool) -> None:
    current = await _schema_version(conn)
    if current == 0:
        raise StoreUnavailable(f"the store {where} holds no appliance schema; run "
                               "`appliance init` with this [store] url first")
    if current > LATEST:
        raise _newer(where, current)
    if migrate and current < LATEST:
        await _migrate(conn, where)


async def _migrate(conn: Any, where: str) -> None:
    """Each missing migration in its own transaction, all under `MIGRATION_LOCK` (two instances
    starting at once: the second finds the work done); each also takes the write lock, so no
    instance's write runs halfway through a migration."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        current = await _schema_version(conn)
        if current > LATEST:
            raise _newer(where, current)
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                    for statement in migration.for_dialect("postgresql"):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at)"
                        " VALUES ($1, $2, $3)", migration.version, migration.name, time.time())
            except asyncpg.PostgresError as exc:
                # DDL errors name objects and features, never a row's values.
                raise StoreUnavailable(
                    f"the store {where}: migration {migration.version} ({migration.name}) "
                    f"failed: {exc.sqlstate} {exc.args[0] if exc.args else ''}".rstrip()
                    + _migration_hint(exc)) from None
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


def _migration_hint(exc: Exception) -> str:
    if "ICU" in str(exc):
        return ("; the store needs a PostgreSQL built with ICU (for its case-insensitive "
                "names)")
    if getattr(exc, "sqlstate", "") == "42501":
        return "; the store's user must own the database (or be granted CREATE on its schema)"
    return ""


def _newer(where: str, current: int) -> StoreUnavailable:
    return StoreUnavailable(
        f"the store {where} is at schema version {current}, newer than this appliance knows "
        f"({LATEST}); run the newer appliance, or restore a backup")


# --- errors -------------------------------------------------------------------------------------


def connect_error(target: PostgresTarget, exc: Exception) -> StoreUnavailable:
    """One line for a failed connection: what failed and what to change; never the password."""
    where = f"cannot connect to the store {target}"
    if isinstance(exc, EgressDenied):
        return StoreUnavailable(f"{where}: {exc.message} (the store's connections pass the "
                                "egress policy: allow its host and port in [egress])")
    if isinstance(exc, EgressUnreachable | EgressTimeout):
        return StoreUnavailable(f"{where}: {exc.message}")
    if isinstance(exc, postgres_auth.AuthMethodRefused):
        return StoreUnavailable(
            f"{where}: {exc} (store.tls = {target.tls}); the password was not sent. Use "
            "scram-sha-256 for this user in pg_hba.conf, or store.tls = verify-full")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # a wrong password too
        return StoreUnavailable(
            f"{where}: authentication failed for user {target.user!r} (check store.password_file"
            " or the systemd credential store-password, and pg_hba.conf)")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StoreUnavailable(f"{where}: database {target.database!r} does not exist")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StoreUnavailable(
            f"{where}: the server's TLS certificate is not trusted "
            f"({exc.verify_message or exc.reason}); set store.ca_file to the CA that signed it")
    if isinstance(exc, ssl.SSLError):
        return StoreUnavailable(f"{where}: TLS failed ({exc.reason or type(exc).__name__})")
    if isinstance(exc, asyncpg.PostgresError):
        return StoreUnavailable(f"{where}: the server refused the connection (SQLSTATE "
                                f"{exc.sqlstate}: {exc.args[0] if exc.args else ''})")
    text = str(exc)
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in text:
        return StoreUnavailable(
            f"{where}: the server does not offer TLS (store.tls = {target.tls}); enable ssl on "
            "the server, or set store.tls")
    if isinstance(exc, TimeoutError):
        return StoreUnavailable(f"{where}: no answer within {CONNECT_TIMEOUT:g} s")
    if isinstance(exc, OSError) and exc.strerror:
        return StoreUnavailable(f"{where}: {exc.strerror}")
    return StoreUnavailable(f"{where}: the server did not answer as PostgreSQL does "
                            f"({type(exc).__name__})")


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError,
    TimeoutError,
    asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CannotConnectNowError)


def _failed(what: str, exc: Exception) -> StoreError:
    """A store error for a failed statement: SQLSTATE and class, never the server's text (it
    quotes values)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, _CONNECTION_ERRORS):
        return StoreUnavailable(f"store {what} failed: the connection to the store was lost "
                                f"({type(exc).__name__}); it is made again at the next use")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return StoreError(f"store {what} failed: SQLSTATE {sqlstate} ({type(exc).__name__})")
    return StoreError(f"store {what} failed ({type(exc).__name__})")


def _reusable(conn: Any, exc: BaseException) -> bool:
    """After an error: a statement the server refused leaves the connection usable."""
    return (isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _CONNECTION_ERRORS)
            and not conn.is_closed() and not conn.is_in_transaction())


def _count(status: str) -> int:
    """Rows changed, from a command tag (`UPDATE 3`, `INSERT 0 1`, `DELETE 0`)."""
    match = _COUNT.search(status or "")
    return int(match.group(1)) if match else 0
