"""Shared fixtures: isolated environments, the CLI as a subprocess, and real appliance servers.

Engineers add fixtures in their own clearly marked block; the foundation block comes first.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import forkserver  # reads APPLIANCE_TEST_REAL_PROCESSES now

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "test-output"
# `APPLIANCE_TEST_STORE=postgres pytest …` runs the in-process appliances (tests/support/app.py)
# on a PostgreSQL store, a fresh database per test. Read here, before `_isolated_environment`
# clears every APPLIANCE_* variable for the test itself.
TEST_STORE = os.environ.get("APPLIANCE_TEST_STORE", "sqlite")

# --------------------------------------------------------------------------------------------
# Foundation fixtures
# --------------------------------------------------------------------------------------------


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """Async tests run on uvloop, the loop `appliance serve` runs on."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    """Hundreds of tests start `python -m appliance`, and each one compiles the whole package from
    source when Python may not cache bytecode (PYTHONDONTWRITEBYTECODE): about 0.2 s of CPU per
    process. Compile it once, before the workers start, into its (gitignored) `__pycache__`
    folders, which such processes still read; a no-op when they are up to date. The test
    processes themselves cache too (pytest's rewritten test modules: 4 s of CPU per worker)."""
    sys.dont_write_bytecode = False
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        compileall.compile_dir(ROOT / "appliance", quiet=1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A store connection left open keeps a non-daemon thread alive, and the test process would
    hang after its summary: stop such connections and fail the run, naming the leak."""
    import gc

    import aiosqlite

    leaked = [obj for obj in gc.get_objects()
              if isinstance(obj, aiosqlite.Connection) and obj._running]
    for conn in leaked:
        conn.stop()
    if leaked:
        print(f"\nerror: {len(leaked)} SQLite store connection(s) were never closed by the tests")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without any APPLIANCE_* or systemd variable, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("APPLIANCE_") and k not in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("APPLIANCE_") or name in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"):
            monkeypatch.delenv(name)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m appliance ARGS` as a process of its own and capture its output (forked by
    tests/support/forkserver.py, which has imported the appliance already, unless
    APPLIANCE_TEST_REAL_PROCESSES=1)."""
    if not forkserver.real_processes():
        return forkserver.run(args, env=env or clean_env(), cwd=cwd or ROOT, timeout=timeout,
                              input=input)
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True, text=True, env=env or clean_env(), cwd=cwd or ROOT,
        timeout=timeout, input=input,
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory path that does not exist yet."""
    return tmp_path / "state"


@dataclass
class ServerProcess:
    """An `appliance serve` subprocess on an ephemeral port, with its output captured."""

    proc: Any  # a subprocess.Popen, or a tests.support.forkserver.ForkedProcess
    url: str
    ca_file: Path | None
    stdout_lines: list[str] = field(default_factory=list)
    stderr_path: Path | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return ctx

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process, wait for it (killing it after `timeout`), close its stdout pipe;
        its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


def start_server(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
                 command: list[str] | None = None, timeout: float = 30) -> ServerProcess:
    """Start `serve` (or `command`) and wait for its "listening on" line."""
    stderr_path = cwd / f"server-{time.monotonic_ns()}.stderr"
    stderr = stderr_path.open("w")
    proc: Any
    if command is None and not forkserver.real_processes():
        proc = forkserver.ForkedProcess(args, env=env or clean_env(), cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=stderr)
    else:
        proc = subprocess.Popen(
            (command or [sys.executable, "-m", "appliance"]) + args,
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env or clean_env(), cwd=cwd,
        )
    stderr.close()
    lines: list[str] = []
    url, ca = None, None
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if m := re.search(r"listening on (https://\S+)", line):
            url = m.group(1)
        if m := re.search(r"Local CA certificate: (\S+)", line):
            ca = Path(m.group(1))
        if line.startswith("Try:") or (url and not _uses_local_ca(env)):
            break
    if url is None:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"server did not start: stdout={''.join(lines)!r} stderr={stderr_path.read_text()!r}"
        )
    return ServerProcess(proc, url, ca, lines, stderr_path)


def _uses_local_ca(env: dict[str, str] | None) -> bool:
    return (env or {}).get("APPLIANCE_TLS_MODE", "local") == "local"


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`appliance serve --dev` on 127.0.0.1 and an ephemeral port, state in tmp_path/.appliance."""
    server = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `appliance serve --dev` for a whole module, for tests that only send it requests and
    read answers (no restart, no log assertions, nothing that changes its state for the next)."""
    cwd = tmp_path_factory.mktemp("shared-dev-server")
    server = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=cwd)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def tls_connection(host: str, port: int, ctx: ssl.SSLContext,
                   server_hostname: str | None = None) -> Iterator[ssl.SSLSocket]:
    import socket

    raw = socket.create_connection((host, port), timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname=server_hostname or host) as tls:
            yield tls
    finally:
        raw.close()


def http_request(sock: ssl.SSLSocket, method: str, path: str, host: str,
                 headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on an open (keep-alive) TLS socket; returns status, headers, body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response headers")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    parsed = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    length = int(parsed.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, parsed, rest[:length]


# --------------------------------------------------------------------------------------------
# Query proxy fixtures (issue 5): one PostgreSQL cluster for the whole session
# --------------------------------------------------------------------------------------------

PG_PASSWORD = "pg-secret-Pa55word"  # the password of the `app` role (md5/scram over TCP)


@dataclass
class PostgresServer:
    """A throwaway cluster on 127.0.0.1: superuser `postgres` (trust from the Unix socket only),
    role `app` with PG_PASSWORD over TCP, database `appdb`."""

    root: Path
    port: int
    prefix: list[str]
    psql: str

    def sql(self, text: str, database: str = "appdb") -> str:
        out = subprocess.run([*self.prefix, self.psql, "-h", str(self.root), "-p", str(self.port),
                              "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc",
                              text], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(out.stderr)
        return out.stdout


def pg_binary(name: str) -> str | None:
    import shutil

    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return None


@dataclass
class PostgresCluster:
    """A running throwaway cluster: its directory (also its Unix socket), port and log."""

    root: Path
    port: int
    prefix: list[str]  # how to run its tools (as the postgres user when we are root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def connections_from(self, host: str) -> int:
        """How many connections the server logged from `host` (needs log_connections)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"connection received: host={host} ")


@contextlib.contextmanager
def postgres_cluster(*, name: str, hba: str, conf: str = "",
                     superuser_password: str | None = None) -> Iterator[PostgresCluster]:
    """initdb + pg_ctl start in a temp dir, listening on 127.0.0.1 and a free port, with the
    given pg_hba.conf; skips when the server binaries are not installed. The one place tests
    start PostgreSQL."""
    import pwd
    import shutil
    import socket
    import tempfile

    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix=f"{name}-pg-"))
    root.chmod(0o755)
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster = PostgresCluster(root, port, prefix)
    auth = ["-A", "trust"]
    if superuser_password is not None:
        pwfile = root / "pw"
        pwfile.write_text(superuser_password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
    subprocess.run([*prefix, initdb, "-D", str(cluster.data), "-U", "postgres", *auth,
                    "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"],
                   check=True, capture_output=True)
    (root / "pw").unlink(missing_ok=True)
    with (cluster.data / "postgresql.conf").open("a") as handle:
        handle.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                     f"unix_socket_directories = '{root}'\nfsync = off\n"
                     f"shared_buffers = 16MB\n{conf}")
    (cluster.data / "pg_hba.conf").write_text(hba)
    started = subprocess.run([*prefix, pg_ctl, "-D", str(cluster.data), "-l", str(cluster.log),
                              "-w", "-t", "60", "start"], capture_output=True, text=True)
    if started.returncode != 0:
        text = cluster.log.read_text() if cluster.log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{text}")
    try:
        yield cluster
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(cluster.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    psql = pg_binary("psql")
    if not psql:
        pytest.skip("PostgreSQL client (psql) is not installed")
    with postgres_cluster(
        name="proxy",
        hba="local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        conf="max_connections = 300\npassword_encryption = 'scram-sha-256'\n",
    ) as cluster:
        server = PostgresServer(cluster.root, cluster.port, cluster.prefix, psql)
        server.sql(f"CREATE ROLE app LOGIN PASSWORD '{PG_PASSWORD}'", database="postgres")
        server.sql("CREATE DATABASE appdb OWNER app", database="postgres")
        yield server


# --------------------------------------------------------------------------------------------
# PostgreSQL store fixtures (issue 22): a fresh database per test on the session's cluster
# --------------------------------------------------------------------------------------------


@dataclass
class StoreDatabase:
    """An empty database owned by `app` for a `[store] url`, and a 0600 password file."""

    server: PostgresServer
    name: str
    password_file: Path

    @property
    def url(self) -> str:
        return f"postgresql://app@127.0.0.1:{self.server.port}/{self.name}"

    def env(self, **extra: str) -> dict[str, str]:
        """The settings (as APPLIANCE_* variables) of a store on this database, TLS off (the
        test cluster has none; SCRAM is still required by the auth guard)."""
        return {"APPLIANCE_STORE_URL": self.url,
                "APPLIANCE_STORE_PASSWORD_FILE": str(self.password_file),
                "APPLIANCE_STORE_TLS": "disable", **extra}

    def sql(self, text: str) -> str:
        return self.server.sql(text, database=self.name)


def new_store_database(server: PostgresServer, directory: Path) -> StoreDatabase:
    import uuid

    name = f"store_{uuid.uuid4().hex[:12]}"
    server.sql(f"CREATE DATABASE {name} OWNER app", database="postgres")
    password_file = directory / f"{name}.password"
    password_file.write_text(PG_PASSWORD + "\n")
    password_file.chmod(0o600)
    return StoreDatabase(server, name, password_file)


@pytest.fixture
def store_database(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[StoreDatabase]:
    database = new_store_database(postgres_server, tmp_path)
    try:
        yield database
    finally:
        postgres_server.sql(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)",
                            database="postgres")


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An open, migrated store of each kind: the contract tests run against both."""
    from appliance import settings
    from appliance.egress import Dialer, PolicyHolder
    from appliance.store import open_store

    env: dict[str, str] = {}
    if request.param == "postgres":
        env = request.getfixturevalue("store_database").env()
    s = settings.load(env=env, flags={"state_dir": str(tmp_path / "state")})
    (tmp_path / "state").mkdir(mode=0o700)
    store = await open_store(s, Dialer(PolicyHolder(s.egress)))
    try:
        yield store
    finally:
        await store.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under APPLIANCE_TEST_STORE=postgres, a test marked `sqlite_store(reason)` (about the
    SQLite store itself: its file, its links) is skipped, with its reason."""
    if TEST_STORE != "postgres":
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_store")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            assert reason, f"{item.nodeid}: sqlite_store needs a reason"
            item.add_marker(pytest.mark.skip(reason=f"SQLite store only: {reason}"))


@pytest.fixture(autouse=True)
def _test_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[None]:
    """With APPLIANCE_TEST_STORE=postgres: `make_settings` and `store_env` (tests/support/app.py)
    name a fresh PostgreSQL database per state directory, as SQLite has a file per one."""
    if TEST_STORE != "postgres":
        yield
        return
    from tests.support import app

    server = request.getfixturevalue("postgres_server")
    directory = tmp_path_factory.mktemp("store")
    databases: dict[Path, StoreDatabase] = {}

    def store_for(state: Path) -> dict[str, str]:
        key = state.absolute()
        if key not in databases:
            databases[key] = new_store_database(server, directory)
        return databases[key].env()

    app.STORE_FOR = store_for
    try:
        yield
    finally:
        app.STORE_FOR = None
        for database in databases.values():
            server.sql(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)",
                       database="postgres")


# --------------------------------------------------------------------------------------------
# MySQL/MariaDB fixtures (issue 23): one real MariaDB for the session (tests/support/mariadb.py)
# --------------------------------------------------------------------------------------------

from tests.support.mariadb import mariadb_server  # noqa: E402, F401
