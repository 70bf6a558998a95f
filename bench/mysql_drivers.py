"""MySQL/MariaDB driver benchmark for the MySQL kind (issue 23): which asyncio drivers send real
server-side prepared statements, and how fast each is on the same queries against a real MariaDB.

For each driver and protocol: (1) what the server received, read from its general log for one
point query whose value is a marker (`Prepare` + `Execute` = COM_STMT_PREPARE/COM_STMT_EXECUTE;
a `Query` line carrying the marker = the client interpolated the value into the SQL text);
(2) rows/s for a 1,000-row result (fetched whole), (3) q/s for a point query by primary key on
one connection, and (4) q/s for the same point query over 8 connections at once. The general log
is off while timing. The paths take turns in ROUNDS rounds, in an order rotated each round
(bench/proxy.py's `turns`); figures are per-round medians and the ratios are against aiomysql
(the issue's baseline) measured in the same run. Prints a Markdown table; never asserts.

Usage: python bench/mysql_drivers.py [--seconds S] [--rounds N]
Needs Debian's mariadb-server (run as `mysql` when root) and the drivers measured:
  pip install asyncmy aiomysql mysql-connector-python
(a driver that is not installed is reported as such and skipped). Connections are plain TCP on
127.0.0.1 with mysql_native_password (TLS costs every driver alike and is left out).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import turns  # bench/proxy.py (a script runs with bench/ first on its path)

ROWS_SQL = "SELECT id, name, amount, created FROM bench_rows WHERE id > ?"
POINT_SQL = "SELECT id, name, amount, created FROM bench_points WHERE id = ?"
POINTS = 10_000
CONCURRENCY = 8



@dataclass
class Candidate:
    """One driver in one protocol: how to connect, run the two queries and close."""

    name: str
    module: str  # the import that must exist
    protocol: str
    connect: Callable[[int], Awaitable[Any]]
    rows: Callable[[Any, int], Awaitable[Any]]
    point: Callable[[Any, int], Awaitable[Any]]
    close: Callable[[Any], Awaitable[None]]
    figures: dict[str, list[float]] = field(default_factory=dict)


def _text(sql: str) -> str:
    return sql.replace("?", "%s")


# -- asyncmy ----------------------------------------------------------------------------------

async def asyncmy_connect(port: int, prepared: bool) -> Any:
    import asyncmy

    from tests.support.mariadb import DATABASE, NATIVE_PASSWORD, NATIVE_USER

    conn = await asyncmy.connect(host="127.0.0.1", port=port, user=NATIVE_USER,
                                 password=NATIVE_PASSWORD, db=DATABASE, autocommit=True)
    if not prepared:
        return {"conn": conn}
    return {"conn": conn, "rows": await conn.prepare(ROWS_SQL),
            "point": await conn.prepare(POINT_SQL)}


async def asyncmy_prepared(state: Any, key: str, value: int) -> Any:
    return (await state[key].execute((value,))).rows


async def asyncmy_text(state: Any, sql: str, value: int) -> Any:
    async with state["conn"].cursor() as cur:
        await cur.execute(_text(sql), (value,))
        return await cur.fetchall()


async def asyncmy_close(state: Any) -> None:
    for key in ("rows", "point"):
        if key in state:
            await state[key].close()
    await state["conn"].ensure_closed()


# -- aiomysql ---------------------------------------------------------------------------------

async def aiomysql_connect(port: int) -> Any:
    import aiomysql

    from tests.support.mariadb import DATABASE, NATIVE_PASSWORD, NATIVE_USER

    return await aiomysql.connect(host="127.0.0.1", port=port, user=NATIVE_USER,
                                  password=NATIVE_PASSWORD, db=DATABASE, autocommit=True)


async def aiomysql_text(conn: Any, sql: str, value: int) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(_text(sql), (value,))
        return await cur.fetchall()


async def aiomysql_close(conn: Any) -> None:
    conn.close()


# -- mysql-connector-python (mysql.connector.aio) ---------------------------------------------

async def connector_connect(port: int, prepared: bool) -> Any:
    from mysql.connector import aio

    from tests.support.mariadb import DATABASE, NATIVE_PASSWORD, NATIVE_USER

    conn = await aio.connect(host="127.0.0.1", port=port, user=NATIVE_USER,
                             password=NATIVE_PASSWORD, database=DATABASE, autocommit=True,
                             ssl_disabled=True, use_pure=True)
    state = {"conn": conn}
    if prepared:  # one prepared cursor per statement: it re-prepares when the text changes
        state["rows"] = await conn.cursor(prepared=True)
        state["point"] = await conn.cursor(prepared=True)
    return state


async def connector_prepared(state: Any, key: str, value: int) -> Any:
    cur = state[key]
    await cur.execute(ROWS_SQL if key == "rows" else POINT_SQL, (value,))
    return await cur.fetchall()


async def connector_text(state: Any, sql: str, value: int) -> Any:
    cur = await state["conn"].cursor()
    try:
        await cur.execute(_text(sql), (value,))
        return await cur.fetchall()
    finally:
        await cur.close()


async def connector_close(state: Any) -> None:
    for key in ("rows", "point"):
        if key in state:
            await state[key].close()
    await state["conn"].close()


def paths() -> list[Candidate]:
    return [
        Candidate("aiomysql", "aiomysql", "text (client-side interpolation)",
              aiomysql_connect, lambda c, v: aiomysql_text(c, ROWS_SQL, v),
              lambda c, v: aiomysql_text(c, POINT_SQL, v), aiomysql_close),
        Candidate("asyncmy", "asyncmy", "text (client-side interpolation)",
              lambda p: asyncmy_connect(p, False), lambda s, v: asyncmy_text(s, ROWS_SQL, v),
              lambda s, v: asyncmy_text(s, POINT_SQL, v), asyncmy_close),
        Candidate("asyncmy", "asyncmy", "prepared (conn.prepare, binary)",
              lambda p: asyncmy_connect(p, True), lambda s, v: asyncmy_prepared(s, "rows", v),
              lambda s, v: asyncmy_prepared(s, "point", v), asyncmy_close),
        Candidate("mysql-connector-python aio", "mysql.connector",
                  "text (client-side interpolation)",
              lambda p: connector_connect(p, False), lambda s, v: connector_text(s, ROWS_SQL, v),
              lambda s, v: connector_text(s, POINT_SQL, v), connector_close),
        Candidate("mysql-connector-python aio", "mysql.connector",
                  "prepared (cursor(prepared=True))",
              lambda p: connector_connect(p, True), lambda s, v: connector_prepared(s, "rows", v),
              lambda s, v: connector_prepared(s, "point", v), connector_close),
    ]


def version(module: str) -> str:
    from importlib.metadata import version as dist_version

    dist = {"aiomysql": "aiomysql", "asyncmy": "asyncmy",
            "mysql.connector": "mysql-connector-python"}[module]
    return dist_version(dist)


async def what_the_server_received(server: Any, path: Candidate, marker: int) -> str:
    """The general log's commands for one point query with `marker` as its value."""
    state = await path.connect(server.port)
    try:
        conn = state["conn"] if isinstance(state, dict) else state
        probe = await path.point(state, marker)
        assert probe == [] or probe == () or len(probe) == 0
        thread = await connection_id(conn)
    finally:
        await path.close(state)
    commands = [(c, arg) for c, arg in server.log_commands(thread)
                if c not in ("Connect", "Quit") and "CONNECTION_ID()" not in arg]
    sequence = ", ".join(dict.fromkeys(c for c, _ in commands))  # in order, once each
    interpolated = any(c == "Query" and str(marker) in arg for c, arg in commands)
    return sequence + ("; the value in a `Query` line" if interpolated else "")


async def connection_id(conn: Any) -> int:
    cur = conn.cursor()
    if asyncio.iscoroutine(cur):
        cur = await cur
    await cur.execute("SELECT CONNECTION_ID()")
    (thread,) = await cur.fetchone()
    await cur.close() if asyncio.iscoroutinefunction(cur.close) else cur.close()
    return int(thread)


async def timed(seconds: float, step: Callable[[int], Awaitable[Any]]) -> tuple[int, float]:
    """Run `step(i)` for about `seconds`; (count, elapsed)."""
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            await step(count)
            count += 1
    return count, elapsed


async def measure(server: Any, path: Candidate, seconds: float) -> None:
    states = [await path.connect(server.port) for _ in range(CONCURRENCY)]
    try:
        first = states[0]
        rows = await path.rows(first, 0)
        assert len(rows) == 1000, len(rows)
        await timed(0.2, lambda i: path.point(first, 1 + i % POINTS))  # warm-up
        n, t = await timed(seconds, lambda i: path.rows(first, 0))
        path.figures.setdefault("rows/s", []).append(n * 1000 / t)
        n, t = await timed(seconds, lambda i: path.point(first, 1 + i % POINTS))
        path.figures.setdefault("q/s", []).append(n / t)

        async def worker(state: Any, offset: int) -> tuple[int, float]:
            return await timed(seconds, lambda i: path.point(state, 1 + (i * 7 + offset) % POINTS))

        results = await asyncio.gather(*(worker(s, k) for k, s in enumerate(states)))
        total = sum(n for n, _ in results)
        path.figures.setdefault(f"q/s x{CONCURRENCY}", []).append(
            total / max(t for _, t in results))
    finally:
        for state in states:
            await path.close(state)


def setup(server: Any) -> None:
    server.sql(
        "CREATE TABLE bench_rows (id INT PRIMARY KEY, name VARCHAR(64), amount DECIMAL(12,2),"
        " created DATETIME);"
        "INSERT INTO bench_rows SELECT seq, CONCAT('name ', seq), seq * 1.25,"
        " '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_1000;"
        "CREATE TABLE bench_points LIKE bench_rows;"
        f"INSERT INTO bench_points SELECT seq, CONCAT('name ', seq), seq * 1.25,"
        f" '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_{POINTS};")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # `mysql.connector` without the `mysql` package
        return False


async def main(seconds: float, rounds: int) -> None:
    from tests.support.mariadb import mariadb

    candidates = []
    for path in paths():
        if not _installed(path.module):
            print(f"- {path.name}: not installed (pip install {path.module}), skipped")
        else:
            candidates.append(path)
    with mariadb(name="bench-mariadb") as server:
        setup(server)
        version_line = server.sql("SELECT VERSION()").strip()
        received = {}
        for k, path in enumerate(candidates):
            received[id(path)] = await what_the_server_received(server, path, 987_654_321 + k)
        server.sql("SET GLOBAL general_log = 0")
        for number in range(rounds):
            for path in turns(candidates, number):  # each driver in each place in turn
                await measure(server, path, seconds)
    print(f"\nMariaDB {version_line}, Python {sys.version.split()[0]}, uvloop, {rounds} rounds "
          f"of {seconds:g} s per figure (medians); ratios against aiomysql\n")
    base = next((p for p in candidates if p.module == "aiomysql"), None)
    keys = ["rows/s", "q/s", f"q/s x{CONCURRENCY}"]
    print("| driver | protocol | what the server received | "
          + " | ".join(f"{k} (1,000-row results)" if k == "rows/s" else k for k in keys) + " |")
    print("|---|---|---|" + "---:|" * len(keys))
    for path in candidates:
        cells = []
        for key in keys:
            value = statistics.median(path.figures[key])
            ratio = (f" ({value / statistics.median(base.figures[key]):.2f}x)"
                     if base is not None else "")
            cells.append(f"{value:,.0f}{ratio}")
        print(f"| {path.name} {version(path.module)} | {path.protocol} | {received[id(path)]} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per figure and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.seconds, args.rounds))
