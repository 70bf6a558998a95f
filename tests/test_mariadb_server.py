"""The MariaDB fixture itself: a real server, run unprivileged, TLS from the test CA, the accounts
and authentication plugins the MySQL kind is tested with, the general log, and a clean stop."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.mariadb import (
    DATABASE,
    ED25519_PASSWORD,
    ED25519_USER,
    NATIVE_PASSWORD,
    NATIVE_USER,
    SOURCE_PASSWORD,
    SOURCE_USER,
    TLS_PASSWORD,
    TLS_USER,
    MariaDBServer,
    mariadb,
)


def client(server: MariaDBServer, user: str, password: str, sql: str,
           *tls: str) -> subprocess.CompletedProcess[str]:
    """The `mariadb` command-line client over TCP (never the socket)."""
    return subprocess.run(
        [server.client, "--no-defaults", "--protocol=TCP", "--host=127.0.0.1",
         f"--port={server.port}", f"--user={user}", f"--password={password}", "--batch",
         "--skip-column-names", *tls,
         DATABASE, "-e", sql],
        capture_output=True, text=True, timeout=30)


def test_runs_as_an_unprivileged_user(mariadb_server: MariaDBServer) -> None:
    status = Path(f"/proc/{mariadb_server.process.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert mariadb_server.sql("SELECT @@bind_address").strip() == "127.0.0.1"


def test_native_password_and_ed25519_accounts(mariadb_server: MariaDBServer) -> None:
    plugins = dict(line.split("\t") for line in mariadb_server.sql(
        "SELECT user, plugin FROM mysql.user WHERE host IN ('127.0.0.1', '127.0.0.2')",
        database="mysql").splitlines())
    assert plugins[NATIVE_USER] == "mysql_native_password"
    assert plugins[ED25519_USER] == "ed25519"
    for user, password in ((NATIVE_USER, NATIVE_PASSWORD), (ED25519_USER, ED25519_PASSWORD)):
        ok = client(mariadb_server, user, password, "SELECT CURRENT_USER()", "--skip-ssl")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == f"{user}@127.0.0.1"
        wrong = client(mariadb_server, user, password + "x", "SELECT 1", "--skip-ssl")
        assert wrong.returncode != 0 and "Access denied" in wrong.stderr


def test_caching_sha2_password_is_not_a_mariadb_plugin(mariadb_server: MariaDBServer) -> None:
    """What the fixture reports in its docstring: MariaDB has no caching_sha2_password server
    plugin (if a later MariaDB gains one, the MySQL kind's tests should use it)."""
    with pytest.raises(AssertionError, match=r"(?i)caching_sha2_password|plugin"):
        mariadb_server.sql("CREATE USER 'sha2'@'127.0.0.1' IDENTIFIED VIA caching_sha2_password")


def test_tls_with_the_test_ca(mariadb_server: MariaDBServer) -> None:
    verified = client(mariadb_server, TLS_USER, TLS_PASSWORD,
                      "SHOW STATUS LIKE 'Ssl_version'", f"--ssl-ca={mariadb_server.ca.ca_pem}",
                      "--ssl-verify-server-cert")
    assert verified.returncode == 0, verified.stderr
    assert "TLSv1." in verified.stdout
    refused = client(mariadb_server, TLS_USER, TLS_PASSWORD, "SELECT 1", "--skip-ssl")
    assert refused.returncode != 0 and "Access denied" in refused.stderr


def test_source_address_seen_by_the_server(mariadb_server: MariaDBServer) -> None:
    """A connection from 127.0.0.2 shows as that host (the engine's source-address test logs in
    as SOURCE_USER, whose only grant is from 127.0.0.2)."""
    with socket.socket() as raw:
        raw.bind(("127.0.0.2", 0))
        raw.connect(("127.0.0.1", mariadb_server.port))
        raw.recv(1)  # the greeting: the server has accepted the connection
        hosts = mariadb_server.sql("SELECT host FROM information_schema.processlist")
        assert f"127.0.0.2:{raw.getsockname()[1]}" in hosts.split()
    from_one = client(mariadb_server, SOURCE_USER, SOURCE_PASSWORD, "SELECT 1", "--skip-ssl")
    assert from_one.returncode != 0 and "Access denied" in from_one.stderr


def test_general_log_records_what_the_server_received(mariadb_server: MariaDBServer) -> None:
    marker = f"general-log-marker-{os.getpid()}"
    out = client(mariadb_server, NATIVE_USER, NATIVE_PASSWORD,
                 f"SELECT CONNECTION_ID(), '{marker}'", "--skip-ssl")
    assert out.returncode == 0, out.stderr
    thread_id = int(out.stdout.split()[0])
    commands = mariadb_server.log_commands(thread_id)
    assert ("Query", f"SELECT CONNECTION_ID(), '{marker}'") in commands
    assert commands[0][0] == "Connect"


def test_stops_without_leaving_a_process() -> None:
    with mariadb(name="mariadb-stop") as server:
        pid, root = server.process.pid, server.root
        assert server.sql("SELECT 1").strip() == "1"
    assert not Path(f"/proc/{pid}").exists()
    assert not root.exists()
