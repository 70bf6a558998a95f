"""Helpers for the audit chain's tests (no tests here): entries written both ways the appliance
writes them, a large seeded mix of actors, actions, outcomes and targets for the reading tests
(`fill`), a legacy chain written as the code before migration 12 wrote it (plain SHA-256, no
key version), and what someone holding the store's credentials (or its SQLite file) could do to
a chain (drop the append-only triggers, rewrite rows, recompute links with a hash or a key of
their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from appliance.audit import AuditLog, Context, FixedMacKeys, MacKeys
from appliance.audit.chain import GENESIS, HASHED_FIELDS, encode_details
from appliance.store import SQLiteStore, Store


async def record(log: AuditLog, store: Store, count: int, start: int = 0) -> None:
    """`count` entries, half inside a transaction, half group-committed."""
    for i in range(start, start + count):
        if i % 2:
            async with store.transaction() as tx:
                await log.record(tx, action="user.create", target=f"user:u{i}",
                                 details={"role": "viewer"}, context=Context(actor="tester"))
        else:
            await log.record(action="query.run", target=f"query:q{i}",
                             details={"datasource": "ds", "row_count": i})


ACTORS = ("admin", "admin (token t1)", "admin (token t2)", "adminx", "bob", "cli:init",
          "system", "anonymous")
ACTIONS = ("session.create", "session.delete", "query.run", "query.run.start", "user.create",
           "user.update", "keys.rotate")
TARGETS = ("query:orders", "query:Orders_2", "user:bob", "user:admin", "datasource:ds-1", "")


async def fill(store: Store, count: int, seed: int = 7, keys: MacKeys | None = None) -> None:
    """`count` entries through the audit log's own write path, in group-committed batches."""
    rng = random.Random(seed)
    log = AuditLog(store, keys=keys or FixedMacKeys.generate())
    try:
        for start in range(0, count, 500):
            calls = []
            for i in range(start, min(count, start + 500)):
                actor = ACTORS[0] if rng.random() < 0.3 else rng.choice(ACTORS)
                note = rng.choice(("Needle%here", "needle_x", "plain", "NEEDLE"))
                calls.append(log.record(
                    action=rng.choice(ACTIONS), outcome=rng.choice(("ok", "ok", "denied",
                                                                    "failed", "error")),
                    target=rng.choice(TARGETS), details={"i": i, "note": note},
                    context=Context(actor=actor, client="127.0.0.1")))
            with contextlib.ExitStack() as runs:  # as concurrent runs: one commit for many
                for _ in calls:
                    runs.enter_context(log.run_under_way())
                await asyncio.gather(*calls)
    finally:
        await log.close()


def legacy_link(values: Sequence[Any]) -> str:
    """The link as the pre-12 code wrote it: SHA-256 over the compact JSON array of
    HASHED_FIELDS' values (its `chain.hash_values`, kept here verbatim)."""
    return hashlib.sha256(orjson.dumps(list(values))).hexdigest()


async def write_legacy_entries(store: Store, count: int, *, actor: str = "old-version") -> None:
    """Append `count` entries as the pre-12 write path did (`_chain` with `hash_values`; no
    `mac_version`, which that schema did not have: NULL here), in one transaction."""
    async with store.transaction() as tx:
        head = await tx.fetch_one("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        seq = int(head["seq"]) if head else 0
        prev = str(head["hash"]) if head else GENESIS
        for i in range(count):
            seq += 1
            hashed = (seq, f"2025-06-01T12:00:{i % 60:02d}.000000+00:00", actor, "user.create",
                      f"user:legacy-{seq}", "ok", "local", "", encode_details({"role": "viewer"}),
                      prev)
            prev = legacy_link(hashed)
            await tx.execute(
                "INSERT INTO audit_log (seq, time, actor, action, target, outcome, client,"
                " request_id, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*hashed, prev))


def is_sqlite(store: Store) -> bool:
    return isinstance(store, SQLiteStore)


async def drop_triggers(store: Store) -> None:
    on = "" if is_sqlite(store) else " ON audit_log"
    async with store.transaction() as tx:
        for trigger in ("audit_log_no_update", "audit_log_no_delete"):
            await tx.execute(f"DROP TRIGGER IF EXISTS {trigger}{on}")


async def tamper(store: Store, *statements: str) -> None:
    await drop_triggers(store)
    async with store.transaction() as tx:
        for statement in statements:
            await tx.execute(statement)


def tamper_file(path: Path, *statements: str) -> None:
    """What someone with the SQLite file could do: drop the append-only triggers, then change
    rows (autocommit, no appliance running)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


Relink = Callable[[list[Any], Any], tuple[str, Any]]  # (values, mac_version) -> (link, version)


def sha256_relink(values: list[Any], version: Any) -> tuple[str, Any]:
    """Recompute a link with plain SHA-256, keeping the row's key version."""
    return legacy_link(values), version


def unkeyed_relink(values: list[Any], version: Any) -> tuple[str, Any]:
    """Recompute a link with plain SHA-256 and claim the entry is a legacy one."""
    return legacy_link(values), None


def wrong_key_relink(key: bytes) -> Relink:
    """Recompute a link as the keyed code does, under a key that is not the keyring's."""
    def relink(values: list[Any], version: Any) -> tuple[str, Any]:
        return hmac.digest(key, orjson.dumps([*values, version]), "sha256").hex(), version
    return relink


async def edit_and_relink(store: Store, position: int, relink: Relink) -> None:
    """Change entry `position`'s target, then recompute its link and every later one (each
    `prev_hash` too) with `relink`: what a store writer without the audit key can do."""
    await drop_triggers(store)
    rows = await store.fetch_all("SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq",
                                 (position - 1,))
    prev = GENESIS
    async with store.transaction() as tx:
        for row in rows:
            seq = int(row["seq"])
            if seq < position:
                prev = str(row["hash"])
                continue
            values = [row[name] for name in HASHED_FIELDS]
            values[HASHED_FIELDS.index("prev_hash")] = prev
            if seq == position:
                values[HASHED_FIELDS.index("target")] = "user:someone-else"
            link, version = relink(values, row["mac_version"])
            await tx.execute("UPDATE audit_log SET target = ?, prev_hash = ?, hash = ?, "
                             "mac_version = ? WHERE seq = ?",
                             (values[HASHED_FIELDS.index("target")], prev, link, version, seq))
            prev = link
