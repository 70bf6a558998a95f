"""The Store protocol, against both stores (SQLite and PostgreSQL, `any_store`): what every
service relies on behaves the same on either."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import StoreError
from appliance.store import Step


async def test_a_transaction_commits_whole_or_not_at_all(any_store: Any) -> None:
    with pytest.raises(RuntimeError):
        async with any_store.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("a", "1"))
            raise RuntimeError("boom")
    assert await any_store.fetch_one("SELECT * FROM meta WHERE key = ?", ("a",)) is None
    async with any_store.transaction() as tx:
        assert await tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("a", "1")) == 1
        assert await tx.fetch_one("SELECT value FROM meta WHERE key = ?", ("a",)) == \
            {"value": "1"}
        assert await tx.execute("UPDATE meta SET value = ? WHERE key LIKE ?", ("2", "%")) == 1
    assert await any_store.fetch_all("SELECT key, value FROM meta") == [
        {"key": "a", "value": "2"}]
    assert await any_store.lookup("SELECT value FROM meta WHERE key = ?", ("a",)) == \
        {"value": "2"}


async def test_a_statement_error_is_a_store_error_and_rolls_back(any_store: Any) -> None:
    with pytest.raises(StoreError):
        async with any_store.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("x", "1"))
            await tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("x", "again"))
    assert await any_store.fetch_one("SELECT * FROM meta WHERE key = 'x'") is None
    with pytest.raises(StoreError):
        await any_store.fetch_all("SELECT * FROM no_such_table")
    # The store still works afterwards.
    async with any_store.transaction() as tx:
        await tx.execute("INSERT INTO meta (key, value) VALUES ('y', '1')")
    assert await any_store.fetch_one("SELECT value FROM meta WHERE key = 'y'") == {"value": "1"}


async def test_write_runs_a_function_as_one_transaction(any_store: Any) -> None:
    def half(step: Step) -> None:
        step.insert("INSERT INTO meta (key, value) VALUES ('w1', 'x')")
        raise RuntimeError("stop half-way")

    with pytest.raises(RuntimeError):
        await any_store.write(half)
    assert await any_store.fetch_one("SELECT * FROM meta WHERE key = 'w1'") is None

    def whole(step: Step) -> int:
        assert step.execute_many("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [("w2", "a"), ("w3", "b")]) == 2
        assert step.execute_many(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            [("w2", "again"), ("w4", "c")]) == 1
        assert step.execute_many("UPDATE meta SET value = ? WHERE key = ?",
                                 [("z", "w3"), ("z", "none")]) == 1
        row = step.fetch_one("SELECT COUNT(*) AS n FROM meta WHERE key LIKE 'w%'")
        assert row is not None
        return int(row["n"])

    for durable in (True, False):
        async with any_store.transaction() as tx:
            await tx.execute("DELETE FROM meta")
        assert await any_store.write(whole, durable=durable) == 3
    rows = await any_store.fetch_all("SELECT key, value FROM meta ORDER BY key")
    assert rows == [{"key": "w2", "value": "a"}, {"key": "w3", "value": "z"},
                    {"key": "w4", "value": "c"}]
    with pytest.raises(StoreError):
        await any_store.write(lambda step: step.insert("INSERT INTO no_such_table VALUES (1)"))


async def test_a_key_the_store_chooses_comes_back_with_returning(any_store: Any) -> None:
    async with any_store.transaction() as tx:
        first = await tx.fetch_one(
            "INSERT INTO keyring_unseal (state, source, kdf, verifier, wrapped_root, created_at)"
            " VALUES ('pending', 'file', '{}', ?, ?, 0) RETURNING slot", (b"v", b"w"))
        second = await tx.fetch_one(
            "INSERT INTO keyring_unseal (state, source, kdf, verifier, wrapped_root, created_at)"
            " VALUES ('pending', 'file', '{}', ?, ?, 0) RETURNING slot", (b"v", b"w"))
    assert first is not None and second is not None
    assert second["slot"] > first["slot"]
    row = await any_store.fetch_one("SELECT verifier FROM keyring_unseal WHERE slot = ?",
                                    (first["slot"],))
    assert row == {"verifier": b"v"}


async def test_names_are_unique_and_found_without_regard_to_case(any_store: Any) -> None:
    async with any_store.transaction() as tx:
        await tx.execute(
            "INSERT INTO users (id, username, role, password_hash, created_at, updated_at)"
            " VALUES ('u1', 'Alice', 'admin', 'h', 0, 0)")
    assert await any_store.lookup("SELECT id FROM users WHERE username = ?", ("aLICE",)) == \
        {"id": "u1"}
    with pytest.raises(StoreError):
        async with any_store.transaction() as tx:
            await tx.execute(
                "INSERT INTO users (id, username, role, password_hash, created_at, updated_at)"
                " VALUES ('u2', 'ALICE', 'viewer', 'h', 0, 0)")
    async with any_store.transaction() as tx:
        for n, name in enumerate(("bob", "Carol", "alan")):
            await tx.execute(
                "INSERT INTO users (id, username, role, password_hash, created_at, updated_at)"
                " VALUES (?, ?, 'viewer', 'h', 0, 0)", (f"n{n}", name))
    rows = await any_store.fetch_all("SELECT username FROM users ORDER BY username")
    assert [r["username"] for r in rows] == ["alan", "Alice", "bob", "Carol"]


async def test_the_audit_log_is_append_only(any_store: Any) -> None:
    async with any_store.transaction() as tx:
        await tx.execute(
            "INSERT INTO audit_log (seq, time, actor, action, target, outcome, client, request_id,"
            " details, prev_hash, hash) VALUES (1, 't', 'a', 'x', 't', 'ok', 'c', 'r', '{}', 'p',"
            " 'h')")
    for sql in ("UPDATE audit_log SET actor = 'b'", "DELETE FROM audit_log"):
        with pytest.raises(StoreError):
            async with any_store.transaction() as tx:
                await tx.execute(sql)
    assert len(await any_store.fetch_all("SELECT seq FROM audit_log")) == 1


async def test_version_moves_at_once_after_a_durable_commit(any_store: Any) -> None:
    before = any_store.version()
    assert before is not None
    async with any_store.transaction() as tx:
        await tx.execute("INSERT INTO meta (key, value) VALUES ('v', '1')")
    await asyncio.sleep(0)  # SQLite reads its counter once per turn of the loop
    after = any_store.version()
    assert after is not None and after != before


async def test_snapshot_is_a_consistent_private_sqlite_copy(any_store: Any,
                                                          tmp_path: Path) -> None:
    async with any_store.transaction() as tx:
        await tx.execute("INSERT INTO meta (key, value) VALUES ('snap', '1')")
        await tx.execute(
            "INSERT INTO sealed_fields (kind, record_id, field, key_version, blob, updated_at,"
            " binding) VALUES ('k', 'r', 'f', 1, ?, 1.5, NULL)", (b"\x00\xffsealed",))
    await any_store.write(lambda step: step.insert(
        "INSERT INTO meta (key, value) VALUES ('fast', '2')"), durable=False)
    copy = tmp_path / "copy.db"
    await any_store.snapshot(copy)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not Path(f"{copy}-wal").exists()
    with pytest.raises(FileExistsError):
        await any_store.snapshot(copy)
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert dict(conn.execute("SELECT key, value FROM meta").fetchall()) == {
            "snap": "1", "fast": "2"}
        assert conn.execute("SELECT blob, updated_at, binding FROM sealed_fields").fetchall() \
            == [(b"\x00\xffsealed", 1.5, None)]
        version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
        assert version == await any_store.schema_version()
    finally:
        conn.close()


async def test_listeners_can_be_added_and_removed(any_store: Any) -> None:
    calls: list[int] = []
    remove = any_store.add_listener(lambda: calls.append(1))
    remove()
    remove()  # twice is harmless


async def test_two_closes_at_once_both_end(any_store: Any) -> None:
    """A store closed twice at the same time (a shutdown and a failing task, say): both closes
    end, and a third after them too (aiosqlite waits forever on a connection's second close
    when the first is still running)."""
    await any_store.fetch_one("SELECT 1 AS ok")
    await asyncio.wait_for(asyncio.gather(any_store.close(), any_store.close()), 10)
    await asyncio.wait_for(any_store.close(), 10)
