"""The keyed audit chain's costs (issue 24): one link by HMAC-SHA256 (`hmac.digest`, OpenSSL
one-shot) against the legacy SHA-256, `hmac.new` and the verifier's precomputed `MacState`; a
full `verify_store` on a SQLite store of N entries (entries/s), against the per-entry
`hmac.digest` walk of before measured on the same rows; an incremental one over `--day` new
entries after a marker; the newest-marker lookup through migration 12's partial index against
the same query without it; and the store file's size over prune cycles (retention).

    PYTHONPATH=. .venv/bin/python bench/audit_chain.py [--entries 100000] [--day 20000]
        [--cycles 3 --per-cycle 50000]

Prints figures and ratios measured in the same run; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import hmac
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_link() -> None:
    import orjson

    from appliance.audit.chain import MacState, hash_values, mac_values

    values = [123456, "2026-12-03T12:00:00.123456+00:00", "admin", "query.run", "query:orders",
              "ok", "203.0.113.9", "req-0123456789", '{"datasource":"ds","row_count":12}',
              "ab" * 32]
    key = os.urandom(32)
    rounds = 200_000

    def timed(fn: object) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            fn()  # type: ignore[operator]  # a timed callable of either shape
        return (time.perf_counter() - started) / rounds * 1e6

    legacy = timed(lambda: hash_values(values))
    keyed = timed(lambda: mac_values(values, 1, key))
    slow = timed(lambda: hmac.new(key, orjson.dumps([*values, 1]), hashlib.sha256).hexdigest())
    base = hmac.new(key, digestmod="sha256")

    def copied() -> str:
        mac = base.copy()
        mac.update(orjson.dumps([*values, 1]))
        return mac.hexdigest()

    copy = timed(copied)
    state = MacState(key)
    pads = timed(lambda: state.mac((*values, 1)))
    print(f"one link: sha256 {legacy:.2f} µs, hmac.digest {keyed:.2f} µs "
          f"({keyed / legacy:.2f}x), hmac.new {slow:.2f} µs ({slow / keyed:.2f}x hmac.digest), "
          f"hmac.new once + .copy() {copy:.2f} µs ({copy / keyed:.2f}x), MacState {pads:.2f} µs "
          f"({keyed / pads:.2f}x faster than hmac.digest)")


async def store_figures(entries: int, day: int) -> None:
    from appliance.audit import BackgroundVerifier, FixedMacKeys, verify_store
    from appliance.audit.log import AuditLog, _append_sync, _fields
    from appliance.store import open_sqlite_store

    keys = FixedMacKeys.generate()
    key = keys.mac_key()
    assert key is not None
    with tempfile.TemporaryDirectory() as scratch:
        store = await open_sqlite_store(Path(scratch) / "audit.db")
        try:
            batch = [_fields(action="query.run", actor="viewer", target="query:orders",
                             outcome="ok", client="203.0.113.9", request_id="req-0123456789",
                             details={"datasource": "ds", "row_count": 12})] * 5000
            started = time.perf_counter()
            for _ in range(entries // len(batch)):
                await store.write(functools.partial(_append_sync, entries=batch, key=key))
            written = time.perf_counter() - started
            print(f"appended {entries} keyed entries in batches of 5000: "
                  f"{entries / written:,.0f} entries/s")
            started = time.perf_counter()
            full = await verify_store(store, keys, chunk=20000)
            took = time.perf_counter() - started
            assert full.ok and full.entries == entries, full
            baseline = await walk_before(store, keys, min(entries, 100_000))
            print(f"full verify of {entries}: {took:.2f} s, {entries / took:,.0f} entries/s "
                  f"(the walk of before, per-entry hmac.digest over SELECT * in chunks of "
                  f"5000 without read-ahead: {baseline:,.0f} entries/s; "
                  f"{entries / took / baseline:.2f}x)")
            log = AuditLog(store, keys=keys)
            await BackgroundVerifier(log, interval=60).run_once()  # the marker
            for _ in range(max(1, day // len(batch))):  # a day's entries after the marker
                await store.write(functools.partial(_append_sync, entries=batch, key=key))
            started = time.perf_counter()
            incremental = await verify_store(store, keys, full=False)
            took = time.perf_counter() - started
            assert incremental.ok and incremental.mode == "incremental", incremental
            print(f"incremental verify of {incremental.entries} new entries after "
                  f"{entries}: {took * 1000:.0f} ms, {incremental.entries / took:,.0f} "
                  "entries/s")
            marker_sql = ("SELECT * FROM audit_log WHERE action = 'audit.verified'"
                          " AND outcome = 'ok' ORDER BY seq DESC LIMIT 1")
            for label, sql in (("partial index", marker_sql),
                               ("without it", marker_sql.replace(
                                   "FROM audit_log", "FROM audit_log NOT INDEXED"))):
                started = time.perf_counter()
                for _ in range(20):
                    await store.fetch_one(sql)
                print(f"newest marker, {label}: "
                      f"{(time.perf_counter() - started) / 20 * 1000:.2f} ms")
            await log.close()
        finally:
            await store.close()


async def walk_before(store: object, keys: object, count: int) -> float:
    """Entries/s of the walk as it was before (the first `count` entries): `SELECT *` in chunks
    of 5000 read one after the other, every entry through `Walk._step` (`hmac.digest` per
    entry), which is what `Walk.feed` did."""
    from appliance.audit.chain import Walk

    class WalkBefore(Walk):
        def feed(self, rows: Any) -> bool:
            return all(self._step(row) is None for row in rows)

    walk = WalkBefore(keys.mac_key_of)  # type: ignore[attr-defined]  # the keys of before, kept for the same-run baseline
    started, last, seen = time.perf_counter(), 0, 0
    while seen < count:
        rows = await store.fetch_all(  # type: ignore[attr-defined]  # a SQLite store's own read, for the baseline
            "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT 5000", (last, ))
        if not rows:
            break
        assert walk.feed(rows[:count - seen])
        seen += len(rows[:count - seen])
        last = rows[-1]["seq"]
    return seen / (time.perf_counter() - started)


async def retention_figures(cycles: int, per_cycle: int) -> None:
    """The store file over prune cycles: each writes `per_cycle` entries, then prunes with
    keep_days 30 and a clock 31 days ahead (so all of them are old; the verifier's marker, by
    which the prune stops, is written first); the file's size after each."""
    from appliance.audit import BackgroundVerifier, FixedMacKeys
    from appliance.audit.log import AuditLog, _append_sync, _fields
    from appliance.audit.retention import DAY, Pruner
    from appliance.store import open_sqlite_store

    keys = FixedMacKeys.generate()
    key = keys.mac_key()
    assert key is not None
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "audit.db"
        store = await open_sqlite_store(path)
        log = AuditLog(store, keys=keys)
        verifier = BackgroundVerifier(log, interval=60)
        pruner = Pruner(log, verifier, keep_days=30, clock=lambda: time.time() + 31 * DAY)
        try:
            mode = (await store.fetch_one("PRAGMA auto_vacuum") or {}).get("auto_vacuum")
            print(f"retention: SQLite auto_vacuum = {mode} (none); {cycles} cycles of "
                  f"{per_cycle} entries written, verified, pruned (keep_days 30)")
            batch = [_fields(action="query.run", actor="viewer", target="query:orders",
                             outcome="ok", client="203.0.113.9", request_id="req-0123456789",
                             details={"datasource": "ds", "row_count": 12})] * 5000
            for cycle in range(1, cycles + 1):
                for _ in range(per_cycle // len(batch)):
                    await store.write(functools.partial(_append_sync, entries=batch, key=key))
                written = _size(path)
                started = time.perf_counter()
                pruned = await pruner.run_once()
                took = time.perf_counter() - started
                assert pruned is not None
                free = (await store.fetch_one("PRAGMA freelist_count") or {}).get(
                    "freelist_count")
                print(f"  cycle {cycle}: store {written / 1e6:.1f} MB (file and WAL) before the "
                      f"prune; pruned {pruned.count} in {took:.2f} s ({pruned.count / took:,.0f}"
                      f" entries/s, its verification included); after: "
                      f"{_size(path) / 1e6:.1f} MB, {free} free pages")
            print(f"  then a full verify: {await verify_store_full(store, keys)}")
        finally:
            await log.close()
            await store.close()


async def verify_store_full(store: object, keys: object) -> str:
    from appliance.audit import verify_store

    result = await verify_store(store, keys)  # type: ignore[arg-type]  # the fixed test keys stand in for the vault
    return "ok" if result.ok else f"BROKEN at {result.position}: {result.reason}"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--day", type=int, default=20_000,
                        help="entries after the marker for the incremental verify "
                             "(a day at ten runs a second: 864000)")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--per-cycle", type=int, default=50_000)
    args = parser.parse_args()
    per_link()
    asyncio.run(store_figures(args.entries, args.day))
    if args.cycles:
        asyncio.run(retention_figures(args.cycles, args.per_cycle))


if __name__ == "__main__":
    main()
