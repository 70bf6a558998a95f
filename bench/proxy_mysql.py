"""Query-proxy benchmark on MariaDB (issue 23): the same one-parameter point query as
bench/proxy.py, `SELECT id, name, v FROM bench WHERE id = ?` on a 1,000-row table, four ways:
(m1) asyncmy directly, each connection with the statement prepared once (`conn.prepare()`,
COM_STMT_EXECUTE per query); (m2) a bare aiohttp handler on uvloop over HTTPS doing the same
with a pool of 10 asyncmy connections (the fair limit for (m3): same loop, same driver, same TLS
to the client); (m2g) that handler running each statement as the appliance's engine must
(prepared again for every run, the connection reset after it: `Guarded`), which is what (m2)
would cost with the appliance's guarantees and nothing else of it; (m3) the appliance over HTTPS
with a bearer token and a mysql datasource (10 connections), on uvloop. At 1 and 32 in flight;
the paths take turns in ROUNDS rounds, in an order rotated each round, and the ratios m3/m2,
m3/m2g and m3/m1 are per-round medians (bench/proxy.py's `interleave`). With `--baseline DIR`
(another checkout of the project, e.g. `git archive main | tar -x -C DIR`), a fifth path (m3b)
is that checkout's appliance, taking its turns in the same rounds: before and after a change,
measured in the same run. Before timing, it counts the commands the server received per run on
each path (MariaDB's Com_* status counters). Prints a Markdown table; never asserts.

Usage: python bench/proxy_mysql.py [--requests N] [--baseline DIR]   (default 9,000 per cell,
  about a minute; BENCH_REQUESTS=N does the same for longer runs)
Needs Debian's mariadb-server (started by tests/support/mariadb.py, as `mysql` when root) and
asyncmy. Both legs to MariaDB are plain TCP on 127.0.0.1 with mysql_native_password (TLS to the
database would cost every path alike); the clients' legs are HTTPS with the appliance's local CA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from proxy import (  # bench/proxy.py: this script runs from bench/, as that one does
    ROUNDS,
    TEMPLATE,
    _make_bare_cert,
    interleave,
    serve_https,
    spawn,
    start_appliance,
    stop,
)

SQL = "SELECT id, name, v FROM bench WHERE id = ?"
POOL = 10  # connections of (m2) and of the appliance's datasource, as in bench/proxy.py
DIRECT = 32  # (m1)'s connections: one per worker at 32 in flight
DEFAULT_REQUESTS = ROUNDS * 600
# (m2g)'s session settings: the engine's for a read-only MariaDB datasource (engine._setup)
SETTINGS = ("SET SESSION TRANSACTION READ ONLY;SET NAMES utf8mb4, time_zone = '+00:00', "
            "autocommit = 1, max_statement_time = 600.000")


def mariadb_kwargs(port: int) -> dict[str, Any]:
    from tests.support.mariadb import DATABASE, NATIVE_PASSWORD, NATIVE_USER

    return {"host": "127.0.0.1", "port": port, "user": NATIVE_USER,
            "password": NATIVE_PASSWORD, "db": DATABASE, "autocommit": True}


class Prepared:
    """asyncmy connections, each with SQL prepared once on it, lent one run at a time."""

    def __init__(self) -> None:
        self._idle: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
        self._all: list[tuple[Any, Any]] = []

    async def open(self, port: int, size: int) -> None:
        import asyncmy

        for _ in range(size):
            conn = await asyncmy.connect(**mariadb_kwargs(port))
            pair = (conn, await conn.prepare(SQL))
            self._all.append(pair)
            self._idle.put_nowait(pair)

    async def fetch(self, value: int) -> Any:
        pair = await self._idle.get()
        try:
            return (await pair[1].execute((value,))).rows
        finally:
            self._idle.put_nowait(pair)

    async def close(self) -> None:
        for conn, statement in self._all:
            await statement.close()
            await conn.ensure_closed()


class Guarded:
    """asyncmy connections used as the appliance's engine uses them, with nothing else of the
    appliance: every run prepared again and the connection reset after it (COM_RESET_CONNECTION
    and the session's settings, in the execute's write; their answers read before the next run
    gets it), through the engine's own `asyncmy_private`."""

    def __init__(self) -> None:
        self._idle: asyncio.Queue[Any] = asyncio.Queue()

    async def open(self, port: int, size: int) -> None:
        from appliance.kinds.mysql.asyncmy_private import DialedConnection, apply_settings

        kwargs = mariadb_kwargs(port)
        for _ in range(size):
            conn = DialedConnection(
                tls=None, host=kwargs["host"], port=port, user=kwargs["user"],
                password=kwargs["password"].encode(), database=kwargs["db"], charset="utf8mb4")
            await conn.connect()
            conn.mariadb = True
            conn.settings = SETTINGS
            await apply_settings(conn, SETTINGS)
            self._idle.put_nowait(conn)

    async def fetch(self, value: int) -> list[Any]:
        from appliance.kinds.mysql.asyncmy_private import execute, reset_session

        conn = await self._idle.get()
        try:
            run = await execute(conn, SQL, (value,), cursor=False, pipeline=True,
                                reset=SETTINGS)
            rows = await run.read(100)
            await reset_session(conn, SETTINGS)
            return rows
        finally:
            self._idle.put_nowait(conn)


# --- servers (child processes) -----------------------------------------------------------------


async def serve_bare(port: int, state: Path, runs: type[Prepared | Guarded] = Prepared) -> None:
    """(m2): a bare aiohttp handler over HTTPS running the statement on a pool of asyncmy
    connections: prepared once (`Prepared`), or, for (m2g), as the engine runs it (`Guarded`)."""
    from aiohttp import web

    pool = runs()
    await pool.open(port, POOL)

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        rows = await pool.fetch(body["params"]["id"])
        return web.json_response({"columns": ["id", "name", "v"],
                                  "rows": [list(r) for r in rows], "row_count": len(rows)})

    await serve_https(handler, state)


async def serve_bare_guarded(port: int, state: Path) -> None:
    await serve_bare(port, state, Guarded)


async def serve_appliance(port: int, state: Path) -> None:
    """(m3): the appliance with a mysql datasource on the benchmark's MariaDB and the query."""
    from appliance.audit import Context
    from appliance.http.app_keys import CORE
    from tests.support.mariadb import DATABASE, NATIVE_PASSWORD, NATIVE_USER

    served = await start_appliance(state)
    ctx = Context(actor="bench")
    core = served.app[CORE]
    ds = await core.datasources.create({
        "name": "bench", "kind": "mysql",
        "config": {"host": "127.0.0.1", "port": port, "database": DATABASE, "user": NATIVE_USER,
                   "tls": "disable", "allow_password_without_verified_tls": True,
                   "max_connections": POOL, "statement_timeout_ms": 600_000},
        "secrets": {"password": NATIVE_PASSWORD}}, ctx)
    one = await core.queries.create({
        "name": "one", "datasource_id": ds["id"], "body": TEMPLATE,
        "parameters": [{"name": "id", "type": "integer"}]}, ctx)
    await served.announce(one=one["id"])


# --- the run -------------------------------------------------------------------------------------


def com_counters(server: Any) -> dict[str, int]:
    """MariaDB's global Com_* counters (commands received, by type)."""
    out = server.sql("SHOW GLOBAL STATUS LIKE 'Com\\_%'")
    pairs = (line.split("\t") for line in out.splitlines() if "\t" in line)
    return {name: int(value) for name, value in pairs if value.isdigit()}


async def commands_per_run(server: Any, call: Any, runs: int = 200) -> str:
    """What the server counted per run of `call` (after one warm run), e.g. "stmt_execute 1"."""
    await call(1)
    before = com_counters(server)
    for i in range(runs):
        await call(i % 1000 + 1)
    after = com_counters(server)
    per_run = {name.removeprefix("Com_"): (after[name] - before.get(name, 0)) / runs
               for name in after if name != "Com_show_status"}
    return ", ".join(f"{name} {n:g}" for name, n in sorted(per_run.items()) if n >= 0.01)


def spawn_baseline(tree: Path, port: int, state: Path) -> tuple[subprocess.Popen[str], dict]:
    """(m3b): the appliance of the checkout `tree`, started by that checkout's own copy of this
    script, with only that checkout on the path."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)  # inherited by the child `spawn` starts
    try:
        return spawn(str(tree / "bench" / "proxy_mysql.py"), "appliance", str(port), str(state))
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


async def run_bench(requests: int, baseline: Path | None = None) -> None:
    import aiohttp

    from tests.support.mariadb import mariadb

    cleanup = contextlib.ExitStack()
    server = cleanup.enter_context(mariadb(name="bench-mariadb"))
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    children: list[Any] = []
    direct = Prepared()
    try:
        server.sql("CREATE TABLE bench (id INT PRIMARY KEY, name VARCHAR(64), v DOUBLE);"
                   "INSERT INTO bench SELECT seq, CONCAT('name ', seq), seq * 0.5 "
                   "FROM seq_1_to_1000")
        version = server.sql("SELECT VERSION()").strip()
        server.sql("SET GLOBAL general_log = 0")  # the fixture's log costs every path a write

        def child(kind: str, where: Path) -> tuple[Any, dict]:
            proc, info = spawn(__file__, kind, str(server.port), str(where))
            children.append(proc)
            return proc, info

        appliance_proc, app_info = child("appliance", state / "appliance")
        ca = Path(app_info["ca"])
        _make_bare_cert(ca.parent, state)
        bare_proc, bare_info = child("bare-uvloop", state)
        guarded_proc, guarded_info = child("bare-guarded", state)
        servers = {"m2": bare_proc.pid, "m2g": guarded_proc.pid, "m3": appliance_proc.pid}
        base_info: dict = {}
        if baseline is not None:
            base_proc, base_info = spawn_baseline(baseline, server.port, state / "baseline")
            children.append(base_proc)
            servers["m3b"] = base_proc.pid
        await direct.open(server.port, DIRECT)
        trusted = ssl.create_default_context(cafile=str(ca))
        if base_info:  # the baseline appliance has a local CA of its own
            trusted.load_verify_locations(cafile=str(base_info["ca"]))
        connector = aiohttp.TCPConnector(limit=0, ssl=trusted)
        headers = {"Authorization": f"Bearer {app_info['token']}"}
        async with aiohttp.ClientSession(connector=connector) as http:
            async def m1(i: int) -> None:
                await direct.fetch(i)

            async def m2(i: int) -> None:
                async with http.post(f"https://127.0.0.1:{bare_info['port']}/run",
                                     json={"params": {"id": i}}) as r:
                    await r.read()
                    assert r.status == 200

            async def m2g(i: int) -> None:
                async with http.post(f"https://127.0.0.1:{guarded_info['port']}/run",
                                     json={"params": {"id": i}}) as r:
                    await r.read()
                    assert r.status == 200

            async def m3(i: int) -> None:
                async with http.post(
                        f"https://127.0.0.1:{app_info['port']}/api/v1/queries/"
                        f"{app_info['one']}/run", json={"params": {"id": i}},
                        headers=headers) as r:
                    body = await r.read()
                    assert r.status == 200, body[:200]

            async def m3b(i: int) -> None:
                async with http.post(
                        f"https://127.0.0.1:{base_info['port']}/api/v1/queries/"
                        f"{base_info['one']}/run", json={"params": {"id": i}},
                        headers={"Authorization": f"Bearer {base_info['token']}"}) as r:
                    body = await r.read()
                    assert r.status == 200, body[:200]

            paths = [("m1", m1), ("m2", m2), ("m2g", m2g), ("m3", m3)]
            if baseline is not None:
                paths.append(("m3b", m3b))
            received = {name: await commands_per_run(server, call) for name, call in paths}
            results: dict[tuple[str, int], dict] = {}
            cpu_us: dict[tuple[str, int], list[float]] = {}
            for concurrency in (1, 32):
                summaries, cpu = await interleave(paths, servers, requests, concurrency)
                results.update({(name, concurrency): r for name, r in summaries.items()})
                cpu_us.update({(name, concurrency): us for name, us in cpu.items()})
        _print(version, requests, received, results, cpu_us)
    finally:
        await direct.close()
        stop(children)
        cleanup.close()
        shutil.rmtree(state, ignore_errors=True)


def _ratios(results: dict, top: str, bottom: str, concurrency: int) -> list[float]:
    return [x / y for x, y in zip(results[(top, concurrency)]["rounds"],
                                  results[(bottom, concurrency)]["rounds"], strict=True)]


def _print(version: str, requests: int, received: dict[str, str], results: dict,
           cpu_us: dict) -> None:
    names = {"m1": "(m1) asyncmy direct, prepared once per connection",
             "m2": "(m2) bare aiohttp + asyncmy on uvloop, HTTPS",
             "m2g": "(m2g) the same, each run prepared and reset as the engine does",
             "m3": "(m3) appliance, HTTPS + bearer, mysql datasource"}
    if "m3b" in received:
        names["m3b"] = "(m3b) the baseline checkout's appliance, the same"
    print(f"\nMariaDB {version}; {requests} requests per cell, in {ROUNDS} interleaved rounds; "
          f"one row per query (`{SQL}`)\n")
    print("| concurrency | path | q/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for concurrency in (1, 32):
        for key, name in names.items():
            r = results[(key, concurrency)]
            print(f"| {concurrency} | {name} | {r['qps']:,.0f} | {r['p50']:.2f} | "
                  f"{r['p99']:.2f} |")
    print("\nCommands the server counted per run (Com_* status counters):")
    for key, name in names.items():
        print(f"- {name}: {received[key] or 'none'}")
    for concurrency in (1, 32):
        m3m2 = _ratios(results, "m3", "m2", concurrency)
        m3m1 = _ratios(results, "m3", "m1", concurrency)
        m3m2g = _ratios(results, "m3", "m2g", concurrency)
        print(f"\nconcurrency {concurrency}: m3/m2 = {statistics.median(m3m2):.2f} (rounds "
              f"{', '.join(f'{x:.2f}' for x in m3m2)}), m3/m1 = {statistics.median(m3m1):.2f}, "
              f"m3/m2g = {statistics.median(m3m2g):.2f}")
        if "m3b" in names:
            base = _ratios(results, "m3b", "m2", concurrency)
            gain = _ratios(results, "m3", "m3b", concurrency)
            print(f"  baseline m3b/m2 = {statistics.median(base):.2f} (rounds "
                  f"{', '.join(f'{x:.2f}' for x in base)}); m3/m3b = "
                  f"{statistics.median(gain):.2f}")
        # The first round includes the warm-up: left out of the CPU figures.
        m2_cpu, m2g_cpu, m3_cpu = (cpu_us[(k, concurrency)][1:] or cpu_us[(k, concurrency)]
                                   for k in ("m2", "m2g", "m3"))
        cpu = [x / y for x, y in zip(m3_cpu, m2_cpu, strict=True) if x and y]
        if len(cpu) * 2 < len(m3_cpu):
            print("  server CPU per request: rounds too short to measure it (use --requests "
                  f"{DEFAULT_REQUESTS})")
            continue
        guarded = [x / y for x, y in zip(m3_cpu, m2g_cpu, strict=True) if x and y]
        print(f"  server CPU per request: bare {statistics.median(m2_cpu):.0f} us, bare as the "
              f"engine runs {statistics.median(m2g_cpu):.0f} us, appliance "
              f"{statistics.median(m3_cpu):.0f} us (ratio m3/m2 {statistics.median(cpu):.2f}, "
              f"m3/m2g {statistics.median(guarded):.2f})")
        if "m3b" in names:
            b_cpu = cpu_us[("m3b", concurrency)][1:] or cpu_us[("m3b", concurrency)]
            vs = [x / y for x, y in zip(m3_cpu, b_cpu, strict=True) if x and y]
            print(f"  baseline appliance {statistics.median(b_cpu):.0f} us; CPU per request "
                  f"m3/m3b = {statistics.median(vs):.2f} (rounds "
                  f"{', '.join(f'{x:.2f}' for x in vs)})")


if __name__ == "__main__":
    servers = {"--serve-bare-uvloop": serve_bare, "--serve-bare-guarded": serve_bare_guarded,
               "--serve-appliance": serve_appliance}
    if len(sys.argv) == 4 and sys.argv[1] in servers:
        import uvloop  # every server on the loop `appliance serve` runs on

        uvloop.run(servers[sys.argv[1]](int(sys.argv[2]), Path(sys.argv[3])))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--baseline", type=Path, default=None,
                            help="another checkout whose appliance runs as a fourth path (m3b)")
        parser.add_argument("--requests", type=int,
                            default=int(os.environ.get("BENCH_REQUESTS", DEFAULT_REQUESTS)),
                            help="per path and concurrency, split over the rounds")
        args = parser.parse_args()
        asyncio.run(run_bench(args.requests, args.baseline))
