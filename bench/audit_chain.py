"""The keyed audit chain's costs (issue 24): one link by HMAC-SHA256 (`hmac.digest`, OpenSSL
one-shot) against the legacy SHA-256 and against `hmac.new`; a full `verify_store` on a SQLite
store of N entries (entries/s); an incremental one after a marker; the newest-marker lookup
through migration 12's partial index against the same query without it.

    PYTHONPATH=. .venv/bin/python bench/audit_chain.py [--entries 100000]

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_link() -> None:
    import orjson

    from appliance.audit.chain import hash_values, mac_values

    values = [123456, "2026-12-03T12:00:00.123456+00:00", "admin", "query.run", "query:orders",
              "ok", "203.0.113.9", "req-0123456789", '{"datasource":"ds","row_count":12}',
              "ab" * 32]
    key = os.urandom(32)
    rounds = 200_000

    def timed(fn: object) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            fn()  # type: ignore[operator]
        return (time.perf_counter() - started) / rounds * 1e6

    legacy = timed(lambda: hash_values(values))
    keyed = timed(lambda: mac_values(values, 1, key))
    slow = timed(lambda: hmac.new(key, orjson.dumps([*values, 1]), hashlib.sha256).hexdigest())
    print(f"one link: sha256 {legacy:.2f} µs, hmac.digest {keyed:.2f} µs "
          f"({keyed / legacy:.2f}x), hmac.new {slow:.2f} µs ({slow / keyed:.2f}x hmac.digest)")


async def store_figures(entries: int) -> None:
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
            full = await verify_store(store, keys)
            took = time.perf_counter() - started
            assert full.ok and full.entries == entries, full
            print(f"full verify of {entries}: {took:.2f} s, {entries / took:,.0f} entries/s")
            log = AuditLog(store, keys=keys)
            await BackgroundVerifier(log, interval=60).run_once()  # the marker
            for _ in range(2):  # a day's entries at one a second would be 86,400
                await store.write(functools.partial(_append_sync, entries=batch, key=key))
            started = time.perf_counter()
            incremental = await verify_store(store, keys, full=False)
            took = time.perf_counter() - started
            assert incremental.ok and incremental.mode == "incremental", incremental
            print(f"incremental verify of {incremental.entries} new entries after "
                  f"{entries}: {took * 1000:.0f} ms")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    per_link()
    asyncio.run(store_figures(args.entries))


if __name__ == "__main__":
    main()
