"""A real MariaDB server for the tests: Debian's `mariadb-server`, initialised in a temp dir.

Owns: `mariadb-install-db` + `mariadbd` on 127.0.0.1 and an ephemeral port, run as an unprivileged
user, with a TLS certificate from a test CA, the general log on, and the test accounts; stopping
it at the end of the session. Never listens beyond the loopback and never leaves a process behind.

MariaDB 10.11 (Debian 12) has the `mysql_native_password` and `ed25519` authentication plugins;
`caching_sha2_password` is MySQL's and no MariaDB server offers it (MariaDB's clients speak it to
MySQL servers). Debian 12 has no MySQL server package, so these tests run against MariaDB only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.certificates import TestCA, make_test_ca
from tests.support.ports import free_port

# Accounts made by `mariadb_server`, each allowed from 127.0.0.1 only (`SOURCE_USER` from
# 127.0.0.2 only: the server sees which source address a client connected from).
NATIVE_USER, NATIVE_PASSWORD = "app_native", "native-Pa55word'\\"
ED25519_USER, ED25519_PASSWORD = "app_ed25519", "ed25519-Pa55word"
TLS_USER, TLS_PASSWORD = "app_tls", "tls-Pa55word"  # REQUIRE SSL
SOURCE_USER, SOURCE_PASSWORD = "app_source", "source-Pa55word"  # from 127.0.0.2 only
DATABASE = "appdb"


@dataclass
class MariaDBServer:
    """A running throwaway MariaDB: port on 127.0.0.1, the Unix socket (root, no password, over
    the socket only), the general log and the test CA that signed its certificate."""

    root: Path
    port: int
    socket: Path
    ca: TestCA
    process: subprocess.Popen[bytes]
    client: str  # the `mariadb` command-line client
    launch: dict[str, Any]  # how `process` was started (Popen's arguments): `start` reuses it

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Take the server down (SIGTERM: a clean shutdown that closes every connection;
        SIGKILL: a crash); its data, port and accounts stay for `start`."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def start(self, timeout: float = 60) -> None:
        """Start the stopped server again, as before, and wait for its greeting."""
        assert self.process.poll() is not None, "the server is running"
        self.process = subprocess.Popen(**self.launch)
        _wait_ready(self, timeout)

    def datasource_config(self, *, user: str = NATIVE_USER, tls: str = "disable",
                          host: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
        """A `mysql` datasource's config for this server's test database as `user` (one of the
        accounts above), `extra` fields added; the password is the test's to give as a secret."""
        return {"host": host, "port": self.port, "database": DATABASE, "user": user, "tls": tls,
                **extra}

    @property
    def general_log(self) -> Path:
        return self.root / "general.log"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def sql(self, text: str, database: str = DATABASE) -> str:
        """Run `text` as root over the Unix socket; its tab-separated output without headers."""
        out = subprocess.run(
            [self.client, "--no-defaults", f"--socket={self.socket}", "--user=root",
             "--default-character-set=utf8mb4", "--batch", "--skip-column-names", "--raw", database, "-e", text],
            capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(out.stderr)
        return out.stdout

    def general_log_lines(self) -> list[str]:
        """The general log's entries so far (the server writes it unbuffered)."""
        text = self.general_log.read_text(errors="replace") if self.general_log.exists() else ""
        return text.splitlines()

    def log_commands(self, thread_id: int) -> list[tuple[str, str]]:
        """(command, argument) of each general-log entry of one connection, e.g. ("Prepare",
        "SELECT ?"), ("Execute", "SELECT 1"), ("Query", "SET NAMES utf8mb4")."""
        found: list[tuple[str, str]] = []
        pattern = re.compile(r"^(?:\d{6}\s+[\d:]+\s+)?\s*(\d+)\s+(\w[\w ]*?)\t(.*)$")
        for line in self.general_log_lines():
            m = pattern.match(line)
            if m and int(m.group(1)) == thread_id:
                found.append((m.group(2).strip(), m.group(3)))
        return found


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None)


def _wait_ready(server: MariaDBServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as conn:
                if conn.recv(1):  # the server's greeting
                    return
        except OSError:
            time.sleep(0.1)
    log = server.error_log.read_text(errors="replace") if server.error_log.exists() else ""
    raise AssertionError(f"MariaDB did not start (exit {server.process.poll()}):\n{log}")


def _accounts_sql() -> str:
    """The test accounts and database (passwords are SQL string literals here)."""
    def lit(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"""
        INSTALL SONAME 'auth_ed25519';
        CREATE DATABASE {DATABASE};
        CREATE USER '{NATIVE_USER}'@'127.0.0.1'
          IDENTIFIED VIA mysql_native_password USING PASSWORD({lit(NATIVE_PASSWORD)});
        CREATE USER '{ED25519_USER}'@'127.0.0.1'
          IDENTIFIED VIA ed25519 USING PASSWORD({lit(ED25519_PASSWORD)});
        CREATE USER '{TLS_USER}'@'127.0.0.1'
          IDENTIFIED BY {lit(TLS_PASSWORD)} REQUIRE SSL;
        CREATE USER '{SOURCE_USER}'@'127.0.0.2' IDENTIFIED BY {lit(SOURCE_PASSWORD)};
        GRANT ALL ON {DATABASE}.* TO '{NATIVE_USER}'@'127.0.0.1', '{ED25519_USER}'@'127.0.0.1',
          '{TLS_USER}'@'127.0.0.1', '{SOURCE_USER}'@'127.0.0.2';
    """


@contextlib.contextmanager
def mariadb(*, name: str = "mariadb", timeout: float = 60) -> Iterator[MariaDBServer]:
    """mariadb-install-db + mariadbd in a temp dir, as the `mysql` user when we are root; skips
    when Debian's `mariadb-server` is not installed. The one place tests start MariaDB."""
    install_db, mariadbd, client = (_binary("mariadb-install-db"), _binary("mariadbd"),
                                    _binary("mariadb"))
    if not install_db or not mariadbd or not client:
        pytest.skip("MariaDB is not installed (Debian's mariadb-server: `make system-deps`)")
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # mariadbd refuses to run as root: run it as the mysql user
        try:
            owner = pwd.getpwnam("mysql")
        except KeyError:
            pytest.skip("running as root and there is no 'mysql' user to run MariaDB")
    uid, gid = (owner.pw_uid, owner.pw_gid) if owner else (None, None)
    groups: list[int] | None = [] if owner else None
    root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    root.chmod(0o755)
    ca = make_test_ca(root / "tls", "MariaDB test CA")
    for path in (root, root / "tls", ca.ca_pem, ca.cert_pem, ca.key_pem):
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    ca.key_pem.chmod(0o600)
    data = root / "data"
    process: subprocess.Popen[bytes] | None = None
    server: MariaDBServer | None = None
    try:
        installed = subprocess.run(
            [install_db, "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method"
             "=normal", "--skip-test-db", "--skip-name-resolve", "--innodb-buffer-pool-size=16M"],
            capture_output=True, text=True, timeout=120, user=uid, group=gid, extra_groups=groups)
        if installed.returncode != 0:
            pytest.fail(f"mariadb-install-db failed: {installed.stdout}\n{installed.stderr}")
        port = free_port()
        sock = root / "mysqld.sock"
        launch: dict[str, Any] = dict(
            args=[mariadbd, "--no-defaults", f"--datadir={data}", f"--port={port}",
                  "--bind-address=127.0.0.1", f"--socket={sock}", f"--pid-file={root / 'mysqld.pid'}",
                  f"--log-error={root / 'error.log'}", "--skip-name-resolve", "--general-log=1",
                  f"--general-log-file={root / 'general.log'}", "--log-output=FILE",
                  f"--ssl-ca={ca.ca_pem}", f"--ssl-cert={ca.cert_pem}", f"--ssl-key={ca.key_pem}",
                  "--innodb-buffer-pool-size=16M", "--innodb-flush-log-at-trx-commit=0",
                  "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                  # The server allows LOAD DATA LOCAL: refusing it is the client's job, and tested.
                  "--max-connections=300", "--skip-log-bin", "--local-infile=1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            user=uid, group=gid, extra_groups=groups)
        process = subprocess.Popen(**launch)
        server = MariaDBServer(root, port, sock, ca, process, client, launch)
        _wait_ready(server, timeout)
        server.sql(_accounts_sql(), database="mysql")
        yield server
    finally:
        if server is not None:
            server.stop()  # the process running now (a test may have restarted it)
        elif process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One MariaDB for the whole session (see `mariadb`)."""
    with mariadb() as server:
        yield server
