"""A real `appliance serve` subprocess of a test's state directory and settings file, as an
operator starts it (no tests here): `init` with an admin password file, an admin API token made
by `tokens create`, then `serve` on an ephemeral loopback port.

Owns the state directory's first set-up and the server's command line. Never lowers a default
(2FA, password hashing, egress): a test that needs another setting says so in its own `env` or
settings file.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ServerProcess, start_server
from tests.support.cli import run_verb
from tests.support.json_api import api
from tests.support.queries import sqlite_database

PASSWORD = "admin-password-0123"


def init_with_token(tmp_path: Path, config: Path, env: dict[str, str] | None = None) -> str:
    """`init` of `tmp_path`/state (admin with a password file) and `tokens create admin`;
    returns the token."""
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "--config", str(config)]
    done = run_verb("init", *common, "--admin-password-file", str(password_file), env=env)
    assert done.returncode == 0, done.stderr
    made = run_verb("tokens", "create", "admin", "--allow-without-2fa", *common, env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1].strip()


def serve(tmp_path: Path, config: Path, *extra: str,
          env: dict[str, str] | None = None) -> ServerProcess:
    """`serve` of `tmp_path`/state with `config` on 127.0.0.1 and an ephemeral port."""
    return start_server(["serve", "--state-dir", str(tmp_path / "state"), "--config", str(config),
                         "--listen", "127.0.0.1:0", *extra], cwd=tmp_path, env=env)


def seed_by_id_query(server: ServerProcess, token: str, where: Path) -> tuple[Path, str]:
    """`where`/data.sqlite with a table t (1 'one', 2 'two'), the SQLite datasource "Local" on
    it and the query "by-id" (`SELECT name FROM t WHERE id = {{ id }}`), made through the API
    with `token`; the file and the query's id."""
    data = sqlite_database(where / "data.sqlite", [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO t VALUES (1, 'one'), (2, 'two')"])
    status, ds = api(server, "POST", "/api/v1/datasources", token, {
        "name": "Local", "kind": "sqlite", "config": {"path": str(data)}})
    assert status == 201, ds
    status, query = api(server, "POST", "/api/v1/queries", token, {
        "name": "by-id", "datasource_id": ds["id"],
        "body": "SELECT name FROM t WHERE id = {{ id }}",
        "parameters": [{"name": "id", "type": "integer"}]})
    assert status == 201, query
    return data, str(query["id"])
