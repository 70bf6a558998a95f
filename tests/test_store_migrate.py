"""`appliance store migrate --to URL` (issue 22): a SQLite store copied into an empty PostgreSQL
database in one transaction, checked there, and served from there; every bad input is one line,
exit 2, and leaves the target database exactly as it was."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance import settings as settings_module
from appliance.egress import Dialer, PolicyHolder
from appliance.errors import StoreError
from appliance.store import Store, open_store
from appliance.store.opener import postgres_target
from appliance.store.postgres import PostgresStore
from appliance.store.to_postgres import CopyRefused, move_into

from .conftest import PG_PASSWORD, StoreDatabase, clean_env, run_cli
from .support.cli import run_verb
from .support.json_api import api
from .support.served import init_with_token, seed_by_id_query, serve

REST_TOKEN = "rest-Token-canary-7f3e"


def migrate(state: Path, config: Path, database: StoreDatabase, *extra: str,
            to: str | None = None, tls: str = "disable") -> subprocess.CompletedProcess[str]:
    return run_verb("store", "migrate", "--state-dir", str(state), "--config", str(config),
                    "--to", to or database.url, "--password-file", str(database.password_file),
                    "--tls", tls, *extra)


def tables_of(database: StoreDatabase) -> list[str]:
    out = database.sql("SELECT relname FROM pg_class c JOIN pg_namespace n"
                       " ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                       " AND c.relkind IN ('r', 'v') ORDER BY 1")
    return out.split()


def counts(database: StoreDatabase) -> dict[str, int]:
    return {t: int(database.sql(f'SELECT count(*) FROM "{t}"')) for t in tables_of(database)}


def one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines()
             if not line.startswith("{")]  # the JSON log lines of opening the source core
    assert len(lines) == 1, result.stderr
    assert PG_PASSWORD not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def initialised(tmp_path: Path) -> tuple[Path, Path]:
    """A SQLite store (admin, a token) and an empty settings file."""
    config = tmp_path / "appliance.toml"
    config.write_text("")
    init_with_token(tmp_path, config, env=clean_env())
    return tmp_path / "state", config


# --- the round trip -----------------------------------------------------------------------------


def printed_store_section(stdout: str) -> str:
    lines = stdout.splitlines()
    start = lines.index("[store]")
    end = lines.index("", start)
    return "\n".join(lines[start:end]) + "\n"


def test_round_trip_serve_audit_users_and_backup(store_database: StoreDatabase,
                                                 tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text("")
    env = clean_env()
    token = init_with_token(tmp_path, config, env=env)
    state = tmp_path / "state"
    server = serve(tmp_path, config, env=env)
    try:
        _, query_id = seed_by_id_query(server, token, tmp_path)
        status, rest = api(server, "POST", "/api/v1/datasources", token, {
            "name": "api", "kind": "rest", "secrets": {"token": REST_TOKEN},
            "config": {"base_url": "https://api.example.test/v1", "auth": "bearer"}})
        assert status == 201, rest
        status, before = api(server, "POST", f"/api/v1/queries/{query_id}/run", token,
                             {"params": {"id": 2}})
        assert status == 200, before
    finally:
        assert server.stop() == 0
    users_before = run_verb("users", "list", "--state-dir", str(state), "--config", str(config))
    assert users_before.returncode == 0, users_before.stderr
    sqlite_entries = int(run_verb("audit", "verify", "--full", "--state-dir", str(state),
                                  "--config", str(config)).stdout.split()[2])

    # The real process boundary once: `python -m appliance store migrate`.
    done = run_cli("store", "migrate", "--state-dir", str(state), "--config", str(config),
                   "--to", store_database.url, "--password-file",
                   str(store_database.password_file), "--tls", "disable", env=env)
    assert done.returncode == 0, done.stderr
    assert PG_PASSWORD not in done.stdout + done.stderr
    assert REST_TOKEN not in done.stdout + done.stderr
    assert f"audit chain intact ({sqlite_entries} entries)" in done.stdout
    assert "1 sealed fields open" in done.stdout
    section = printed_store_section(done.stdout)
    assert f'url = "{store_database.url}"' in section and 'tls = "disable"' in section
    assert f'password_file = "{store_database.password_file}"' in section
    assert int(store_database.sql("SELECT count(*) FROM audit_log")) == sqlite_entries
    # The identity column goes on after the copied slots.
    assert int(store_database.sql(
        "SELECT nextval(pg_get_serial_sequence('keyring_unseal', 'slot'))"
        " - (SELECT MAX(slot) FROM keyring_unseal)")) >= 1

    # The printed section, pasted into the settings, serves the same queries.
    pg_config = tmp_path / "pg.toml"
    pg_config.write_text(section)
    server = serve(tmp_path, pg_config, env=env)
    try:
        status, after = api(server, "POST", f"/api/v1/queries/{query_id}/run", token,
                            {"params": {"id": 2}})
        assert status == 200, after
        assert after["rows"] == before["rows"]
        status, listed = api(server, "GET", f"/api/v1/datasources/{rest['id']}", token)
        assert status == 200 and listed["secrets"]["token"] == {"set": True}
    finally:
        assert server.stop() == 0
    common = ("--state-dir", str(state), "--config", str(pg_config))
    verified = run_verb("audit", "verify", "--full", *common)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert int(verified.stdout.split()[2]) > sqlite_entries  # the new run's entry is there too
    users_after = run_verb("users", "list", *common)
    assert users_after.stdout == users_before.stdout

    # A PostgreSQL store's backup restores into SQLite as any backup does.
    backup = tmp_path / "pg.backup"
    made = run_verb("backup", "--out", str(backup), *common)
    assert made.returncode == 0, made.stderr
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    (restored / "instance.key").write_bytes((state / "instance.key").read_bytes())
    (restored / "instance.key").chmod(0o600)
    back = run_verb("restore", "--state-dir", str(restored), str(backup))
    assert back.returncode == 0, back.stderr
    assert "1 sealed fields, all open" in back.stdout
    again = run_verb("audit", "verify", "--full", "--state-dir", str(restored))
    assert again.returncode == 0 and again.stdout == verified.stdout
    assert run_verb("users", "list", "--state-dir", str(restored)).stdout == users_after.stdout


def test_a_fresh_migration_on_the_target_is_accepted(store_database: StoreDatabase,
                                                     initialised: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    state, config = initialised

    async def fresh() -> None:
        s = settings_module.load(env=store_database.env(), flags={"state_dir": str(tmp_path)})
        store = await open_store(s, Dialer(PolicyHolder(s.egress)))
        await store.close()

    asyncio.run(fresh())
    done = migrate(state, config, store_database)
    assert done.returncode == 0, done.stderr
    assert "its fresh schema" in done.stdout
    assert int(store_database.sql("SELECT count(*) FROM users")) == 1


# --- bad input: one line, exit 2, the target untouched ------------------------------------------


def test_bad_urls_and_options(store_database: StoreDatabase, initialised: tuple[Path, Path],
                              tmp_path: Path) -> None:
    state, config = initialised
    port = store_database.server.port
    cases: list[tuple[tuple[str, ...], str]] = [
        (("--to", f"postgresql://app:{PG_PASSWORD}@127.0.0.1:{port}/x"),
         "--to: a password in the URL is refused"),
        (("--to", "mysql://app@127.0.0.1/x"), "--to: expected sqlite:///"),
        (("--to", f"sqlite://{tmp_path}/other.db"), "--to: names a PostgreSQL database"),
        (("--to", f"postgresql://127.0.0.1:{port}/x"), "--to: names no user"),
        (("--to", store_database.url, "--ca-file", str(config)),
         "--ca-file: is only used with --tls verify-full"),
    ]
    for args, says in cases:
        result = run_verb("store", "migrate", "--state-dir", str(state), "--config", str(config),
                          "--tls", "disable", *args)
        assert one_line(result).startswith(f"error: {says}"), (args, result.stderr)
    assert tables_of(store_database) == []


def test_unreachable_non_tls_and_wrong_password(store_database: StoreDatabase,
                                                initialised: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    state, config = initialised
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    line = one_line(migrate(state, config, store_database,
                            to=f"postgresql://app@127.0.0.1:{free}/x"))
    assert line.startswith(f"error: cannot connect to the store postgresql://app@127.0.0.1:{free}/x")
    port = store_database.server.port
    line = one_line(migrate(state, config, store_database,
                            to=f"postgresql://app@127.0.0.1:{port}/no_such_database"))
    assert line.endswith("database 'no_such_database' does not exist")
    # The test cluster has no TLS: the default (verify-full) refuses it before any password.
    line = one_line(migrate(state, config, store_database, tls="verify-full"))
    assert "does not offer TLS" in line
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    line = one_line(run_verb("store", "migrate", "--state-dir", str(state), "--config",
                             str(config), "--to", store_database.url, "--password-file",
                             str(wrong), "--tls", "disable"))
    assert "authentication failed for user 'app'" in line
    assert tables_of(store_database) == []


def test_a_missing_source_store(store_database: StoreDatabase, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = tmp_path / "appliance.toml"
    config.write_text("")
    line = one_line(migrate(state, config, store_database))
    assert line.startswith(f"error: no store at {state / 'appliance.db'}: nothing to migrate")
    assert not (state / "appliance.db").exists()
    assert tables_of(store_database) == []


def test_a_target_that_is_not_empty_is_refused_and_left_as_it_was(
        store_database: StoreDatabase, initialised: tuple[Path, Path]) -> None:
    state, config = initialised
    assert migrate(state, config, store_database).returncode == 0
    before = counts(store_database)
    line = one_line(migrate(state, config, store_database))
    assert "already holds appliance data (rows in" in line and "users" in line
    assert counts(store_database) == before


def test_a_target_with_other_tables_or_an_older_schema_is_refused(
        store_database: StoreDatabase, initialised: tuple[Path, Path]) -> None:
    state, config = initialised
    store_database.sql("SET ROLE app; CREATE TABLE orders (id int)")
    line = one_line(migrate(state, config, store_database))
    assert "tables that are not the appliance's (orders)" in line
    assert tables_of(store_database) == ["orders"]
    store_database.sql("SET ROLE app; DROP TABLE orders; CREATE TABLE schema_migrations (version BIGINT, "
                       "name TEXT, applied_at DOUBLE PRECISION); INSERT INTO schema_migrations "
                       "VALUES (3, 'old', 0)")
    line = one_line(migrate(state, config, store_database))
    assert "holds an appliance schema at version 3" in line
    assert tables_of(store_database) == ["schema_migrations"]


def test_a_source_whose_audit_chain_is_broken_is_not_copied(
        store_database: StoreDatabase, initialised: tuple[Path, Path]) -> None:
    state, config = initialised
    conn = sqlite3.connect(state / "appliance.db")
    try:  # tamper with an entry the way an attacker with the file would (triggers off)
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1")
        conn.commit()
    finally:
        conn.close()
    line = one_line(migrate(state, config, store_database), code=1)
    assert "audit chain is broken at position" in line and "Nothing was copied" in line
    assert tables_of(store_database) == []


def test_a_store_a_serve_is_running_on_is_refused_naming_it(store_database: StoreDatabase,
                                                            tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text("")
    env = clean_env()
    token = init_with_token(tmp_path, config, env=env)
    state = tmp_path / "state"
    server = serve(tmp_path, config, env=env)
    try:
        status, listed = api(server, "GET", "/api/v1/instances", token)
        assert status == 200, listed
        (instance,) = listed["instances"]
        line = one_line(migrate(state, config, store_database))
        assert line.startswith("error: `appliance serve` is running on this store (instance "
                               f"{instance['id']} on {instance['hostname']}, pid "
                               f"{server.proc.pid}, 127.0.0.1:{server.port}"), line
        assert "stop it, then migrate" in line and "Nothing was copied" in line
        assert tables_of(store_database) == []
    finally:
        assert server.stop() == 0
    # Stopped cleanly, its heartbeat is gone: the same command now copies.
    done = migrate(state, config, store_database)
    assert done.returncode == 0, done.stderr
    assert int(store_database.sql("SELECT count(*) FROM users")) == 1


# --- one transaction: a failed check leaves no table behind -------------------------------------


async def test_a_failed_check_rolls_back_the_schema_and_every_row(
        store_database: StoreDatabase, initialised: tuple[Path, Path], tmp_path: Path) -> None:
    state, _ = initialised
    s = settings_module.load(env=store_database.env(), flags={"state_dir": str(tmp_path)})
    dialer = Dialer(PolicyHolder(s.egress))
    seen: dict[str, Any] = {}

    async def check(copied: Store) -> None:
        row = await copied.fetch_one("SELECT count(*) AS n FROM users")
        seen["users"] = row["n"] if row else None
        with pytest.raises(StoreError):
            await copied.write(lambda step: None)
        raise CopyRefused("the check refused the copy")

    snapshot = tmp_path / "snapshot.db"
    with sqlite3.connect(state / "appliance.db") as live, sqlite3.connect(snapshot) as copy:
        live.backup(copy)
        copy.execute("PRAGMA journal_mode = DELETE")
    with pytest.raises(CopyRefused):
        await move_into(snapshot, PostgresStore(postgres_target(s), dialer), check)
    assert seen == {"users": 1}  # the check saw the copy inside the transaction
    assert tables_of(store_database) == []  # and nothing of it was committed


def test_help() -> None:
    for verb in (["store"], ["store", "migrate"]):
        result = run_verb(*verb, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout
    assert "EMPTY PostgreSQL database" in " ".join(run_verb("store", "migrate", "--help")
                                                   .stdout.split())
