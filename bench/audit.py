"""Audit benchmarks: what a run's audit entry costs on each store, and reading a big log.

The commit benchmark (default):
A `query.run` entry recorded the way the runner records it (inside `run_under_way`, so concurrent
runs share a group commit; non-durable, as run entries are), 1 and 32 at a time, through
`AuditLog` on a SQLite store (a file) and on a PostgreSQL store (a throwaway cluster, as
bench/proxy.py starts it). On PostgreSQL twice, taking turns: the audit log's own path (an async
transaction chaining onto the head its last commit left) and, as the baseline, the store's
`write` with its function on a worker thread, each step bridged to the loop (the path before
issue 22's follow-up; chosen by hiding the store's `bridged_writes`). Prints wall time per entry,
entries per commit and the ratios against SQLite and against that baseline; never asserts.

Run: .venv/bin/python bench/audit.py [--entries N] [--rounds N]

The read benchmark (`--read`, issue 24): fills a store with N entries through the audit log's own
write path (`AuditLog.record`, group-committed in large batches: real, chained entries, 98 in 100
query runs by service tokens), timing the fill (entries/s) and the bytes each entry adds, on
SQLite and on PostgreSQL, each with the indexes of migration 13 and without them (dropped); then
starts the appliance on the SQLite store (as `appliance serve` serves it, in a child process) and
times GET /api/v1/audit: the newest page, filtered by a rare actor, a busy actor, an action
prefix, an outcome, a text that matches nothing (the bounded scan), a time range, and a page deep
in the log (by position and by cursor). N: APPLIANCE_BENCH_AUDIT_ENTRIES (default 20,000);
APPLIANCE_BENCH_AUDIT_SIZES caps the with/without-index fills (default: N).

Run: .venv/bin/python bench/audit.py --read

The sinks benchmark (`--sinks`, issue 24): the group commit's append rate at 32 in flight on
SQLite with no sink, a file sink and a journal sink (a real journald namespace; root only).

Run: .venv/bin/python bench/audit.py --sinks [--entries N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def one_round(store: Any, entries: int, concurrency: int,
                    sinks: Any = None) -> tuple[float, float]:
    """(microseconds per entry, entries per commit) for `entries` run entries."""
    from appliance.audit import RUN_ACTION, AuditLog, FixedMacKeys

    audit = AuditLog(store, keys=FixedMacKeys.generate(), sinks=sinks)
    commits = 0
    write, transaction = store.write, store.transaction

    async def counted(fn: Any, **options: bool) -> Any:
        nonlocal commits
        commits += 1
        return await write(fn, **options)

    def counted_transaction(**options: bool) -> Any:  # the bridged stores' commits (PostgreSQL)
        nonlocal commits
        commits += 1
        return transaction(**options)

    store.write, store.transaction = counted, counted_transaction
    todo = iter(range(entries))

    async def runner() -> None:
        for i in todo:
            with audit.run_under_way():
                await audit.record(action=RUN_ACTION, actor="token:bench", target=f"query:q{i}",
                                   details={"datasource": "ds", "mode": "json", "rows": 1})

    try:
        started = time.perf_counter()
        await asyncio.gather(*(runner() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        del store.write, store.transaction
        await audit.close()
    return elapsed / entries * 1e6, entries / max(commits, 1)


async def main(entries: int, rounds: int) -> None:
    from appliance import settings
    from appliance.egress import Dialer, PolicyHolder
    from appliance.store import open_store
    from bench.proxy import PASSWORD, bench_cluster

    with bench_cluster() as cluster, tempfile.TemporaryDirectory() as scratch:
        cluster.sql("CREATE DATABASE store OWNER app", database="postgres")
        password_file = Path(scratch) / "store.password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        state = Path(scratch) / "state"
        state.mkdir(mode=0o700)
        envs = {"SQLite": {},
                "PostgreSQL": {"APPLIANCE_STORE_URL":
                               f"postgresql://app@127.0.0.1:{cluster.port}/store",
                               "APPLIANCE_STORE_PASSWORD_FILE": str(password_file),
                               "APPLIANCE_STORE_TLS": "disable"}}
        stores = {}
        for name, env in envs.items():
            s = settings.load(env=env, flags={"state_dir": str(state)})
            stores[name] = await open_store(s, Dialer(PolicyHolder(s.egress)))
        stores["PostgreSQL, bridged write"] = stores["PostgreSQL"]
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        try:
            for concurrency in (1, 32):
                for number in range(rounds + 1):  # the first round warms up, not counted
                    # The stores take turns; the two PostgreSQL paths swap places every round
                    # (the turn right after SQLite's measured slower, whichever path had it).
                    turns = list(stores.items())
                    if number % 2:
                        turns[1], turns[2] = turns[2], turns[1]
                    for name, store in turns:
                        if name.endswith("bridged write"):
                            store.bridged_writes = False  # the audit log takes `write`
                        try:
                            measured = await one_round(store, entries, concurrency)
                        finally:
                            if name.endswith("bridged write"):
                                del store.bridged_writes
                        if number:
                            results.setdefault((name, concurrency), []).append(measured)
        finally:
            for store in {id(each): each for each in stores.values()}.values():
                await store.close()
    print(f"\n{entries} query.run entries per round, {rounds} rounds (medians)\n")
    print("| in flight | store | µs per entry | entries per commit |")
    print("|---|---|---|---|")
    for concurrency in (1, 32):
        for name in stores:
            rows = results[(name, concurrency)]
            print(f"| {concurrency} | {name} | {statistics.median(r[0] for r in rows):,.0f} | "
                  f"{statistics.median(r[1] for r in rows):.1f} |")
        pg = results[("PostgreSQL", concurrency)]
        for versus in ("SQLite", "PostgreSQL, bridged write"):
            ratios = [p[0] / o[0] for p, o in zip(pg, results[(versus, concurrency)],
                                                  strict=True)]
            print(f"|   | PostgreSQL / {versus} | {statistics.median(ratios):.2f} | |")


async def sink_bench(entries: int, rounds: int) -> None:
    """`--sinks` (issue 24): the append rate of the group commit at 32 in flight on a SQLite store
    with no sink, a file sink and a journal sink (a real journald namespace), taking turns."""
    import contextlib

    from appliance.audit.sinks import open_sinks
    from appliance.settings import SinkSpec
    from appliance.store import open_sqlite_store
    from tests.support.journald import journald

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        store = await open_sqlite_store(Path(scratch) / "store.db")
        variants: dict[str, Any] = {
            "no sink": None,
            "file sink": open_sinks([SinkSpec("file", f"{scratch}/audit.jsonl")])}
        try:
            journal = stack.enter_context(journald())
            variants["journal sink"] = open_sinks(
                [SinkSpec("journal")], socket_paths={"journal": journal.socket})
        except BaseException as exc:  # pytest's Skipped: journald cannot run here
            print(f"(no journal sink: {exc})")
        results: dict[str, list[float]] = {}
        try:
            for number in range(rounds + 1):  # the first round warms up, not counted
                for name, sinks in variants.items():
                    micros, _ = await one_round(store, entries, 32, sinks)
                    if number:
                        results.setdefault(name, []).append(micros)
        finally:
            await store.close()
            for sinks in variants.values():
                if sinks is not None:
                    sinks.close()
    print(f"\n{entries} query.run entries per round, 32 in flight, SQLite, {rounds} rounds "
          "(medians)\n")
    print("| sinks | entries/s | µs per entry | against no sink |")
    print("|---|---|---|---|")
    base = statistics.median(results["no sink"])
    for name, rows in results.items():
        micros = statistics.median(rows)
        print(f"| {name} | {1e6 / micros:,.0f} | {micros:,.0f} | {micros / base:.2f} |")


# -- reading a big log -------------------------------------------------------------------------

RARE_ACTOR = "alice"  # about one entry in 10,000
SERVICE_ACTORS = tuple(f"svc (token {i:04x}aa)" for i in range(4))
OTHER_ACTIONS = ("session.create", "session.delete", "user.update", "query.update",
                 "datasource.update")


def _entry(i: int, rng: Any) -> dict[str, Any]:
    """One entry as a busy appliance writes them: mostly query runs by a few service tokens."""
    from appliance.audit import RUN_ACTION, RUN_START_ACTION

    roll = rng.random()
    if roll < 0.0001:
        actor, action = RARE_ACTOR, "session.create"
    elif roll < 0.99:
        actor, action = rng.choice(SERVICE_ACTORS), RUN_ACTION
    elif roll < 0.995:
        actor, action = rng.choice(SERVICE_ACTORS), RUN_START_ACTION
    else:
        actor, action = "admin", rng.choice(OTHER_ACTIONS)
    outcome = "failed" if rng.random() < 0.005 else "ok"
    return {"action": action, "actor": actor, "target": f"query:q{rng.randrange(50):02d}",
            "outcome": outcome, "client": "10.0.0.7", "request_id": f"{i:016x}",
            "details": {"datasource": "ds", "mode": "json", "duration_ms": rng.randrange(90),
                        "row_count": rng.randrange(200), "truncated": False}}


async def fill(store: Any, count: int, *, batch: int = 4096, seed: int = 24,
               spent: list[float] | None = None, keys: Any = None) -> float:
    """Append `count` entries with `AuditLog.record`, `batch` at a time as concurrent runs (one
    group commit per 4,096); the seconds it took. `spent` gets the seconds inside the store's
    write steps (chain, insert, commit: where an index costs), apart from making the entries."""
    import contextlib
    import random

    from appliance.audit import AuditLog, FixedMacKeys

    rng = random.Random(seed)
    # A served store's entries are keyed with its own keyring's audit key (its verifier reads
    # them); a bare store's with throwaway keys.
    log = AuditLog(store, max_batch=batch, keys=keys or FixedMacKeys.generate())
    if spent is not None:
        write = store.write

        async def timed(fn: Any, **options: bool) -> Any:
            began = time.perf_counter()
            try:
                return await write(fn, **options)
            finally:
                spent.append(time.perf_counter() - began)

        store.write = timed
    started = time.perf_counter()
    try:
        for first in range(0, count, batch):
            calls = [log.record(**_entry(i, rng)) for i in range(first, min(count, first + batch))]
            with contextlib.ExitStack() as runs:
                for _ in calls:
                    runs.enter_context(log.run_under_way())
                await asyncio.gather(*calls)
    finally:
        await log.close()
        if spent is not None:
            del store.write
    return time.perf_counter() - started


async def _size(store: Any, path: Path | None) -> int:
    """Bytes the store holds (SQLite: the file after a checkpoint; PostgreSQL: audit_log with
    its indexes)."""
    if path is not None:
        await store.fetch_one("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size
    row = await store.fetch_one("SELECT pg_total_relation_size('audit_log') AS n")
    return int(row["n"])


async def append_costs(count: int) -> list[tuple[str, str, float, float, float]]:
    """(store, indexes, entries/s, µs per entry in the store's write, bytes per entry) for
    `count` entries on each store, with the read indexes of migration 13 and without them."""
    from appliance import settings
    from appliance.egress import Dialer, PolicyHolder
    from appliance.store import open_store
    from bench.proxy import PASSWORD, bench_cluster

    out = []
    with bench_cluster() as cluster, tempfile.TemporaryDirectory() as scratch:
        password_file = Path(scratch) / "store.password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        for indexes in ("with", "without"):
            for kind in ("SQLite", "PostgreSQL"):
                state = Path(scratch) / f"state-{kind}-{indexes}"
                state.mkdir(mode=0o700)
                env: dict[str, str] = {}
                path: Path | None = state / "appliance.db"
                if kind == "PostgreSQL":
                    database = f"store_{indexes}"
                    cluster.sql(f"CREATE DATABASE {database} OWNER app", database="postgres")
                    env = {"APPLIANCE_STORE_URL":
                           f"postgresql://app@127.0.0.1:{cluster.port}/{database}",
                           "APPLIANCE_STORE_PASSWORD_FILE": str(password_file),
                           "APPLIANCE_STORE_TLS": "disable"}
                    path = None
                s = settings.load(env=env, flags={"state_dir": str(state)})
                store = await open_store(s, Dialer(PolicyHolder(s.egress)))
                try:
                    if indexes == "without":
                        for name in ("audit_log_actor", "audit_log_action"):
                            await _drop_index(store, name)
                    empty = await _size(store, path)
                    spent: list[float] = []
                    seconds = await fill(store, count, spent=spent)
                    grown = await _size(store, path) - empty
                finally:
                    await store.close()
                write_us = sum(spent) / count * 1e6
                out.append((kind, indexes, count / seconds, write_us, grown / count))
                print(f"  {kind}, {indexes} indexes: {count / seconds:,.0f} entries/s, "
                      f"{write_us:.1f} µs per entry in the write, {grown / count:.0f} bytes "
                      "per entry", flush=True)
    return out


async def _drop_index(store: Any, name: str) -> None:
    async with store.transaction() as tx:
        await tx.execute(f"DROP INDEX {name}")


async def serve_filled(state: str, count: str) -> None:
    """The child: the appliance on `state` (SQLite), filled with `count` more entries first,
    announced as bench/proxy.py's servers are."""
    from appliance.http.app_keys import CORE
    from bench.proxy import start_appliance

    served = await start_appliance(Path(state))
    core = served.app[CORE]
    seconds = await fill(core.store, int(count), keys=core.vault)
    await served.announce(fill_seconds=seconds)


async def time_requests(port: int, token: str, ca: str, paths: dict[str, str],
                        repeat: int) -> dict[str, tuple[float, float, int, int]]:
    """For each path: (median ms, p95 ms, entries returned, positions scanned)."""
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=ca)
    headers = {"Authorization": f"Bearer {token}"}
    out = {}
    async with aiohttp.ClientSession(headers=headers) as http:
        for name, path in paths.items():
            times = []
            body: dict[str, Any] = {}
            for number in range(repeat + 1):
                started = time.perf_counter()
                async with http.get(f"https://127.0.0.1:{port}{path}", ssl=ctx) as resp:
                    body = await resp.json()
                    assert resp.status == 200, (path, body)
                if number:  # the first warms the caches up
                    times.append((time.perf_counter() - started) * 1000)
            times.sort()
            out[name] = (statistics.median(times), times[int(len(times) * 0.95) - 1],
                         len(body["entries"]), abs(body["scanned_from"] - body["scanned_to"]) + 1)
    return out


async def read_bench(count: int, sizes: int, repeat: int) -> None:
    import urllib.parse

    from bench.proxy import spawn, stop

    print(f"\nappend cost, {sizes:,} entries per store (group commit, 4,096 per batch):")
    costs = await append_costs(sizes)
    if not count:
        _print_costs(costs)
        return
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        proc, info = spawn(__file__, "filled", str(Path(scratch) / "state"), str(count))
        try:
            print(f"\nfilled {count:,} entries in {info['fill_seconds']:.1f} s "
                  f"({count / info['fill_seconds']:,.0f} entries/s; "
                  f"{time.perf_counter() - started:.1f} s with the start)", flush=True)
            port, token, ca = info["port"], info["token"], info["ca"]
            import ssl

            import aiohttp
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as h:
                ctx = ssl.create_default_context(cafile=ca)
                url = f"https://127.0.0.1:{port}/api/v1/audit"
                async with h.get(f"{url}?limit=1", ssl=ctx) as resp:
                    head = (await resp.json())["entries"][0]["position"]
                async with h.get(f"{url}?limit=1&before={head // 2}", ssl=ctx) as resp:
                    middle = (await resp.json())["entries"][0]
                async with h.get(f"{url}?limit=100&before={head // 2}", ssl=ctx) as resp:
                    deep_cursor = (await resp.json())["cursor"]
            since = urllib.parse.quote(middle["time"])
            paths = {
                "newest page (100)": "/api/v1/audit?limit=100",
                f"actor={RARE_ACTOR} (1 in 10,000)": f"/api/v1/audit?actor={RARE_ACTOR}",
                "actor=svc (4 tokens, 99%)": "/api/v1/audit?actor=svc",
                "action=session. (prefix, rare)": "/api/v1/audit?action=session.",
                "action=query.run (prefix, 99%)": "/api/v1/audit?action=query.run",
                "outcome=failed (0.5%, no index)": "/api/v1/audit?outcome=failed",
                "text matching nothing (bounded)": "/api/v1/audit?text=no-such-text",
                "actor=admin&outcome=failed (rare)": "/api/v1/audit?actor=admin&outcome=failed",
                "since=the middle (binary search)": f"/api/v1/audit?since={since}&order=asc",
                "deep page: before=head/2": f"/api/v1/audit?limit=100&before={head // 2}",
                "deep page: its cursor": f"/api/v1/audit?limit=100&cursor={deep_cursor}",
            }
            results = await time_requests(port, token, ca, paths, repeat)
        finally:
            stop([proc])
    print(f"\nGET /api/v1/audit on {count:,} entries (SQLite store), {repeat} requests each:\n")
    print("| request | median ms | p95 ms | entries | positions scanned |")
    print("|---|---|---|---|---|")
    for name, (median, p95, entries, scanned) in results.items():
        print(f"| {name} | {median:.1f} | {p95:.1f} | {entries} | {scanned:,} |")
    _print_costs(costs)



async def serve_filled_pg(state: str, count: str, port: str, password_file: str) -> None:
    """The child of `pg_read_bench`: `serve_filled` with the state directory's store in the
    database `store` of the cluster on `port` (as tests/conftest.py names one per state
    directory under APPLIANCE_TEST_STORE=postgres)."""
    from tests.support import app as test_app

    test_app.STORE_FOR = lambda _state: {
        "APPLIANCE_STORE_URL": f"postgresql://app@127.0.0.1:{port}/store",
        "APPLIANCE_STORE_PASSWORD_FILE": password_file, "APPLIANCE_STORE_TLS": "disable"}
    await serve_filled(state, count)


async def pg_read_bench(count: int, repeat: int) -> None:
    """GET /api/v1/audit on `count` entries in a PostgreSQL store (a throwaway cluster, as
    bench/proxy.py starts it): the requests `read_bench` times on SQLite, served the same way."""
    import ssl
    import urllib.parse

    import aiohttp

    from bench.proxy import PASSWORD, bench_cluster, spawn, stop

    with bench_cluster() as cluster, tempfile.TemporaryDirectory() as scratch:
        cluster.sql("CREATE DATABASE store OWNER app", database="postgres")
        password_file = Path(scratch) / "store.password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        started = time.perf_counter()
        proc, info = spawn(__file__, "filled-pg", str(Path(scratch) / "state"), str(count),
                           str(cluster.port), str(password_file))
        try:
            print(f"\nfilled {count:,} entries in {info['fill_seconds']:.1f} s "
                  f"({count / info['fill_seconds']:,.0f} entries/s; "
                  f"{time.perf_counter() - started:.1f} s with the start)", flush=True)
            port, token, ca = info["port"], info["token"], info["ca"]
            ctx = ssl.create_default_context(cafile=ca)
            url = f"https://127.0.0.1:{port}/api/v1/audit"
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as h:
                async def first(query: str) -> dict[str, Any]:
                    async with h.get(f"{url}?{query}", ssl=ctx) as resp:
                        body: dict[str, Any] = await resp.json()
                        return body

                head = (await first("limit=1"))["entries"][0]["position"]
                middle = (await first(f"limit=1&before={head // 2}"))["entries"][0]
                deep_cursor = (await first(f"limit=100&before={head // 2}"))["cursor"]
            queries = [
                ("newest page (100)", "limit=100"),
                (f"actor={RARE_ACTOR} (1 in 10,000)", f"actor={RARE_ACTOR}"),
                ("actor=svc (4 tokens, 99%)", "actor=svc"),
                ("action=session. (prefix, rare)", "action=session."),
                ("action=query.run (prefix, 99%)", "action=query.run"),
                ("outcome=failed (0.5%, no index)", "outcome=failed"),
                ("text matching nothing (bounded)", "text=no-such-text"),
                ("actor=admin&outcome=failed (rare)", "actor=admin&outcome=failed"),
                ("since=the middle (binary search)",
                 f"since={urllib.parse.quote(middle['time'])}&order=asc"),
                ("deep page: before=head/2", f"limit=100&before={head // 2}"),
                ("deep page: its cursor", f"limit=100&cursor={deep_cursor}"),
                ("target=query:q07 (prefix, 2%, no index)", "target=query:q07"),
                (f"actor={RARE_ACTOR}&order=asc (oldest first)",
                 f"actor={RARE_ACTOR}&order=asc"),
                ("until=the middle (binary search)", f"until={urllib.parse.quote(middle['time'])}"),
            ]
            results = await time_requests(port, token, ca, {
                name: f"/api/v1/audit?{query}" for name, query in queries}, repeat)
        finally:
            stop([proc])
    print(f"\nGET /api/v1/audit on {count:,} entries (PostgreSQL store), {repeat} requests "
          "each:\n")
    print("| request | median ms | p95 ms | entries | positions scanned |")
    print("|---|---|---|---|---|")
    for name, (median, p95, entries, scanned) in results.items():
        print(f"| {name} | {median:.1f} | {p95:.1f} | {entries} | {scanned:,} |")


def _print_costs(costs: list[tuple[str, str, float, float, float]]) -> None:
    print("\n| store | indexes | entries/s (all of it) | µs per entry in the store's write |"
          " bytes per entry |")
    print("|---|---|---|---|---|")
    for kind, indexes, rate, write_us, size in costs:
        print(f"| {kind} | {indexes} | {rate:,.0f} | {write_us:.1f} | {size:.0f} |")


if __name__ == "__main__":
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--read", action="store_true", help="the read benchmark (issue 24)")
    parser.add_argument("--sinks", action="store_true",
                        help="the append rate with no sink, a file sink, a journal sink")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--serve-filled", nargs=2, metavar=("STATE", "COUNT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--read-pg", action="store_true",
                        help="the read benchmark's requests on a PostgreSQL store")
    parser.add_argument("--serve-filled-pg", nargs=4, help=argparse.SUPPRESS,
                        metavar=("STATE", "COUNT", "PORT", "PASSWORD_FILE"))
    args = parser.parse_args()
    if args.serve_filled:
        asyncio.run(serve_filled(*args.serve_filled))
    elif args.serve_filled_pg:
        asyncio.run(serve_filled_pg(*args.serve_filled_pg))
    elif args.read_pg:
        asyncio.run(pg_read_bench(int(os.environ.get("APPLIANCE_BENCH_AUDIT_ENTRIES", "20000")),
                                  args.repeat))
    elif args.sinks:
        asyncio.run(sink_bench(args.entries, args.rounds))
    elif args.read:
        n = int(os.environ.get("APPLIANCE_BENCH_AUDIT_ENTRIES", "20000"))
        sizes = int(os.environ.get("APPLIANCE_BENCH_AUDIT_SIZES", str(n)))
        asyncio.run(read_bench(n, sizes, args.repeat))
    else:
        asyncio.run(main(args.entries, args.rounds))
