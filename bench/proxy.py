"""Query-proxy benchmark: the same parameterised PostgreSQL query (a) through asyncpg directly,
(b) through a bare aiohttp handler using asyncpg (on asyncio's own loop), (c) through the appliance
over HTTPS with a bearer token (on uvloop, as `appliance serve` runs), (d) through the same bare
handler on uvloop (the fair limit for (c): same loop), at concurrency 1 and 32; then a
1,000,000-row NDJSON stream (rows/s against asyncpg directly, and the appliance's peak RSS
growth). With --pg-store, (e): the appliance as (c) but on a PostgreSQL store ([store] url, a
database of the same cluster), so c/d and e/d come from the same run. (f): the appliance as (c)
with a viewer's token on a copy of the query visible to one group only (the viewer's): the
cost of the visibility check (two indexed point reads per run), as f/c. Each path is warmed up at
the measured concurrency; the paths take turns in ROUNDS rounds, in an order rotated by one each
round (so no path keeps the place a fixed order favours), and the ratios are per-round medians, so
a machine whose speed drifts during the run weighs on all of them alike. Prints a Markdown table;
never asserts.

Usage: .venv/bin/python bench/proxy.py [--requests N] [--rows N] [--pg-store]
Needs PostgreSQL server binaries (initdb, pg_ctl, psql); runs them as `postgres` when root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "bench-Pa55word"
SQL = "SELECT id, name, v FROM bench WHERE id = $1"
ROUNDS = 15  # the ratios are medians over the rounds: more rounds, a steadier median
TEMPLATE = "SELECT id, name, v FROM bench WHERE id = {{ id }}"


@contextlib.contextmanager
def bench_cluster() -> Iterator[Any]:
    """The tests' throwaway cluster (tests/conftest.py), with role `app`, database `appdb` and a
    1,000-row table `bench`."""
    from tests.conftest import PostgresServer, pg_binary, postgres_cluster

    psql = pg_binary("psql")
    if psql is None:
        raise SystemExit("psql not found")
    with postgres_cluster(name="bench",
                          hba="local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
                          conf="max_connections = 200\nshared_buffers = 64MB\n") as cluster:
        server = PostgresServer(cluster.root, cluster.port, cluster.prefix, psql)
        server.sql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'", database="postgres")
        server.sql("CREATE DATABASE appdb OWNER app", database="postgres")
        server.sql("CREATE TABLE bench (id int PRIMARY KEY, name text, v float8); "
                   "INSERT INTO bench SELECT i, 'name ' || i, i * 0.5 "
                   "FROM generate_series(1, 1000) i;"
                   "ALTER TABLE bench OWNER TO app")
        yield server


def pg_kwargs(port: int) -> dict:
    return {"host": "127.0.0.1", "port": port, "user": "app", "password": PASSWORD,
            "database": "appdb", "ssl": False}


# --- servers (child processes) -----------------------------------------------------------------


async def serve_bare(port: int, state: Path) -> None:
    """(b) and (d): a bare aiohttp handler over HTTPS (the appliance's local CA cert) running
    asyncpg, on whichever loop runs it."""
    import asyncpg
    from aiohttp import web

    pool = await asyncpg.create_pool(**pg_kwargs(port), min_size=1, max_size=10)

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        rows = await pool.fetch(SQL, body["params"]["id"])
        return web.json_response({"columns": ["id", "name", "v"],
                                  "rows": [list(r) for r in rows], "row_count": len(rows)})

    await serve_https(handler, state)


async def serve_https(handler: Any, state: Path) -> None:
    """A bare aiohttp server for `handler` at POST /run, over HTTPS with the certificate that
    `_make_bare_cert` left in `state`; prints {"port": N} and serves until killed."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/run", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(state / "bare-cert.pem", state / "bare-key.pem")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()


async def serve_appliance(port: int, state: Path, store: str = "") -> None:
    """(c): the appliance (build_app, local CA, TLS) with a PostgreSQL datasource and a query;
    (e) with `store` (`DATABASE:PASSWORD_FILE`): the same on a PostgreSQL store."""
    from tests.support import app as test_app

    if store:
        database, _, password_file = store.partition(":")
        test_app.STORE_ENV = {"store_url": f"postgresql://app@127.0.0.1:{port}/{database}",
                              "store_password_file": password_file, "store_tls": "disable"}

    from appliance.audit import Context
    from appliance.http.app_keys import CORE

    served = await start_appliance(state)
    app = served.app
    ctx = Context(actor="bench")
    ds = await app[CORE].datasources.create({
        "name": "bench", "kind": "postgres",
        "config": {"host": "127.0.0.1", "port": port, "database": "appdb", "user": "app",
                   "tls": "disable", "max_connections": 10, "max_rows": 2_000_000,
                   "max_response_bytes": 1024 ** 3, "statement_timeout_ms": 600_000},
        "secrets": {"password": PASSWORD}}, ctx)
    one = await app[CORE].queries.create({
        "name": "one", "datasource_id": ds["id"], "body": TEMPLATE,
        "parameters": [{"name": "id", "type": "integer"}]}, ctx)
    grouped = await app[CORE].queries.create({
        "name": "one for bench", "datasource_id": ds["id"], "body": TEMPLATE,
        "parameters": [{"name": "id", "type": "integer"}], "groups": ["bench"]}, ctx)
    await app[CORE].auth.users.change("viewer", groups=["bench"], context=ctx)
    many = await app[CORE].queries.create({
        "name": "many", "datasource_id": ds["id"],
        "body": "SELECT i, 'row ' || i AS name, i * 0.5 AS v "
                "FROM generate_series(1, {{ n }}) i",
        "parameters": [{"name": "n", "type": "integer"}]}, ctx)
    await served.announce(one=one["id"], many=many["id"], grouped=grouped["id"])


@dataclasses.dataclass
class RunningAppliance:
    """The appliance `start_appliance` built and listens with (the runner and listener are held
    here so that they live as long as the process serves)."""

    app: Any
    runner: Any
    listener: Any
    token: str  # the admin's bearer token
    ca: str  # the local CA's certificate, for the client
    viewer_token: str  # the viewer's, in the group "bench"

    async def announce(self, **ids: str) -> None:
        """Freeze the collector as `appliance serve` does once it is up, print the port, token,
        CA and `ids` as one JSON line for the parent, and serve until killed."""
        from appliance.server import GC_THRESHOLDS

        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        print(json.dumps({"port": self.listener.addresses[0][1], "token": self.token,
                          "viewer_token": self.viewer_token,
                          "ca": self.ca, **ids}), flush=True)
        await asyncio.Event().wait()


async def start_appliance(state: Path) -> RunningAppliance:
    """The appliance (build_app, local CA, TLS) in `state` with users and tokens, private egress
    allowed, served as `appliance serve` serves it: its runner options and its listener
    (connection limits)."""
    import logging

    from aiohttp import web

    from appliance.http.app import build_app
    from appliance.http.connection_limits import ConnectionGate, listen
    from appliance.tls import TLSManager
    from tests.support.app import prepare

    logging.disable(logging.WARNING)
    s, tokens = await prepare(state, require_2fa="", users=("developer", "viewer"),
                              tokens=True)
    s = dataclasses.replace(s, egress=dataclasses.replace(s.egress, allow_private=True))
    tls = TLSManager(s.tls, state)
    tls.load_initial()
    app = build_app(s, tls)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=s.server.keepalive_timeout)
    await runner.setup()
    gate = ConnectionGate(s.server.max_connections, s.server.max_connections_per_address)
    assert runner.server is not None
    listener = await listen(runner.server, gate, s.server, "127.0.0.1", 0,
                            tls_context=tls.context)
    return RunningAppliance(app, runner, listener, tokens["admin"], str(tls.ca.cert_path),
                            tokens["viewer"])


# --- load ---------------------------------------------------------------------------------------


def summary(rounds: list[tuple[list[float], float]]) -> dict:
    """q/s over all rounds, p50 and p99 over every request of every round."""
    latencies = sorted(x for lat, _ in rounds for x in lat)
    return {"qps": len(latencies) / sum(elapsed for _, elapsed in rounds),
            "p50": statistics.median(latencies) * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "rounds": [len(lat) / elapsed for lat, elapsed in rounds]}


async def load(call, requests: int, concurrency: int, *, warm: bool
               ) -> tuple[list[float], float]:
    """One round: (latencies, elapsed seconds)."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i % 1000 + 1)
            latencies.append(time.perf_counter() - started)

    # Warm-up at the measured concurrency, so every path is measured in its steady state: each
    # client connection (TLS, or asyncpg's SCRAM login) is open and each cache is filled.
    for i in range(50 if warm else 0):
        await asyncio.gather(*(call((i * concurrency + j) % 1000 + 1)
                               for j in range(concurrency)))
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def turns(paths: list[Any], number: int) -> list[Any]:
    """The paths in round `number`'s order: the list rotated by `number`, so each path takes
    each place in turn. Run in one fixed order, the same path came out ahead at 32 in flight in
    three runs of four whichever build it was (bench/proxy_mysql.py, docs/performance.md)."""
    shift = number % len(paths) if paths else 0
    return paths[shift:] + paths[:shift]


async def interleave(paths: list[tuple[str, Any]], servers: dict[str, int], requests: int,
                     concurrency: int) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """`requests` calls per path at `concurrency`, the paths taking turns in ROUNDS rounds (the
    first warmed up), in an order rotated each round (`turns`); each path's `summary`, and for
    each path with a server process (`servers`: its pid) that server's CPU microseconds per
    request in each round."""
    rounds: dict[str, list[tuple[list[float], float]]] = {name: [] for name, _ in paths}
    cpu_us: dict[str, list[float]] = {}
    for number in range(ROUNDS):
        for name, call in turns(paths, number):
            pid = servers.get(name)
            before = cpu_seconds(pid) if pid else 0.0
            measured = await load(call, max(1, requests // ROUNDS), concurrency,
                                  warm=number == 0)
            rounds[name].append(measured)
            if pid:
                cpu_us.setdefault(name, []).append(
                    (cpu_seconds(pid) - before) / len(measured[0]) * 1e6)
    return {name: summary(measured) for name, measured in rounds.items()}, cpu_us


def spawn(script: str, kind: str, *args: str) -> tuple[subprocess.Popen[str], dict]:
    """Start `script --serve-KIND ARGS...` (a server of this benchmark in its own process); the
    process and the JSON line it prints once it listens. The caller stops it."""
    proc = subprocess.Popen([sys.executable, script, f"--serve-{kind}", *args],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise SystemExit(f"the {kind} server did not start (exit {proc.returncode})")
    return proc, json.loads(line)


def stop(children: list[subprocess.Popen[str]]) -> None:
    for proc in children:
        proc.terminate()
        proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (the warm-up of a round included:
    `load` warms up before it starts its clock, so a warm round counts a little more)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run_bench(requests: int, rows: int, pg_store: bool = False) -> None:
    import aiohttp
    import asyncpg

    cleanup = contextlib.ExitStack()
    cluster = cleanup.enter_context(bench_cluster())
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    children: list[subprocess.Popen[str]] = []
    try:
        def server(kind: str, where: Path, *extra: str) -> tuple[subprocess.Popen[str], dict]:
            proc, info = spawn(__file__, kind, str(cluster.port), str(where), *extra)
            children.append(proc)
            return proc, info

        appliance_proc, app_info = server("appliance", state / "appliance")
        ca = Path(app_info["ca"])
        _make_bare_cert(ca.parent, state)
        bare_proc, bare_info = server("bare", state)
        uv_proc, uv_info = server("bare-uvloop", state)
        servers = {"b": bare_proc.pid, "c": appliance_proc.pid, "d": uv_proc.pid,
                   "f": appliance_proc.pid}
        pg_info: dict = {}
        if pg_store:
            cluster.sql("CREATE DATABASE store OWNER app", database="postgres")
            password_file = state / "store.password"
            password_file.write_text(PASSWORD + "\n")
            password_file.chmod(0o600)
            pg_proc, pg_info = server("appliance", state / "appliance-pg",
                                     f"store:{password_file}")
            servers["e"] = pg_proc.pid
        client_ctx = ssl.create_default_context(cafile=str(ca))
        pool = await asyncpg.create_pool(**pg_kwargs(cluster.port), min_size=1, max_size=32)
        results: dict[tuple[str, int], dict] = {}
        # Server CPU time per request, per round (b and c): steadier than q/s on a shared
        # machine, where the load generator and PostgreSQL take turns on the same cores.
        cpu_us: dict[tuple[str, int], list[float]] = {}
        connector = aiohttp.TCPConnector(limit=0, ssl=client_ctx)
        async with aiohttp.ClientSession(connector=connector) as http:
            async def direct(i: int) -> None:
                await pool.fetch(SQL, i)

            async def bare(i: int) -> None:
                async with http.post(f"https://127.0.0.1:{bare_info['port']}/run",
                                     json={"params": {"id": i}}) as r:
                    await r.read()
                    assert r.status == 200

            async def bare_uvloop(i: int) -> None:
                async with http.post(f"https://127.0.0.1:{uv_info['port']}/run",
                                     json={"params": {"id": i}}) as r:
                    await r.read()
                    assert r.status == 200

            headers = {"Authorization": f"Bearer {app_info['token']}"}

            async def appliance(i: int) -> None:
                async with http.post(
                        f"https://127.0.0.1:{app_info['port']}/api/v1/queries/"
                        f"{app_info['one']}/run", json={"params": {"id": i}},
                        headers=headers) as r:
                    await r.read()
                    assert r.status == 200, await r.text()

            viewer_headers = {"Authorization": f"Bearer {app_info['viewer_token']}"}

            async def appliance_viewer(i: int) -> None:
                async with http.post(
                        f"https://127.0.0.1:{app_info['port']}/api/v1/queries/"
                        f"{app_info['grouped']}/run", json={"params": {"id": i}},
                        headers=viewer_headers) as r:
                    await r.read()
                    assert r.status == 200, await r.text()

            # (e)'s own local CA (its own state directory): one context, so connections are kept.
            pg_ctx = ssl.create_default_context(cafile=pg_info["ca"]) if pg_store else None

            async def appliance_pg(i: int) -> None:
                async with http.post(
                        f"https://127.0.0.1:{pg_info['port']}/api/v1/queries/"
                        f"{pg_info['one']}/run", json={"params": {"id": i}},
                        headers={"Authorization": f"Bearer {pg_info['token']}"},
                        ssl=pg_ctx) as r:
                    await r.read()
                    assert r.status == 200, await r.text()

            paths = [("a", direct), ("b", bare), ("c", appliance), ("d", bare_uvloop),
                     ("f", appliance_viewer)]
            if pg_store:
                paths.append(("e", appliance_pg))
            # The paths take turns, ROUNDS times, so a machine that slows down or speeds
            # up during the run weighs on each of them alike; ratios are per-round medians.
            for concurrency in (1, 32):
                summaries, cpu = await interleave(paths, servers, requests, concurrency)
                results.update({(name, concurrency): r for name, r in summaries.items()})
                cpu_us.update({(name, concurrency): us for name, us in cpu.items()})

            # 1,000,000-row stream: asyncpg directly (cursor) vs the appliance (NDJSON)
            started = time.perf_counter()
            async with pool.acquire() as conn, conn.transaction():
                count = 0
                async for _ in conn.cursor("SELECT i, 'row ' || i AS name, i * 0.5 AS v "
                                           "FROM generate_series(1, $1) i", rows,
                                           prefetch=1000):
                    count += 1
            direct_rate = count / (time.perf_counter() - started)
            base_rss = rss_kb(appliance_proc.pid)
            peak = base_rss
            started = time.perf_counter()
            lines = 0
            async with http.post(
                    f"https://127.0.0.1:{app_info['port']}/api/v1/queries/{app_info['many']}"
                    f"/run", json={"params": {"n": rows}},
                    headers={**headers, "Accept": "application/x-ndjson"},
                    timeout=aiohttp.ClientTimeout(total=600)) as r:
                if r.status != 200:
                    raise SystemExit(f"stream failed: {r.status} {await r.text()}")
                async for _line in r.content:
                    lines += 1
                    if lines % 20000 == 0:
                        peak = max(peak, rss_kb(appliance_proc.pid))
            stream_rate = (lines - 2) / (time.perf_counter() - started)
            peak = max(peak, rss_kb(appliance_proc.pid))
        await pool.close()
        _print(results, cpu_us, requests, rows, direct_rate, stream_rate,
               (peak - base_rss) / 1024, lines - 2)
    finally:
        stop(children)
        cleanup.close()
        shutil.rmtree(state, ignore_errors=True)


def _make_bare_cert(ca_dir: Path, state: Path) -> None:
    """A localhost certificate for the bare server, signed by the appliance's local CA, so the
    client verifies both servers the same way."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()) \
        if (ca_dir / "ca.pem").exists() else None
    if ca_cert is None or not (ca_dir / "ca.key").exists():
        raise SystemExit(f"cannot find the local CA in {ca_dir}")
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (state / "bare-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (state / "bare-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _print(results: dict, cpu_us: dict, requests: int, rows: int, direct_rate: float,
           stream_rate: float, rss_growth_mb: float, streamed: int) -> None:
    print(f"\n{requests} requests per cell, in {ROUNDS} interleaved rounds; one row per query "
          f"(`{SQL}`)\n")
    print("| concurrency | path | q/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    names = {"a": "(a) asyncpg direct", "b": "(b) bare aiohttp + asyncpg, HTTPS",
             "c": "(c) appliance, HTTPS + bearer", "d": "(d) bare aiohttp + asyncpg on uvloop",
             "e": "(e) appliance as (c), PostgreSQL store",
             "f": "(f) appliance as (c), a viewer on a query for their group"}
    keys = [k for k in names if (k, 1) in results]
    for concurrency in (1, 32):
        for key in keys:
            r = results[(key, concurrency)]
            print(f"| {concurrency} | {names[key]} | {r['qps']:,.0f} | {r['p50']:.2f} | "
                  f"{r['p99']:.2f} |")
    for concurrency in (1, 32):
        a, b, c, d = (results[(k, concurrency)]["rounds"] for k in ("a", "b", "c", "d"))
        cb = [x / y for x, y in zip(c, b, strict=True)]
        cd = [x / y for x, y in zip(c, d, strict=True)]
        ca = [x / y for x, y in zip(c, a, strict=True)]
        print(f"\nconcurrency {concurrency}: c/d = {statistics.median(cd):.2f} "
              f"(target >= 0.8, same loop; rounds {', '.join(f'{x:.2f}' for x in cd)}), "
              f"c/b = {statistics.median(cb):.2f}, c/a = {statistics.median(ca):.2f}")
        f = results[("f", concurrency)]["rounds"]
        fc = [x / y for x, y in zip(f, c, strict=True)]
        f_cpu, c_cpu = (cpu_us[(k, concurrency)][1:] or cpu_us[(k, concurrency)]
                        for k in ("f", "c"))
        print(f"  groups: f/c = {statistics.median(fc):.2f} (rounds "
              f"{', '.join(f'{x:.2f}' for x in fc)}; the viewer's visibility check); server "
              f"CPU per request {statistics.median(f_cpu):.0f} us against "
              f"{statistics.median(c_cpu):.0f} us")
        if ("e", concurrency) in results:
            e = results[("e", concurrency)]["rounds"]
            ed = [x / y for x, y in zip(e, d, strict=True)]
            ec = [x / y for x, y in zip(e, c, strict=True)]
            e_cpu = cpu_us[("e", concurrency)][1:] or cpu_us[("e", concurrency)]
            print(f"  PostgreSQL store: e/d = {statistics.median(ed):.2f} (rounds "
                  f"{', '.join(f'{x:.2f}' for x in ed)}), e/c = {statistics.median(ec):.2f}; "
                  f"server CPU per request {statistics.median(e_cpu):.0f} us")
        # The first round includes the warm-up: left out of the CPU figures.
        b_cpu, c_cpu, d_cpu = (cpu_us[(k, concurrency)][1:] or cpu_us[(k, concurrency)]
                               for k in ("b", "c", "d"))
        # A round too short for the clock's ticks (a small --requests) reads 0 for a server.
        ratios = [x / y for x, y in zip(c_cpu, b_cpu, strict=True) if x and y]
        if len(ratios) * 2 < len(c_cpu):
            print("  server CPU per request: rounds too short to measure it (use --requests "
                  f"{ROUNDS * 1000})")
            continue
        uv_ratios = [x / y for x, y in zip(c_cpu, d_cpu, strict=True) if x and y]
        print(f"  server CPU per request: bare {statistics.median(b_cpu):.0f} us, bare on "
              f"uvloop {statistics.median(d_cpu):.0f} us, appliance "
              f"{statistics.median(c_cpu):.0f} us (ratio c/b {statistics.median(ratios):.2f}, "
              f"c/d {statistics.median(uv_ratios) if uv_ratios else float('nan'):.2f})")
    print(f"\nNDJSON stream of {streamed:,} rows (asked {rows:,}): appliance "
          f"{stream_rate:,.0f} rows/s, asyncpg cursor directly {direct_rate:,.0f} rows/s "
          f"(ratio {stream_rate / direct_rate:.2f}); peak RSS growth of the appliance "
          f"{rss_growth_mb:.1f} MB (target <= 30 MB)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        asyncio.run(serve_bare(int(sys.argv[2]), Path(sys.argv[3])))  # asyncio's own loop
    elif len(sys.argv) == 4 and sys.argv[1] == "--serve-bare-uvloop":
        import uvloop

        uvloop.run(serve_bare(int(sys.argv[2]), Path(sys.argv[3])))
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "--serve-appliance":
        import uvloop  # the loop `appliance serve` runs on

        uvloop.run(serve_appliance(int(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--requests", type=int, default=ROUNDS * 1000)
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--pg-store", action="store_true",
                            help="add (e): the appliance on a PostgreSQL store")
        args = parser.parse_args()
        asyncio.run(run_bench(args.requests, args.rows, args.pg_store))
