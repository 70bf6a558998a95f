"""The PostgreSQL store (`[store] url`): several instances on one database, the store clock and
its notifications, bad settings, and a real `appliance serve` on it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from appliance import settings
from appliance.egress import Dialer, PolicyHolder
from appliance.errors import StoreUnavailable
from appliance.store import Step, open_store
from appliance.store.migrations import LATEST, MIGRATIONS
from appliance.store.postgres import PostgresStore

from .conftest import (
    PG_PASSWORD,
    PostgresServer,
    StoreDatabase,
    clean_env,
    new_store_database,
    pg_binary,
    postgres_cluster,
    run_cli,
)
from .support.cli import run_verb
from .support.commit_relay import LostCommitAnswer, open_relayed
from .support.json_api import api
from .support.ports import free_port
from .support.served import init_with_token, seed_by_id_query, serve
from .support.shared_store import open_pg, store_settings, two_instances


async def moves_within(store: PostgresStore, before: int | None, seconds: float) -> float:
    start = time.monotonic()
    while store.version() == before:
        assert time.monotonic() - start < seconds, "version() did not move in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def put(store: PostgresStore, key: str, value: str) -> None:
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
                         "UPDATE SET value = excluded.value", (key, value))


# --- several instances -------------------------------------------------------------------------


async def test_two_instances_starting_at_once_migrate_once(store_database: StoreDatabase,
                                                           tmp_path: Path) -> None:
    async with two_instances(store_database, tmp_path) as (a, b):
        assert await a.schema_version() == await b.schema_version() == LATEST
        rows = await a.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]


async def test_concurrent_read_modify_writes_on_two_instances_lose_no_update(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """Each write reads the counter and writes it back + 1: without the cluster-wide write lock
    two instances would read the same value and one increment would be lost."""
    async with two_instances(store_database, tmp_path) as (a, b):
        await put(a, "counter", "0")

        def increment(step: Step) -> None:
            row = step.fetch_one("SELECT value FROM meta WHERE key = 'counter'")
            assert row is not None
            time.sleep(0.001)  # widen the window a lost update needs
            step.execute_many("UPDATE meta SET value = ? WHERE key = 'counter'",
                              [(str(int(row["value"]) + 1),)])

        async def increment_tx(store: PostgresStore) -> None:
            async with store.transaction() as tx:
                row = await tx.fetch_one("SELECT value FROM meta WHERE key = 'counter'")
                assert row is not None
                await asyncio.sleep(0.001)
                await tx.execute("UPDATE meta SET value = ? WHERE key = 'counter'",
                                 (str(int(row["value"]) + 1),))

        jobs = []
        for store in (a, b):
            jobs += [store.write(increment) for _ in range(40)]
            jobs += [store.write(increment, durable=False) for _ in range(20)]
            jobs += [increment_tx(store) for _ in range(40)]
        await asyncio.gather(*jobs)
        assert await b.fetch_one("SELECT value FROM meta WHERE key = 'counter'") == \
            {"value": "200"}


async def test_version_moves_on_another_instance_within_a_second(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    async with two_instances(store_database, tmp_path) as (a, b):
        heard: list[int] = []
        b.add_listener(lambda: heard.append(1))
        for round_ in range(3):
            before_a, before_b = a.version(), b.version()
            await put(a, "k", str(round_))
            assert a.version() != before_a  # its own commit: at once
            assert await moves_within(b, before_b, 1.0) < 1.0
        assert len(heard) == 3
        # B's own commit moves its version but is not "another process".
        before = b.version()
        await put(b, "k", "mine")
        assert b.version() != before
        await asyncio.sleep(0.3)
        assert len(heard) == 3


async def test_version_still_moves_when_the_listener_connection_is_killed(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    async with two_instances(store_database, tmp_path) as (a, b):
        listener = b._listener
        assert listener is not None
        pid = listener.get_server_pid()
        store_database.sql(f"SELECT pg_terminate_backend({pid})")
        before = b.version()
        await put(a, "after-kill", "1")
        assert await moves_within(b, before, 1.5) < 1.5
        # It listens again by itself.
        deadline = time.monotonic() + 5
        while b._listener is None or b._listener.is_closed() or b._listener is listener:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        before = b.version()
        await put(a, "after-reconnect", "1")
        assert await moves_within(b, before, 1.0) < 1.0


async def test_the_once_a_second_poll_catches_a_lost_notification(
        store_database: StoreDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with two_instances(store_database, tmp_path) as (a, b):
        monkeypatch.setattr(b, "_on_notify", lambda *args: None)  # every notification lost
        await b._listen()  # listen again with the lossy handler
        before = b.version()
        await put(a, "lost", "1")
        took = await moves_within(b, before, 1.5)
        assert took < 1.5


async def test_reads_and_writes_reconnect_after_their_connections_are_killed(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    store = await open_pg(store_database, tmp_path)
    try:
        await put(store, "a", "1")
        assert await store.fetch_one("SELECT value FROM meta WHERE key = 'a'") == {"value": "1"}
        store_database.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                           "application_name = 'appliance-store' AND pid <> pg_backend_pid()")
        await asyncio.sleep(0.1)
        # Dead idle connections are replaced within the call: no error reaches the caller.
        await put(store, "a", "2")
        assert await store.fetch_one("SELECT value FROM meta WHERE key = 'a'") == {"value": "2"}
    finally:
        await store.close()


async def test_store_down_is_unavailable_and_comes_back_by_itself(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    """A cluster of its own, stopped and started under an open store: 503 (`StoreUnavailable`)
    while it is down, `version()` None (nothing cached), and back without reopening."""
    pg_ctl = pg_binary("pg_ctl")
    with postgres_cluster(name="store-restart",
                          hba="local all postgres trust\nhost all all 127.0.0.1/32 "
                              "scram-sha-256\n",
                          conf="password_encryption = 'scram-sha-256'\n") as cluster:
        server = PostgresServer(cluster.root, cluster.port, cluster.prefix, postgres_server.psql)
        server.sql(f"CREATE ROLE app LOGIN PASSWORD '{PG_PASSWORD}'", database="postgres")
        database = new_store_database(server, tmp_path)
        store = await open_pg(database, tmp_path)
        try:
            await put(store, "k", "1")
            ctl = [*cluster.prefix, str(pg_ctl), "-D", str(cluster.data)]
            subprocess.run([*ctl, "-m", "fast", "stop"], check=True, capture_output=True)
            with pytest.raises(StoreUnavailable):
                await store.fetch_one("SELECT value FROM meta WHERE key = 'k'")
            with pytest.raises(StoreUnavailable):
                await put(store, "k", "2")
            await asyncio.sleep(3.5)
            assert store.version() is None
            subprocess.run([*ctl, "-l", str(cluster.log), "-w", "start"], check=True,
                           capture_output=True)
            await put(store, "k", "3")
            assert await store.fetch_one("SELECT value FROM meta WHERE key = 'k'") == \
                {"value": "3"}
            deadline = time.monotonic() + 3
            while store.version() is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await store.close()


async def test_the_audit_log_refuses_truncate(store_database: StoreDatabase,
                                              tmp_path: Path) -> None:
    store = await open_pg(store_database, tmp_path)
    try:
        with pytest.raises(Exception, match="SQLSTATE P0001"):
            async with store.transaction() as tx:
                await tx.execute("TRUNCATE audit_log")
    finally:
        await store.close()


# --- bad settings: one line, exit 2, no password ------------------------------------------------


def init(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`appliance init` in this process (tests/support/cli.py); the process-level checks are
    the other tests' here (`serve`, `doctor`, `users list` as subprocesses)."""
    return run_verb("init", "--state-dir", str(tmp_path / "state"), env=clean_env(**env))


def one_line_error(result: subprocess.CompletedProcess[str], *canaries: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    # The egress log lines (one per connection attempt) aside, one line says what is wrong.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for canary in (PG_PASSWORD, *canaries):
        assert canary not in result.stdout + result.stderr
    return lines[0]


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://app:canary-In-Url-9@127.0.0.1:5432/db", "password in the URL is refused"),
    ("mysql://app@127.0.0.1/db", "unknown scheme mysql:"),
    ("postgresql://app@127.0.0.1/db?sslmode=disable", "takes no query parameters"),
    ("postgresql://127.0.0.1/db", "names no user"),
    ("postgresql://app@127.0.0.1:5432/", "names no database"),
    ("sqlite://relative.db", "absolute path"),
])
def test_a_bad_store_url_is_refused_naming_the_key(tmp_path: Path, url: str, says: str) -> None:
    line = one_line_error(init(tmp_path, APPLIANCE_STORE_URL=url), "canary-In-Url-9")
    assert "APPLIANCE_STORE_URL" in line and says in line
    assert not (tmp_path / "state").exists()  # nothing created


def test_an_unreachable_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = free_port()
    line = one_line_error(init(tmp_path, APPLIANCE_STORE_URL=f"postgresql://app@127.0.0.1:{port}/x",
                               APPLIANCE_STORE_TLS="disable"))
    assert f"connection refused by 127.0.0.1 port {port}" in line


def test_tls_required_but_the_server_has_none(store_database: StoreDatabase,
                                              tmp_path: Path) -> None:
    for tls in ("require", "verify-full"):
        line = one_line_error(init(tmp_path, **store_database.env(APPLIANCE_STORE_TLS=tls)))
        assert "does not offer TLS" in line, line


def test_a_wrong_or_missing_password_file(store_database: StoreDatabase, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("canary-Wr0ng-pass\n")
    wrong.chmod(0o600)
    line = one_line_error(init(tmp_path, **store_database.env(
        APPLIANCE_STORE_PASSWORD_FILE=str(wrong))), "canary-Wr0ng-pass")
    assert "authentication failed for user 'app'" in line
    line = one_line_error(init(tmp_path, **store_database.env(
        APPLIANCE_STORE_PASSWORD_FILE=str(tmp_path / "absent"))))
    assert "does not exist" in line
    wrong.chmod(0o644)
    line = one_line_error(init(tmp_path, **store_database.env(
        APPLIANCE_STORE_PASSWORD_FILE=str(wrong))), "canary-Wr0ng-pass")
    assert "chmod 600" in line


def test_the_password_may_come_from_the_systemd_credential(store_database: StoreDatabase,
                                                           tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "store-password").write_text(PG_PASSWORD)
    env = store_database.env()
    del env["APPLIANCE_STORE_PASSWORD_FILE"]
    result = init(tmp_path, CREDENTIALS_DIRECTORY=str(credentials), **env)
    assert result.returncode == 0, result.stderr
    assert store_database.sql("SELECT count(*) FROM users") == "1\n"


def test_a_strict_egress_policy_must_allow_the_store(store_database: StoreDatabase,
                                                     tmp_path: Path) -> None:
    line = one_line_error(init(tmp_path, **store_database.env(APPLIANCE_EGRESS_MODE="strict")))
    assert "denied by rule 'strict: not in allow list'" in line
    allowed = init(tmp_path, **store_database.env(
        APPLIANCE_EGRESS_MODE="strict",
        APPLIANCE_EGRESS_ALLOW=f"127.0.0.1:{store_database.server.port}"))
    assert allowed.returncode == 0, allowed.stderr


async def test_the_store_connects_from_the_egress_source_address(store_database: StoreDatabase,
                                                                 tmp_path: Path) -> None:
    """The store's connections leave from `[egress] source_address` like every other: the server
    sees 127.0.0.2. The cluster admits 127.0.0.2 only for this test's database."""
    server = store_database.server
    hba = server.root / "data" / "pg_hba.conf"
    before = hba.read_text()
    hba.write_text(f"host {store_database.name} app 127.0.0.2/32 scram-sha-256\n" + before)
    server.sql("SELECT pg_reload_conf()", database="postgres")
    try:
        s = settings.load(env=store_database.env(APPLIANCE_EGRESS_SOURCE_ADDRESS="127.0.0.2"),
                          flags={"state_dir": str(tmp_path)})
        store = await open_store(s, Dialer(PolicyHolder(s.egress)))
        try:
            await put(store, "source", "seen")
            seen = store_database.sql(
                "SELECT DISTINCT host(client_addr) FROM pg_stat_activity "
                f"WHERE datname = '{store_database.name}' AND usename = 'app'")
        finally:
            await store.close()
    finally:
        hba.write_text(before)
        server.sql("SELECT pg_reload_conf()", database="postgres")
    assert seen.split() == ["127.0.0.2"]


def test_a_store_with_a_newer_schema_is_refused(store_database: StoreDatabase,
                                                tmp_path: Path) -> None:
    assert init(tmp_path, **store_database.env()).returncode == 0
    store_database.sql("INSERT INTO schema_migrations VALUES (999999, 'future', 0)")
    line = one_line_error(run_cli("users", "list", "--state-dir", str(tmp_path / "state"),
                                  env=clean_env(**store_database.env())))
    assert "newer than this appliance" in line


def test_doctor_names_a_schema_older_or_newer_than_this_appliance(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """`doctor` reads the store's schema version without migrating it, and says which way it is
    off and what to do; it changes nothing."""
    assert init(tmp_path, **store_database.env()).returncode == 0

    def doctor() -> str:
        done = run_cli("doctor", "--state-dir", str(tmp_path / "state"),
                       env=clean_env(**store_database.env(APPLIANCE_SERVER_LISTEN="127.0.0.1:0")))
        assert done.returncode == 1 and PG_PASSWORD not in done.stdout + done.stderr
        return next(line for line in done.stdout.splitlines() if "  store" in line)

    store_database.sql(f"DELETE FROM schema_migrations WHERE version = {LATEST}")
    line = doctor()
    assert line.startswith("FAIL") and f"schema version {LATEST - 1}" in line, line
    assert "serve" in line or "migrate" in line, line
    assert store_database.sql("SELECT MAX(version) FROM schema_migrations") == f"{LATEST - 1}\n"
    store_database.sql(f"INSERT INTO schema_migrations VALUES ({LATEST}, 'back', 0), "
                       "(999999, 'future', 0)")
    line = doctor()
    assert line.startswith("FAIL") and "schema version 999999" in line, line
    assert "newer than this appliance" in line, line


async def test_must_exist_does_not_create_the_schema(store_database: StoreDatabase,
                                                     tmp_path: Path) -> None:
    s = store_settings(store_database, tmp_path)
    with pytest.raises(StoreUnavailable, match="holds no appliance schema"):
        await open_store(s, Dialer(PolicyHolder(s.egress)), must_exist=True)
    assert store_database.sql("SELECT to_regclass('users') IS NULL") == "t\n"


# --- a real `appliance serve` on the PostgreSQL store ------------------------------------------


def test_serve_on_postgres_runs_a_query_and_keeps_one_intact_audit_chain(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text("")
    env = clean_env(**store_database.env(APPLIANCE_LOG_LEVEL="debug"))
    token = init_with_token(tmp_path, config, env=env)
    server = serve(tmp_path, config, env=env)
    try:
        data, query_id = seed_by_id_query(server, token, tmp_path)
        status, result = api(server, "POST", f"/api/v1/queries/{query_id}/run", token,
                             {"params": {"id": 2}})
        assert status == 200, result
        assert "two" in json.dumps(result)
        # Names stay unique without regard to case on PostgreSQL too.
        status, body = api(server, "POST", "/api/v1/datasources", token, {
            "name": "LOCAL", "kind": "sqlite", "config": {"path": str(data)}})
        assert status == 409, body
        assert store_database.sql("SELECT name FROM datasources") == "Local\n"
    finally:
        assert server.stop() == 0
    logs = server.stderr() + "".join(server.stdout_lines)
    assert PG_PASSWORD not in logs
    assert '"purpose": "store"' in logs  # the store's connections passed the egress dialer
    verified = run_cli("audit", "verify", "--full", "--state-dir", str(tmp_path / "state"),
                       env=env)
    assert verified.returncode == 0, verified.stderr
    entries = int(store_database.sql("SELECT count(*) FROM audit_log"))
    assert verified.stdout.startswith(f"full: ok, {entries} entries checked, chain intact")
    actions = store_database.sql("SELECT action FROM audit_log ORDER BY seq").split()
    assert "datasource.create" in actions and any(a.startswith("query.") for a in actions)
    assert not (tmp_path / "state" / "appliance.db").exists()  # nothing went to SQLite
    assert os.listdir(tmp_path / "state")


async def test_a_write_cancelled_at_commit_waits_for_the_answer(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """`write()` cancelled while its COMMIT is under way (the server has committed, its answer
    is held back by a relay): the COMMIT is not cut short, the connection is kept, and the
    caller is cancelled once the answer came (before, the connection was dropped at once, and
    whether the row was committed was unknown to the store)."""
    async with LostCommitAnswer(store_database.server.port) as relay:
        store, sinks = await open_relayed(relay, store_database, tmp_path)
        sinks.close()
        try:
            await store.write(lambda step: step.insert("CREATE TABLE probe (v TEXT)"))
            writer = store._writer  # the store's one writer connection (private: looked at)
            relay.arm(hold=True)
            task = asyncio.create_task(store.write(
                lambda step: step.insert("INSERT INTO probe (v) VALUES (?)", ("kept",))))
            await asyncio.wait_for(relay.held.wait(), 30)  # the server has answered COMMIT
            task.cancel()
            await asyncio.wait([task], timeout=0.2)
            assert not task.done(), "the cancellation cut the COMMIT short"
            relay.released.set()
            await asyncio.wait([task], timeout=30)
            assert task.cancelled()
            assert store._writer is writer and writer is not None and not writer.is_closed()
            assert await store.fetch_all("SELECT v FROM probe") == [{"v": "kept"}]
            await store.write(lambda step: step.insert("INSERT INTO probe (v) VALUES (?)",
                                                       ("next",)))  # the writer still works
        finally:
            relay.released.set()
            await store.close()
