"""Audit commit benchmark: what a run's audit entry costs on each store, measured in the same run.
A `query.run` entry recorded the way the runner records it (inside `run_under_way`, so concurrent
runs share a group commit; non-durable, as run entries are), 1 and 32 at a time, through
`AuditLog` on a SQLite store (a file) and on a PostgreSQL store (a throwaway cluster, as
bench/proxy.py starts it). Prints wall time per entry, entries per commit and the ratio
PostgreSQL/SQLite; never asserts.

Run: .venv/bin/python bench/audit.py [--entries N] [--rounds N]
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


async def one_round(store: Any, entries: int, concurrency: int) -> tuple[float, float]:
    """(microseconds per entry, entries per commit) for `entries` run entries."""
    from appliance.audit import RUN_ACTION, AuditLog, FixedMacKeys

    audit = AuditLog(store, keys=FixedMacKeys.generate())
    commits = 0
    write = store.write

    async def counted(fn: Any, *, durable: bool = True) -> Any:
        nonlocal commits
        commits += 1
        return await write(fn, durable=durable)

    store.write = counted
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
        del store.write
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
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        try:
            for concurrency in (1, 32):
                for number in range(rounds + 1):  # the first round warms up, not counted
                    for name, store in stores.items():  # the stores take turns
                        measured = await one_round(store, entries, concurrency)
                        if number:
                            results.setdefault((name, concurrency), []).append(measured)
        finally:
            for store in stores.values():
                await store.close()
    print(f"\n{entries} query.run entries per round, {rounds} rounds (medians)\n")
    print("| in flight | store | µs per entry | entries per commit |")
    print("|---|---|---|---|")
    for concurrency in (1, 32):
        for name in stores:
            rows = results[(name, concurrency)]
            print(f"| {concurrency} | {name} | {statistics.median(r[0] for r in rows):,.0f} | "
                  f"{statistics.median(r[1] for r in rows):.1f} |")
        pg, lite = results[("PostgreSQL", concurrency)], results[("SQLite", concurrency)]
        ratios = [p[0] / s[0] for p, s in zip(pg, lite, strict=True)]
        print(f"|   | PostgreSQL / SQLite | {statistics.median(ratios):.2f} | |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.rounds))
