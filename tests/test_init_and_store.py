"""`appliance init` (idempotent, private modes) and the SQLite store (migrations, crash safety)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance.errors import StoreError
from appliance.store import Step, migrations, open_sqlite_store
from appliance.store.migrations import Migration

from .conftest import clean_env, run_cli
from .support.cli import run_verb


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_private_state(state: Path) -> None:
    result = run_cli("init", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert mode(state) == 0o700
    secret = state / "instance.key"
    assert mode(secret) == 0o600
    assert len(secret.read_bytes()) == 32
    for path in state.rglob("*"):
        assert mode(path) & 0o077 == 0, path
    assert "created" in result.stdout
    assert secret.read_bytes().hex() not in result.stdout + result.stderr


def test_init_is_idempotent_and_never_overwrites_the_secret(state: Path) -> None:
    assert run_verb("init", "--state-dir", str(state)).returncode == 0
    secret = (state / "instance.key").read_bytes()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.rglob("*")
              if p.is_file() and not p.name.endswith(("-wal", "-shm"))}
    second = run_verb("init", "--state-dir", str(state))
    assert second.returncode == 0
    assert "nothing to do" in second.stdout
    assert "exists" in second.stdout and "instance secret" in second.stdout
    assert (state / "instance.key").read_bytes() == secret
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before}
    assert after == before


def test_init_with_umask_000_still_private(state: Path) -> None:
    code = ("import os, sys; os.umask(0); from appliance.cli import main; "
            f"sys.exit(main(['init', '--state-dir', {str(state)!r}]))")
    subprocess.run([sys.executable, "-c", code], check=True, env=clean_env(), capture_output=True)
    assert mode(state) == 0o700
    assert mode(state / "instance.key") == 0o600
    assert mode(state / "appliance.db") == 0o600


@pytest.mark.parametrize("bad_mode", [0o750, 0o705, 0o777])
def test_refuses_group_or_world_accessible_state_dir(state: Path, bad_mode: int) -> None:
    assert run_verb("init", "--state-dir", str(state)).returncode == 0
    os.chmod(state, bad_mode)
    for run, verb in ((run_verb, ["init"]), (run_cli, ["serve", "--listen", "127.0.0.1:0"])):
        result = run(*verb, "--state-dir", str(state))
        assert result.returncode != 0
        assert "accessible to group or others" in result.stderr
        assert "chmod 700" in result.stderr


def test_serve_without_init_says_what_to_do(state: Path) -> None:
    result = run_cli("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "appliance init" in result.stderr
    assert not state.exists()


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = run_verb("init", "--state-dir", str(target))
    assert result.returncode == 2
    assert "not a directory" in result.stderr


# --- store ----------------------------------------------------------------------------------


async def test_migrations_on_an_empty_store(tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path / "s.db")
    try:
        assert await store.schema_version() == migrations.LATEST
        rows = await store.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in migrations.MIGRATIONS]
        journal = await store.fetch_one("PRAGMA journal_mode")
        assert journal is not None and next(iter(journal.values())) == "wal"
    finally:
        await store.close()
    assert mode(tmp_path / "s.db") == 0o600


async def test_the_store_version_sees_another_process_commit_from_the_next_loop_turn(
        tmp_path: Path) -> None:
    """`version` (what the token cache checks) is read once per loop turn: a commit by another
    connection (the CLI) counts from the next turn, never later."""
    store = await open_sqlite_store(tmp_path / "s.db")
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        for round_ in range(3):
            first = store.version()
            assert first is not None
            other.execute("INSERT INTO login_throttle (key, failures, locked_until, updated_at)"
                          " VALUES (?, 1, 0, 0)", (f"k{round_}",))
            assert store.version() == first  # the same turn: its first reading stands
            await asyncio.sleep(0)
            assert store.version() != first  # the next turn reads again and sees the commit
            await asyncio.sleep(0)
    finally:
        other.close()
        await store.close()


async def test_migrations_on_an_existing_store_apply_only_new_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    store = await open_sqlite_store(path)
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO meta (key, value) VALUES ('kept', 'yes')")
    await store.close()

    extra = Migration(10_000, "test table", ("CREATE TABLE t_extra (x INTEGER) STRICT",))
    monkeypatch.setattr("appliance.store.sqlite.MIGRATIONS", (*migrations.MIGRATIONS, extra))
    monkeypatch.setattr("appliance.store.sqlite.LATEST", extra.version)
    store = await open_sqlite_store(path)
    try:
        assert await store.schema_version() == extra.version
        assert await store.fetch_one("SELECT value FROM meta WHERE key = 'kept'") == {"value": "yes"}
        assert await store.fetch_all("SELECT * FROM t_extra") == []
    finally:
        await store.close()

    # Opening again applies nothing new and fails on nothing.
    store = await open_sqlite_store(path)
    count = await store.fetch_one("SELECT COUNT(*) AS n FROM schema_migrations")
    await store.close()
    assert count == {"n": len(migrations.MIGRATIONS) + 1}


async def test_a_failing_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    store = await open_sqlite_store(path)
    await store.close()
    broken = Migration(10_001, "broken", ("CREATE TABLE half (x INTEGER) STRICT",
                                          "THIS IS NOT SQL"))
    monkeypatch.setattr("appliance.store.sqlite.MIGRATIONS", (*migrations.MIGRATIONS, broken))
    monkeypatch.setattr("appliance.store.sqlite.LATEST", broken.version)
    with pytest.raises(StoreError):
        await open_sqlite_store(path)
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
    conn.close()
    assert "half" not in tables
    assert version == migrations.LATEST


async def test_a_store_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await (await open_sqlite_store(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (999999, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this appliance"):
        await open_sqlite_store(path)


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        await open_sqlite_store(path)


async def test_a_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path / "s.db")
    try:
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
                raise RuntimeError("boom")
        assert await store.fetch_one("SELECT * FROM meta WHERE key = 'a'") is None
    finally:
        await store.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from appliance.store import open_sqlite_store

    async def main(path):
        store = await open_sqlite_store(Path(path))
        async with store.transaction() as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS crash_parent (id INTEGER PRIMARY KEY, n INTEGER)")
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS crash_child (parent INTEGER, k INTEGER, v TEXT)")
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            async with store.transaction() as tx:
                row = await tx.fetch_one(
                    "INSERT INTO crash_parent (n) VALUES (?) RETURNING id", (10,))
                pid = row["id"]
                for k in range(10):
                    await tx.execute("INSERT INTO crash_child VALUES (?, ?, ?)",
                                     (pid, k, "x" * 200))

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1])
def test_sigkill_mid_write_loop_leaves_a_consistent_store(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "crash.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, env=clean_env())
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    parents = conn.execute("SELECT COUNT(*) FROM crash_parent").fetchone()[0]
    assert parents > 0
    incomplete = conn.execute(
        "SELECT p.id FROM crash_parent p LEFT JOIN crash_child c ON c.parent = p.id "
        "GROUP BY p.id HAVING COUNT(c.k) != p.n"
    ).fetchall()
    orphans = conn.execute(
        "SELECT COUNT(*) FROM crash_child WHERE parent NOT IN (SELECT id FROM crash_parent)"
    ).fetchone()[0]
    conn.close()
    assert incomplete == [] and orphans == 0


async def test_write_is_one_transaction_and_restores_durability(tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path / "s.db")
    try:
        def half(step: Step) -> None:
            step.insert("INSERT INTO meta (key, value) VALUES ('w1', 'x')")
            raise RuntimeError("stop half-way")

        with pytest.raises(RuntimeError):
            await store.write(half, durable=False)
        assert await store.fetch_one("SELECT * FROM meta WHERE key = 'w1'") is None

        def whole(step: Step) -> int:
            assert step.execute_many("INSERT INTO meta (key, value) VALUES (?, ?)",
                                     [("w2", "a"), ("w3", "b")]) == 2
            return synchronous(step)

        assert await store.write(whole, durable=False) == 1  # NORMAL inside the fast write
        rows = await store.fetch_all("SELECT key FROM meta WHERE key LIKE 'w%' ORDER BY key")
        assert [r["key"] for r in rows] == ["w2", "w3"]
        assert await store.write(synchronous) == 2  # FULL again for everything else
        with pytest.raises(StoreError):
            await store.write(lambda step: step.insert("INSERT INTO no_such_table VALUES (1)"))
    finally:
        await store.close()


def synchronous(step: Step) -> int:
    row = step.fetch_one("PRAGMA synchronous")
    assert row is not None
    return int(row["synchronous"])


async def test_the_aiosqlite_private_seam_is_still_there(tmp_path: Path) -> None:
    """aiosqlite's private `Connection._execute(fn, *args)` and `Connection._conn` (the sqlite3
    connection), used in appliance/store/aiosqlite_private.py only: if this fails, aiosqlite
    changed them; see that module for what they buy and the public way to replace them."""
    import threading

    import aiosqlite

    from appliance.store.aiosqlite_private import run_on_thread

    assert asyncio.iscoroutinefunction(aiosqlite.Connection._execute)
    assert isinstance(aiosqlite.Connection.__dict__.get("_conn"), property)
    conn = await aiosqlite.connect(tmp_path / "seam.db")
    try:
        def where(raw: sqlite3.Connection, extra: int) -> tuple[type, int, int]:
            return type(raw), threading.get_ident(), extra

        kind, thread, extra = await run_on_thread(conn, where, 7)
        assert kind is sqlite3.Connection and extra == 7
        assert thread != threading.get_ident()  # on the connection's own thread
    finally:
        await conn.close()


async def test_snapshot_is_a_consistent_private_copy(tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path / "s.db")
    try:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('snap', '1')")
        await store.write(lambda step: step.insert(
            "INSERT INTO meta (key, value) VALUES ('fast', '2')"), durable=False)
        copy = tmp_path / "copy.db"
        await store.snapshot(copy)
        assert mode(copy) == 0o600
        with pytest.raises(FileExistsError):
            await store.snapshot(copy)
    finally:
        await store.close()
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('snap', 'fast')")
                    .fetchall()) == {"snap": "1", "fast": "2"}
    finally:
        conn.close()


async def _ticking(seconds: float) -> list[float]:
    """Loop timestamps every 5 ms for `seconds`: a stalled event loop shows as a gap."""
    import asyncio

    ticks: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ticks.append(time.monotonic())
        await asyncio.sleep(0.005)
    return ticks


async def test_point_reads_and_fast_writes_run_on_the_loop_when_the_file_is_free(
        tmp_path: Path) -> None:
    import threading

    store = await open_sqlite_store(tmp_path / "s.db")
    try:
        def put(step: Step) -> int:
            step.insert("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            return threading.get_ident()

        assert await store.write(put, durable=False) == threading.get_ident()
        assert await store.lookup("SELECT value FROM meta WHERE key = ?", ("k",)) == \
            {"value": "v"}
        assert await store.lookup("SELECT value FROM meta WHERE key = ?", ("none",)) is None
        # A durable write never commits on the loop: its fsync would stall every request.
        assert await store.write(lambda c: threading.get_ident()) != threading.get_ident()
        with pytest.raises(StoreError):
            await store.lookup("SELECT * FROM no_such_table")
        with pytest.raises(StoreError):
            await store.write(lambda step: step.insert("INSERT INTO no_such_table VALUES (1)"),
                              durable=False)
        assert await store.fetch_one("SELECT value FROM meta WHERE key = 'k'") == {"value": "v"}
    finally:
        await store.close()


async def test_fast_paths_step_aside_while_another_process_holds_the_file(
        tmp_path: Path) -> None:
    """Another process writing (the CLI, say): a fast write waits on the writer's thread, point
    reads still answer (WAL readers never wait), and the event loop is never stalled."""
    import asyncio
    import threading

    path = tmp_path / "s.db"
    store = await open_sqlite_store(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO meta (key, value) VALUES ('held', '1')")
        threads: list[int] = []

        def put(step: Step) -> None:
            threads.append(threading.get_ident())
            step.insert("INSERT INTO meta (key, value) VALUES ('after', '2')")

        ticker = asyncio.create_task(_ticking(0.6))
        write = asyncio.create_task(store.write(put, durable=False))
        await asyncio.sleep(0.1)
        assert await store.lookup("SELECT value FROM meta WHERE key = 'held'") is None
        assert not write.done()
        await asyncio.sleep(0.2)
        holder.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        ticks = await ticker
        assert threads and threads[-1] != threading.get_ident()  # it took the writer's thread
        assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.1
        rows = await store.fetch_all("SELECT key FROM meta WHERE key IN ('held', 'after')"
                                     " ORDER BY key")
        assert [r["key"] for r in rows] == ["after", "held"]

        assert await store.lookup("SELECT value FROM meta WHERE key = 'held'") == {"value": "1"}
    finally:
        holder.close()
        await store.close()


async def test_fast_writes_are_checkpointed_off_the_loop(tmp_path: Path) -> None:
    from appliance.store import sqlite as sqlite_store

    path = tmp_path / "s.db"
    store = await open_sqlite_store(path)
    try:
        size = path.stat().st_size
        for i in range(sqlite_store.CHECKPOINT_EVERY):
            await store.write(lambda step, i=i: step.insert(
                "INSERT INTO meta (key, value) VALUES (?, ?)", (f"c{i}", "x" * 2000)),
                durable=False)
        assert store._checkpoint is not None
        await store._checkpoint
        # The rows reached the database file itself, not only the WAL.
        assert path.stat().st_size > size + sqlite_store.CHECKPOINT_EVERY * 2000
    finally:
        await store.close()
