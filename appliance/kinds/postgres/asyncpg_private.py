"""The one private asyncpg API the appliance uses: `Connection._execute`, a statement's rows with
a row limit in one round trip.

Owns that access and its fallback. What it buys: a buffered answer of at most `limit` rows is one
Bind/Execute with a row limit, outside any transaction (the path asyncpg's own `fetchrow` takes),
so PostgreSQL stops after `limit` rows; the public API offers either every row (`fetch`, then cut:
a large table is read whole) or a cursor, which needs a transaction (BEGIN and COMMIT round trips).
The answered-run path of `bench/proxy.py` (docs/performance.md: c/d 0.86-0.97 at 32 in flight)
is measured with it.
`tests/test_asyncpg_private.py` fails loudly if asyncpg drops it or changes its signature; the
fallback keeps answers right (slower) meanwhile. Never logs a statement or a value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any


def fetch_at_most(conn: Any, sql: str, values: Sequence[Any], limit: int,
                  timeout: float) -> Awaitable[list[Any]]:
    """At most `limit` rows of `sql` with `values` bound, in one round trip. Returns the driver's
    awaitable itself (no coroutine of its own on the hot path)."""
    execute = getattr(conn, "_execute", None)
    if execute is not None:
        rows: Awaitable[list[Any]] = execute(sql, values, limit, timeout)
        return rows
    return _fetch_and_cut(conn, sql, values, limit, timeout)


async def _fetch_and_cut(conn: Any, sql: str, values: Sequence[Any], limit: int,
                         timeout: float) -> list[Any]:
    return list(await conn.fetch(sql, *values, timeout=timeout))[:limit]
