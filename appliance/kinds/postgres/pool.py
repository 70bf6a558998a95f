"""The PostgreSQL engine's connection pool: the appliance's pool (`datasources.pool`) of asyncpg
connections, with PostgreSQL's reset between runs (stricter than asyncpg's own: `RESET_STATEMENTS`)
and asyncpg's polite close.

Owns what a PostgreSQL connection is put through between runs. Runs no statement but the reset;
logs nothing (the pool logs a failed reset's exception type, never a statement or a value).
"""

from __future__ import annotations

from typing import Any

from appliance.datasources import pool
from appliance.datasources.pool import PoolClosed

__all__ = ["RESET_STATEMENTS", "ConnectionPool", "PoolClosed"]

Connection = Any  # an asyncpg.Connection (or a subclass the engine chose)

# What a connection is put through before the next run gets it, in one round trip (a transaction
# left open, or failed, is rolled back first). asyncpg's own reset query misses the first kind of
# state and the last two, and calls `pg_advisory_unlock_all()` by an unqualified name while the
# run's `search_path` is still in force (a function of that name in a schema of the run's
# choosing would run instead). Here:
# - the login user comes back first: `RESET ALL` leaves `SET ROLE` and `SET SESSION
#   AUTHORIZATION` in place;
# - then every setting, `search_path` included, before any function is called, and the function
#   by its qualified name (a user's own default `search_path` may name a schema of its choosing);
# - cursors, `LISTEN`, temporary tables and sequence state (`lastval`) go.
# Not `DISCARD ALL`: it would also drop the statements asyncpg prepared and keeps for each
# connection. Statements a run prepares with SQL `PREPARE` are therefore not dropped, and not
# looked for either: listing them (`pg_prepared_statements`) cost PostgreSQL about 40 us per run
# (docs/datasources.md says what that leaves open).
RESET_STATEMENTS = (
    "SET SESSION AUTHORIZATION DEFAULT;"
    "RESET ALL;"
    "SELECT pg_catalog.pg_advisory_unlock_all();"
    "CLOSE ALL;"
    "UNLISTEN *;"
    "DISCARD TEMP;"
    "DISCARD SEQUENCES;"
)


class ConnectionPool(pool.ConnectionPool[Connection]):
    """A pool of asyncpg connections (see `datasources.pool.ConnectionPool`), each put through
    `RESET_STATEMENTS` when it comes back. A cancellation asyncpg sent for a statement cut short
    is waited for first (asyncpg does that before any statement)."""

    async def reset(self, conn: Connection, timeout: float) -> None:
        statements = RESET_STATEMENTS
        if conn.is_in_transaction():  # left open or failed by the run: rolled back first
            statements = "ROLLBACK;" + statements
        await conn.execute(statements, timeout=timeout)

    async def close_politely(self, conn: Connection, timeout: float) -> None:
        """A Terminate message, then the socket closed."""
        await conn.close(timeout=timeout)
