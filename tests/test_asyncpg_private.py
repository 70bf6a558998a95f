"""asyncpg's private `Connection._execute`, the one private API of the PostgreSQL engine
(`appliance/kinds/postgres/asyncpg_private.py`): still there with the arguments we pass, still
stopping after the row limit, and the fallback giving the same answer without it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from appliance.kinds.postgres.asyncpg_private import fetch_at_most
from tests.conftest import PG_PASSWORD, PostgresServer

asyncpg = pytest.importorskip("asyncpg")

SQL = "SELECT g AS n FROM generate_series(1, $1::int) AS g"


def test_asyncpg_still_has_execute_with_our_arguments() -> None:
    execute = getattr(asyncpg.Connection, "_execute", None)
    assert execute is not None, (
        "asyncpg dropped Connection._execute: answered PostgreSQL runs now read every row and "
        "cut (appliance/kinds/postgres/asyncpg_private.py); find the new seam or drop the trick")
    names = list(inspect.signature(execute).parameters)
    assert names[:5] == ["self", "query", "args", "limit", "timeout"], names


async def _connect(pg: PostgresServer) -> Any:
    return await asyncpg.connect(host="127.0.0.1", port=pg.port, user="app",
                                 password=PG_PASSWORD, database="appdb")


async def test_at_most_the_limit_comes_back_with_and_without_the_private_api(
        postgres_server: PostgresServer) -> None:
    conn = await _connect(postgres_server)
    try:
        found = await fetch_at_most(conn, SQL, [10], 3, 5.0)
        assert [row["n"] for row in found] == [1, 2, 3]
        assert conn.is_in_transaction() is False

        class Public:  # a connection without the private method: the fallback
            def __init__(self, inner: Any) -> None:
                self.fetch = inner.fetch

        cut = await fetch_at_most(Public(conn), SQL, [10], 3, 5.0)
        assert [row["n"] for row in cut] == [1, 2, 3]
    finally:
        await conn.close()
