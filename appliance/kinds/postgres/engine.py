"""The PostgreSQL engine: a pool of asyncpg connections per datasource (`pool`: the appliance's
pool with PostgreSQL's reset) whose every connection goes through the egress dialer; statements
run as server-side prepared statements with their values bound.

Owns the pool, connection parameters (all explicit, so asyncpg never reads PG* variables) and the
translation of asyncpg's errors. Never logs a value or a row, and never passes the text of a
statement's error on (server and client-side messages quote values: see `errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import asyncpg

from appliance.datasources.config import CONNECT_TIMEOUT
from appliance.datasources.engine import RowStream, Target
from appliance.datasources.errors import (
    DatasourceAuthFailed,
    DatasourceAuthRefused,
    DatasourceTimeout,
    DatasourceTLSError,
    DatasourceUnreachable,
    tls_problem,
)
from appliance.datasources.pool import PooledEngine
from appliance.egress import Dialer, postgres_auth
from appliance.kinds.postgres.asyncpg_private import fetch_at_most
from appliance.kinds.postgres.errors import encoding_failure, query_failed
from appliance.kinds.postgres.pool import ConnectionPool
from appliance.kinds.sql.binding import BoundStatement
from appliance.queries.result_json import iso_seconds

STREAM_BATCH = 1000


class PostgresEngine(PooledEngine[Any]):
    def __init__(self, target: Target, dialer: Dialer) -> None:
        super().__init__(target)
        self._dialer = dialer

    async def _connect(self) -> Any:
        """The pool's connect function: the one place this engine opens a connection.

        Unless TLS is verified, a guard reads the server's authentication requests first and
        refuses a cleartext (or, without `allow_md5`, an MD5) one before the password is sent."""
        config = self.target.config
        password = self.target.secret("password")
        timeout_ms = self.target.limits.statement_timeout_ms
        tls = str(config["tls"])
        try:
            conn = await postgres_auth.connect(
                self._dialer, host=str(config["host"]), port=int(config["port"]),
                datasource=self.target.id, timeout=CONNECT_TIMEOUT, purpose="postgres",
                user=str(config["user"]), password=password if password is not None else "",
                database=str(config["database"]), tls=tls,
                allow_md5=config.get("allow_md5") is True,
                server_settings={"application_name": "appliance",
                                 "statement_timeout": str(timeout_ms)},
                statement_cache_size=256,
            )
        except postgres_auth.AuthMethodRefused as refused:
            raise self._refused(refused, tls) from None
        try:
            for name in ("json", "jsonb"):  # results as JSON values; json parameters are text
                await conn.set_type_codec(name, encoder=str, decoder=json.loads,
                                          schema="pg_catalog")
            # Intervals as PostgreSQL holds them (months, days, microseconds): asyncpg's own
            # decoder counts a month as 30 days and overflows silently on large ones.
            await conn.set_type_codec("interval", encoder=_interval_in, decoder=_interval_out,
                                      schema="pg_catalog", format="tuple")
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _refused(self, refused: postgres_auth.AuthMethodRefused, tls: str
                 ) -> DatasourceAuthRefused:
        if refused.code is None:  # malformed: not a method to advise on
            return DatasourceAuthRefused(self.name, f"{refused}; the password was not sent")
        fixes = "set password_encryption = 'scram-sha-256' on the server, set the user's " \
                "password again and use scram-sha-256 in pg_hba.conf, or use tls = verify-full"
        if refused.code == postgres_auth.MD5:
            fixes += ", or set allow_md5 = true on this datasource"
        return DatasourceAuthRefused(
            self.name, f"{refused} (tls = {tls}); the password was not sent. To connect, {fixes}")

    def new_pool(self) -> ConnectionPool:
        return ConnectionPool(self._connect, policy=self._dialer.policy,
                              max_size=self.target.limits.max_connections,
                              reset_timeout=CONNECT_TIMEOUT, name=self.name)

    async def probe(self) -> None:
        conn = await self._connect()
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def open(self, bound: BoundStatement, *, timeout: float, fetch: int,
                   stream: bool = False) -> AsyncIterator[RowStream]:
        pool, conn = await self.acquire(timeout)
        try:
            if stream:
                async with self._streamed(conn, bound, timeout=timeout, fetch=fetch) as rows:
                    yield rows
                return
            columns, found = await self._answer(conn, bound, fetch, timeout)
            yield RowStream(columns, _one_batch(found))
        finally:
            pool.release(conn)

    async def collect(self, bound: BoundStatement, *, timeout: float, fetch: int,
                      take: Callable[[list[Any]], bool]) -> list[str]:
        """The whole answer in one round trip; the connection goes back before rows are
        encoded."""
        pool, conn = await self.acquire(timeout)
        try:
            columns, found = await self._answer(conn, bound, fetch, timeout)
        finally:
            pool.release(conn)
        if found:
            take(found)
        return columns

    async def _answer(self, conn: Any, bound: BoundStatement, fetch: int, timeout: float
                      ) -> tuple[list[str], list[Any]]:
        try:
            # At most `fetch` rows in one round trip (asyncpg's private `_execute`, quarantined).
            found = await fetch_at_most(conn, bound.sql, bound.values, fetch, timeout)
            if found:
                return list(found[0].keys()), found
            statement = await conn.prepare(bound.sql, timeout=timeout)
            return [a.name for a in statement.get_attributes()], found
        except BaseException as exc:
            raise self.translate(exc, timeout, "answer", bound.identifiers) from None

    @contextlib.asynccontextmanager
    async def _streamed(self, conn: Any, bound: BoundStatement, *, timeout: float, fetch: int
                        ) -> AsyncIterator[RowStream]:
        """Rows read through a cursor, inside a transaction committed at the end."""
        transaction = conn.transaction()
        try:
            await transaction.start()
            statement = await conn.prepare(bound.sql, timeout=timeout)
            columns = [a.name for a in statement.get_attributes()]
            cursor = await statement.cursor(*bound.values, timeout=timeout)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise self.translate(exc, timeout, "answer", bound.identifiers) from None
        try:
            yield RowStream(columns, self._batches(cursor, fetch, timeout, bound.identifiers))
        except BaseException:
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise
        try:
            await transaction.commit()  # a statement that writes keeps its effect
        except BaseException as exc:
            raise self.translate(exc, timeout, "answer", bound.identifiers) from None

    async def _batches(self, cursor: Any, fetch: int, timeout: float,
                       identifiers: tuple[str, ...]) -> AsyncIterator[list[Any]]:
        remaining = fetch
        while remaining > 0:
            try:
                batch = await cursor.fetch(min(STREAM_BATCH, remaining), timeout=timeout)
            except BaseException as exc:
                raise self.translate(exc, timeout, "answer", identifiers) from None
            if not batch:
                return
            remaining -= len(batch)
            yield batch

    def driver_failure(self, exc: BaseException, timeout: float, what: str,
                       identifiers: tuple[str, ...]) -> BaseException:
        name = self.name
        if isinstance(exc, asyncpg.InvalidPasswordError):
            return DatasourceAuthFailed(name, "authentication failed (user or password refused)")
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            return DatasourceAuthFailed(
                name, "authentication failed (the server does not accept this user, database "
                      "or source address: pg_hba.conf)")
        if isinstance(exc, asyncpg.QueryCanceledError):
            return DatasourceTimeout(name, timeout, "finish the statement")
        if isinstance(exc, TimeoutError):
            return DatasourceTimeout(name, timeout, what)
        if isinstance(exc, ssl.SSLError):
            return DatasourceTLSError(name, tls_problem(exc))
        if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
            return DatasourceTLSError(name, "the server does not offer TLS")
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            # Client-side encoding: asyncpg raises the server's class (asyncpg.DataError,
            # SQLSTATE 22000) with a message quoting the value; only $n is kept.
            encoding = encoding_failure(name, exc)
            if encoding is not None:
                return encoding
        if isinstance(exc, asyncpg.TooManyConnectionsError | asyncpg.CannotConnectNowError):
            return DatasourceUnreachable(name, "refusing connections (too many, or starting up)")
        if isinstance(exc, asyncpg.PostgresError):
            if what == "connect":
                return DatasourceUnreachable(
                    name, f"refusing the connection: {exc.args[0] if exc.args else ''} "
                          f"(SQLSTATE {exc.sqlstate})")
            return query_failed(name, exc, identifiers)
        if isinstance(exc, asyncpg.InterfaceError | ConnectionError | OSError):
            return DatasourceUnreachable(name, "unreachable (the connection was lost)")
        return DatasourceUnreachable(name, f"unreachable ({type(exc).__name__})")


async def _one_batch(rows: list[Any]) -> AsyncIterator[list[Any]]:
    if rows:
        yield rows


_DAY_MICROS: Final = 86_400_000_000


def _interval_out(value: tuple[int, int, int]) -> str:
    """An interval result, exactly: its months apart, its days and time as seconds (a day of an
    interval is 24 hours here, as PostgreSQL's `extract(epoch …)` counts it)."""
    months, days, micros = value
    return iso_seconds(days * _DAY_MICROS + micros, months=months)


def _interval_in(value: object) -> tuple[int, int, int]:
    """An interval parameter: a `timedelta` (the driver's own type), as days and microseconds."""
    if not isinstance(value, dt.timedelta):
        raise TypeError(f"an interval parameter must be a duration, not {type(value).__name__}")
    return (0, value.days, value.seconds * 1_000_000 + value.microseconds)
