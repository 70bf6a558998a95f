"""The MySQL/MariaDB engine: a pool of asyncmy connections per datasource, each opened on a socket
from the egress dialer, each reset (COM_RESET_CONNECTION, its settings set again) before the next
run gets it; every statement a server-side prepared statement (COM_STMT_PREPARE/EXECUTE), an
answer read as the server sends it, a stream through a server-side cursor (COM_STMT_FETCH), a
batch at a time.

Owns the connection options (TLS, LOAD DATA LOCAL off, the session's settings), the time limit
(the server's own, and KILL QUERY from a second connection when the client's passes) and the
translation of asyncmy's errors. Never logs a value or a row, never sends a value in SQL text,
and never passes a server error's message on (MySQL quotes values there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from asyncmy import errors as asyncmy_errors

from appliance.datasources.config import CONNECT_TIMEOUT
from appliance.datasources.engine import RowStream, Target
from appliance.datasources.errors import (
    DatasourceAuthFailed,
    DatasourceAuthRefused,
    DatasourceTimeout,
    DatasourceTLSError,
    DatasourceUnreachable,
    QueryFailed,
    tls_problem,
)
from appliance.datasources.pool import ConnectionPool, PooledEngine
from appliance.egress import Dialer
from appliance.egress.postgres_auth import tls_context
from appliance.kinds.mysql.asyncmy_private import (
    DialedConnection,
    Execution,
    ServerRefusedTLS,
    apply_settings,
    execute,
    reset_session,
)
from appliance.kinds.sql.binding import BoundStatement

T = TypeVar("T")
STREAM_BATCH: Final = 1000
_JSON, _BIT, _LONGLONG = 245, 16, 8  # asyncmy's FIELD_TYPE codes that need a JSON form here
_EXACT_INT: Final = 2**53  # beyond it a JSON number loses digits in a browser: sent as text

# A fixed sentence per MySQL/MariaDB error number (the message itself may quote values).
SENTENCES: Final[dict[int, str]] = {
    1044: "access to the database was denied",
    1046: "no database is selected",
    1048: "a NOT NULL column would get NULL",
    1054: "a column named in the statement does not exist",
    1062: "a unique key would be violated (the key exists)",
    1064: "syntax error",
    1142: "permission denied for this statement on a table",
    1143: "permission denied for a column",
    1146: "a table named in the statement does not exist",
    1148: "the command is not allowed (LOAD DATA LOCAL is always off)",
    1210: "wrong arguments for the statement",
    1264: "a number is out of the range of its column",
    1292: "a value is not valid for its type",
    1295: "the statement cannot be a prepared statement",
    1365: "division by zero",
    1366: "a value is not valid for its column",
    1406: "a value is too long for its column",
    1451: "a row still referenced by a foreign key would go",
    1452: "a foreign key would point at no row",
    1792: "the datasource is read-only (set read_only = false on it to allow writes)",
    3140: "a JSON value is not valid",
    4025: "a check constraint would be violated",
}
_TIMED_OUT: Final = frozenset({1317, 1969, 3024})  # interrupted; MariaDB's, MySQL's time limit
_LOST: Final = frozenset({2006, 2013, 2055, 1927, 1053})  # gone away, lost, killed, shutdown
_AUTH: Final = frozenset({1045, 1698, 2059})


class SessionPool(ConnectionPool[DialedConnection]):
    """The appliance's pool (`datasources.pool`) of asyncmy connections, each reset with
    COM_RESET_CONNECTION when it comes back (user variables, temporary tables, session settings,
    prepared statements, an open transaction, locks) and its session's settings set again, both
    in one round trip, in the pool's release task: after the run's answer is on its way, before
    anyone else can take the connection. An answer read without a cursor sent both in its
    execute's write (the server resets the session as soon as the statement ends): the release
    task then reads their answers only."""

    async def reset(self, conn: DialedConnection, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await reset_session(conn, conn.settings)

    async def close_politely(self, conn: DialedConnection, timeout: float) -> None:
        """COM_QUIT, then the socket closed."""
        async with asyncio.timeout(timeout):
            await conn.ensure_closed()


class MysqlEngine(PooledEngine[DialedConnection]):
    def __init__(self, target: Target, dialer: Dialer) -> None:
        super().__init__(target)
        self._dialer = dialer

    # -- connections -------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext | None:
        context = tls_context(str(self.target.config["tls"]))
        return context if isinstance(context, ssl.SSLContext) else None

    def _setup(self, mariadb: bool) -> str:
        """The session's settings, set after connecting and after every reset. Constants and an
        integer only: no value of a run ever reaches this text."""
        seconds = self.target.limits.statement_timeout_ms / 1000
        limit = (f"max_statement_time = {seconds:.3f}" if mariadb
                 else f"max_execution_time = {self.target.limits.statement_timeout_ms}")
        access = "READ ONLY" if self.target.config.get("read_only", True) is not False \
            else "READ WRITE"
        return (f"SET SESSION TRANSACTION {access};"
                f"SET NAMES utf8mb4, time_zone = '+00:00', autocommit = 1, {limit}")

    async def _open_connection(self) -> DialedConnection:
        """One asyncmy connection through the dialer; the password is sent only over verified
        TLS unless the datasource allows otherwise."""
        config = self.target.config
        tls = str(config["tls"])
        if tls != "verify-full" and config.get("allow_password_without_verified_tls") is not True:
            raise DatasourceAuthRefused(
                self.name, f"the password is sent only over verified TLS (tls = {tls}); it was "
                           "not sent. To connect, use tls = verify-full, or set "
                           "allow_password_without_verified_tls = true on this datasource")
        host, port = str(config["host"]), int(config["port"])
        sock, _checked = await self._dialer.open_socket(
            host, port, purpose="mysql", datasource=self.target.id, timeout=CONNECT_TIMEOUT)
        password = self.target.secret("password") or ""
        try:
            conn = DialedConnection(
                tls=self._tls(), host=host, port=port, sock=sock, user=str(config["user"]),
                password=password.encode("utf-8"), database=str(config["database"]),
                connect_timeout=CONNECT_TIMEOUT, autocommit=None, charset="utf8mb4",
                program_name="appliance")
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.connect()
        except BaseException:
            sock.close()
            raise
        return conn

    async def _connect(self) -> DialedConnection:
        """The pool's connect function: a connection with the session's settings."""
        conn = await self._open_connection()
        try:
            conn.mariadb = "MariaDB" in str(conn.get_server_info())
            conn.settings = self._setup(conn.mariadb)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await apply_settings(conn, conn.settings)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def new_pool(self) -> SessionPool:
        return SessionPool(self._connect, policy=self._dialer.policy,
                           max_size=self.target.limits.max_connections,
                           reset_timeout=CONNECT_TIMEOUT, name=self.name)

    async def probe(self) -> None:
        conn = await self._connect()
        try:
            await conn.ping(reconnect=False)
        finally:
            conn.terminate()

    # -- runs --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, bound: BoundStatement, *, timeout: float, fetch: int,
                   stream: bool = False) -> AsyncIterator[RowStream]:
        """The rows read through a server-side cursor, a batch per COM_STMT_FETCH, each when
        the caller wants it (back-pressure), streamed or not."""
        pool, conn = await self.acquire(timeout)
        try:
            run = await self._limited(conn, timeout, bound, self._execute(conn, bound, True))
            columns, convert = _columns(run)
            yield RowStream(columns, self._batches(conn, run, bound, timeout, fetch, convert))
        finally:
            pool.release(conn)

    async def collect(self, bound: BoundStatement, *, timeout: float, fetch: int,
                      take: Callable[[list[Any]], bool]) -> list[str]:
        columns, rows = await self._answer(bound, timeout, fetch)
        if rows:
            take(rows)
        return columns

    async def _answer(self, bound: BoundStatement, timeout: float, fetch: int
                      ) -> tuple[list[str], list[Any]]:
        """The columns and at most `fetch` rows, read without a cursor as the server sends them
        (on MariaDB the prepare and the execute go in one write: one round trip). The connection
        goes back before the rows are converted. When more rows are coming than wanted, the
        connection is closed (the server stops sending) rather than read to its end."""
        pool, conn = await self.acquire(timeout)
        try:
            run, rows = await self._limited(conn, timeout, bound, self._read(conn, bound, fetch))
            if not run.complete:
                conn.terminate()  # its reset then fails quietly and its slot is passed on
        finally:
            pool.release(conn)
        columns, convert = _columns(run)
        return columns, convert(rows) if rows else []

    async def _read(self, conn: DialedConnection, bound: BoundStatement, fetch: int
                    ) -> tuple[Execution, list[Any]]:
        run = await self._execute(conn, bound, False)
        return run, await run.read(max(1, fetch))

    def _execute(self, conn: DialedConnection, bound: BoundStatement, cursor: bool
                 ) -> Awaitable[Execution]:
        """An answer without a cursor takes the connection's reset along in the execute's
        write (the pool's reset then only reads its answers); a cursor's reset waits for the
        stream's end."""
        return execute(conn, bound.sql, tuple(bound.values), cursor=cursor,
                       pipeline=conn.mariadb, reset=None if cursor else conn.settings)

    async def _batches(self, conn: DialedConnection, run: Execution, bound: BoundStatement,
                       timeout: float, fetch: int,
                       convert: Callable[[Sequence[Any]], list[Any]]
                       ) -> AsyncIterator[list[Any]]:
        remaining = fetch
        while remaining > 0 and not run.done:  # each batch within `timeout`
            rows = await self._limited(conn, timeout, bound,
                                       run.fetch(min(STREAM_BATCH, remaining)))
            if not rows:
                return
            remaining -= len(rows)
            yield convert(rows)

    async def _limited(self, conn: DialedConnection, timeout: float, bound: BoundStatement,
                       step: Awaitable[T]) -> T:
        """Await one step of a run within `timeout`; when the time passes, or the run is
        cancelled, the statement is killed on the server (KILL QUERY from a second connection)
        and this connection is closed."""
        try:
            async with asyncio.timeout(timeout):
                return await step
        except TimeoutError:
            await self._kill(conn)
            raise DatasourceTimeout(self.name, timeout, "finish the statement") from None
        except asyncio.CancelledError:
            await asyncio.shield(self._kill(conn))
            raise
        except BaseException as exc:
            raise self.translate(exc, timeout, "answer", bound.identifiers) from None

    async def _kill(self, conn: DialedConnection) -> None:
        """KILL QUERY the session's statement from a new connection; close the session's."""
        thread_id = int(conn.thread_id())
        conn.terminate()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                killer = await self._open_connection()
                try:
                    await killer.query(f"KILL QUERY {thread_id:d}")
                finally:
                    killer.close()
        except Exception:  # noqa: S110 - the statement's own time limit ends it anyway
            pass

    # -- errors ------------------------------------------------------------------------------

    def driver_failure(self, exc: BaseException, timeout: float, what: str,
                       identifiers: tuple[str, ...]) -> BaseException:
        """A server error by its number, never its message."""
        name = self.name
        if isinstance(exc, asyncmy_errors.Error) and isinstance(exc.__cause__, ssl.SSLError):
            exc = exc.__cause__  # asyncmy wraps a failed handshake as "can't connect" (2003)
        if isinstance(exc, ServerRefusedTLS):
            return DatasourceTLSError(name, "the server does not offer TLS; the password was "
                                            "not sent")
        if isinstance(exc, TimeoutError):
            return DatasourceTimeout(name, timeout, what)
        if isinstance(exc, ssl.SSLError):
            return DatasourceTLSError(name, tls_problem(exc))
        if isinstance(exc, asyncmy_errors.Error):
            code = _code(exc)
            if code in _AUTH:
                return DatasourceAuthFailed(
                    name, "authentication failed (user, password, source address or the "
                          "account's TLS requirement refused)")
            if code in _TIMED_OUT:
                return DatasourceTimeout(name, timeout, "finish the statement")
            if code in _LOST or code == 2003 or what == "connect":
                return DatasourceUnreachable(
                    name, f"unreachable (MySQL error {code})" if code else "unreachable")
            return QueryFailed(name, SENTENCES.get(code, "the statement failed")
                               + (f" (MySQL error {code})" if code else ""), str(code or ""))
        if isinstance(exc, ConnectionError | OSError | RuntimeError):
            return DatasourceUnreachable(name, "unreachable (the connection was lost)")
        return DatasourceUnreachable(name, f"unreachable ({type(exc).__name__})")


def _code(exc: BaseException) -> int:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, int) and 0 < first < 100_000 else 0


def _columns(run: Execution) -> tuple[list[str], Callable[[Sequence[Any]], list[Any]]]:
    """The column names, and the rows' conversion to values `result_json` writes as the kind
    promises (docs/datasources.md): JSON parsed, BIT as an integer, integers beyond 2^53 as
    text. DECIMAL (Decimal), dates, times and bytes are left to `result_json`."""
    fixes: list[tuple[int, Callable[[Any], Any]]] = []
    for index, field in enumerate(run.fields):
        code = int(field.type_code)
        if code == _JSON:
            fixes.append((index, _json))
        elif code == _BIT:
            fixes.append((index, _bit))
        elif code == _LONGLONG:
            fixes.append((index, _wide))
    if not fixes:
        return run.columns, list

    def convert(rows: Sequence[Any]) -> list[Any]:
        out = []
        for row in rows:
            values = list(row)
            for index, fix in fixes:
                if values[index] is not None:
                    values[index] = fix(values[index])
            out.append(values)
        return out

    return run.columns, convert


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _bit(value: Any) -> Any:
    return _wide(int.from_bytes(value, "big")) if isinstance(value, bytes) else value


def _wide(value: Any) -> Any:
    return str(value) if isinstance(value, int) and abs(value) > _EXACT_INT else value
