"""PostgreSQL authentication methods: without verified TLS the appliance never answers a request
for a cleartext password, nor one for an MD5 password unless the datasource says `allow_md5`.

Against a fake server speaking the start of the real wire protocol (SSLRequest, StartupMessage,
the authentication request; it records every byte the client sends after that), in plain TCP and
in TLS (tls = require), with hostile framings; and against a real cluster with `password`, `md5`
and `scram-sha-256` users in pg_hba.conf, in plain TCP and in TLS. Cancel requests still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import ssl
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from appliance.datasources.config import InvalidDatasource, check_config
from appliance.egress import Dialer, PolicyHolder, asyncpg_hook, postgres_auth
from appliance.settings import EgressSettings
from tests.conftest import PostgresServer, pg_binary, postgres_cluster
from tests.support.certificates import self_signed
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

asyncpg = pytest.importorskip("asyncpg")

PASSWORD = "pg-auth-Pa55word-must-stay-home"
USER = "app"
SALT = b"\x01\x02\x03\x04"
SSL_REQUEST = 80877103
PROTOCOL_3 = 196608


def md5_answer(password: str, user: str, salt: bytes) -> bytes:
    """What a client sends for AuthenticationMD5Password: password-equivalent for whoever has
    the salt."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", 4 + len(body)) + body


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!i", code) + extra)


INVALID_PASSWORD = message(b"E", b"SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication "
                                 b"failed\x00\x00")


def self_signed_pair(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate (nobody trusts it: tls = require does not check) and its key, in
    the format PostgreSQL's ssl_key_file reads."""
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    self_signed(cert_path, key_path, "not-the-database",
                serialization.PrivateFormat.TraditionalOpenSSL)
    return cert_path, key_path


class FakePostgres:
    """Answers an SSLRequest ('S' and a TLS handshake when it has a certificate, else 'N'),
    reads the StartupMessage, sends `greeting` (an authentication request, or something hostile)
    and records every byte the client sends after it; a password message gets 28P01."""

    def __init__(self, greeting: bytes, tls: ssl.SSLContext | None = None,
                 chunked: bool = False) -> None:
        self.greeting = greeting
        self.tls = tls
        self.chunked = chunked  # send the greeting one byte at a time
        self.sent_after_request = bytearray()
        self.startups: list[bytes] = []
        self.tls_used: list[bool] = []
        self.handled = asyncio.Event()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakePostgres:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                secure = False
                if code == SSL_REQUEST:
                    if self.tls is None:
                        writer.write(b"N")
                    else:
                        writer.write(b"S")
                        await writer.drain()
                        await writer.start_tls(self.tls)
                        secure = True
                    length, code = struct.unpack("!ii", await reader.readexactly(8))
                self.tls_used.append(secure)
                assert code == PROTOCOL_3, code
                self.startups.append(await reader.readexactly(length - 8))
                if self.chunked:
                    for i in range(len(self.greeting)):
                        writer.write(self.greeting[i:i + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(self.greeting)
                    await writer.drain()
                while True:  # everything the client sends, until it hangs up
                    kind = await reader.readexactly(1)
                    size = struct.unpack("!i", await reader.readexactly(4))[0]
                    body = await reader.readexactly(size - 4)
                    self.sent_after_request += kind + body
                    if kind == b"p":
                        writer.write(INVALID_PASSWORD)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, TimeoutError):
            pass
        finally:
            writer.close()
            self.handled.set()

    async def finished(self) -> None:
        await asyncio.wait_for(self.handled.wait(), 10)


@pytest.fixture(scope="module")
def tls_files() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="pgauth-tls-") as directory:
        root = Path(directory)
        root.chmod(0o755)
        cert, key = self_signed_pair(root)
        if os.geteuid() == 0:  # the cluster runs as postgres and must read its key
            with contextlib.suppress(KeyError):
                owner = pwd.getpwnam("postgres")
                for path in (cert, key):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
        yield cert, key


def server_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls_files)
    return ctx


def loopback_dialer() -> Dialer:
    return Dialer(PolicyHolder(EgressSettings(source_address=(), mode="default", allow=(),
                                              deny=(), allow_private=True)))


def pg_config(port: int, tls: str = "disable", **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "database": "appdb", "user": USER, "tls": tls,
            **extra}


async def try_connect(tmp_path: Path, port: int, tls: str = "disable", **extra: Any) -> Any:
    """The datasource's test endpoint, then a run (the pool's path): both answers."""
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="pg", kind="postgres",
                                     config=pg_config(port, tls, **extra),
                                     secrets={"password": PASSWORD})
        tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
        query = await create_query(dev, ds["id"], "SELECT 1 AS one", name="one")
        ran = await run(dev, query["id"])
        return tested, ran


def assert_refused(response: Any, method: str, tls: str) -> None:
    assert response.status == 502, response.body
    error = response.body["error"]
    assert error["code"] == "auth_method_refused", error
    text = error["message"]
    assert "'pg'" in text and method in text and f"tls = {tls}" in text
    assert "not TLS-verified" in text and "verify-full" in text and "scram-sha-256" in text
    assert "password was not sent" in text
    assert PASSWORD not in str(response.body)


# --- a fake server -------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", ["disable", "require"])
async def test_cleartext_request_is_refused_before_the_password_is_sent(
        tmp_path: Path, tls: str, tls_files: tuple[Path, Path]) -> None:
    context = server_context(tls_files) if tls == "require" else None
    async with FakePostgres(auth_request(postgres_auth.CLEARTEXT), context) as server:
        tested, ran = await try_connect(tmp_path, server.port, tls)
        await server.finished()
    for response in (tested, ran):
        assert_refused(response, "cleartext", tls)
        assert "allow_md5" not in response.body["error"]["message"]
    assert server.startups and all(USER.encode() in s for s in server.startups)
    assert server.tls_used and all(used == (tls == "require") for used in server.tls_used)
    assert bytes(server.sent_after_request) == b""  # not the password, not anything


@pytest.mark.parametrize("tls", ["disable", "require"])
async def test_md5_request_is_refused_unless_allowed(tmp_path: Path, tls: str,
                                                     tls_files: tuple[Path, Path]) -> None:
    context = server_context(tls_files) if tls == "require" else None
    async with FakePostgres(auth_request(postgres_auth.MD5, SALT), context) as server:
        tested, ran = await try_connect(tmp_path, server.port, tls)
        await server.finished()
    for response in (tested, ran):
        assert_refused(response, "MD5", tls)
        assert "allow_md5 = true" in response.body["error"]["message"]
    assert bytes(server.sent_after_request) == b""
    assert md5_answer(PASSWORD, USER, SALT) not in bytes(server.sent_after_request)


async def test_md5_request_is_answered_when_allowed(tmp_path: Path) -> None:
    async with FakePostgres(auth_request(postgres_auth.MD5, SALT)) as server:
        tested, _ = await try_connect(tmp_path, server.port, "disable", allow_md5=True)
        await server.finished()
    assert tested.status == 502 and tested.body["error"]["code"] == "datasource_auth_failed"
    assert bytes(server.sent_after_request).startswith(b"p" + md5_answer(PASSWORD, USER, SALT))


async def test_allow_md5_never_allows_cleartext(tmp_path: Path) -> None:
    async with FakePostgres(auth_request(postgres_auth.CLEARTEXT)) as server:
        tested, _ = await try_connect(tmp_path, server.port, "disable", allow_md5=True)
        await server.finished()
    assert_refused(tested, "cleartext", "disable")
    assert bytes(server.sent_after_request) == b""


NOTICE = message(b"N", b"SNOTICE\x00Mhello\x00\x00")
HOSTILE = {
    "one byte at a time": (auth_request(postgres_auth.CLEARTEXT), True, "cleartext"),
    "after a notice": (NOTICE + auth_request(postgres_auth.CLEARTEXT), False, "cleartext"),
    "unsupported code": (auth_request(99), False, "unsupported"),
    "short R": (b"R" + struct.pack("!i", 4), False, "malformed"),
    "negative length": (b"R" + struct.pack("!i", -1) + struct.pack("!i", 3), False, "malformed"),
    "oversized": (b"N" + struct.pack("!i", 0x7FFFFFFF) + b"x" * 64, False, "malformed"),
    "zero length": (b"\x00" * 16, False, "malformed"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_greetings_are_refused_without_sending_anything(tmp_path: Path,
                                                                      case: str) -> None:
    greeting, chunked, said = HOSTILE[case]
    async with FakePostgres(greeting, chunked=chunked) as server:
        tested, _ = await try_connect(tmp_path, server.port, "disable")
        await server.finished()
    assert tested.status == 502, tested.body
    error = tested.body["error"]
    assert error["code"] == "auth_method_refused" and said in error["message"], error
    assert "password was not sent" in error["message"]
    assert bytes(server.sent_after_request) == b""


def test_the_rule() -> None:
    assert postgres_auth.policy_for("verify-full", allow_md5=False) is None  # server verified
    for tls in ("disable", "require"):
        policy = postgres_auth.policy_for(tls, allow_md5=False)
        assert policy is not None
        assert postgres_auth.CLEARTEXT not in policy.allowed
        assert postgres_auth.MD5 not in policy.allowed
        assert {0, 10, 11, 12} <= policy.allowed  # SCRAM
        allowing = postgres_auth.policy_for(tls, allow_md5=True)
        assert allowing is not None and postgres_auth.MD5 in allowing.allowed
        assert postgres_auth.CLEARTEXT not in allowing.allowed


def test_allow_md5_is_a_postgres_boolean() -> None:
    base = pg_config(5432)
    assert check_config("postgres", base)["allow_md5"] is False
    assert check_config("postgres", {**base, "allow_md5": True})["allow_md5"] is True
    for bad in ("true", 1, None, [], {"x": 1}):
        with pytest.raises(InvalidDatasource, match=r"config\.allow_md5 must be true or false"):
            check_config("postgres", {**base, "allow_md5": bad})
    mongo = {"host": "127.0.0.1", "database": "app", "tls": "disable"}
    with pytest.raises(InvalidDatasource, match="unknown key"):
        check_config("mongodb", {**mongo, "allow_md5": True})


# --- a real cluster ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_cluster(tls_files: tuple[Path, Path]) -> Iterator[PostgresServer]:
    """A cluster with TLS on and one user per method: `password` (cleartext), `md5` (a password
    stored as MD5) and `scram-sha-256`."""
    psql = pg_binary("psql")
    if not psql:
        pytest.skip("PostgreSQL client (psql) is not installed")
    cert, key = tls_files
    with postgres_cluster(
        name="pgauth",
        hba="local all postgres trust\n"
            "host all pw_user 127.0.0.1/32 password\n"
            "host all md5_user 127.0.0.1/32 md5\n"
            "host all scram_user 127.0.0.1/32 scram-sha-256\n",
        conf=f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
             f"password_encryption = 'scram-sha-256'\n",
    ) as cluster:
        server = PostgresServer(cluster.root, cluster.port, cluster.prefix, psql)
        server.sql(f"CREATE ROLE scram_user LOGIN PASSWORD '{PASSWORD}';"
                   f"CREATE ROLE pw_user LOGIN PASSWORD '{PASSWORD}';"
                   f"SET password_encryption = 'md5';"
                   f"CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORD}';", database="postgres")
        server.sql("CREATE DATABASE appdb", database="postgres")
        yield server


async def real_run(tmp_path: Path, server: PostgresServer, user: str, tls: str,
                   **extra: Any) -> Any:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="pg", kind="postgres",
                                     config={**pg_config(server.port, tls, **extra),
                                             "user": user},
                                     secrets={"password": PASSWORD})
        tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
        query = await create_query(
            dev, ds["id"], "SELECT current_user::text AS who, "
                           "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS tls",
            name="who")
        runs = [await run(dev, query["id"]) for _ in range(3)]  # the pool's steady state
        return tested, runs


@pytest.mark.parametrize("tls", ["disable", "require"])
async def test_real_scram_user_connects(tmp_path: Path, auth_cluster: PostgresServer,
                                        tls: str) -> None:
    tested, runs = await real_run(tmp_path, auth_cluster, "scram_user", tls)
    assert tested.status == 200 and tested.body["ok"] is True, tested.body
    for ran in runs:
        assert ran.status == 200, ran.body
        assert ran.body["rows"] == [["scram_user", tls == "require"]]


@pytest.mark.parametrize("tls", ["disable", "require"])
async def test_real_password_user_is_refused(tmp_path: Path, auth_cluster: PostgresServer,
                                             tls: str) -> None:
    tested, runs = await real_run(tmp_path, auth_cluster, "pw_user", tls)
    for response in (tested, *runs):
        assert_refused(response, "cleartext", tls)


@pytest.mark.parametrize("tls", ["disable", "require"])
async def test_real_md5_user_is_refused_unless_allowed(tmp_path: Path,
                                                       auth_cluster: PostgresServer,
                                                       tls: str) -> None:
    tested, runs = await real_run(tmp_path, auth_cluster, "md5_user", tls)
    for response in (tested, *runs):
        assert_refused(response, "MD5", tls)
    tested, runs = await real_run(tmp_path / "allowed", auth_cluster, "md5_user", tls,
                                  allow_md5=True)
    assert tested.status == 200, tested.body
    assert runs[-1].status == 200 and runs[-1].body["rows"] == [["md5_user", tls == "require"]]


@pytest.mark.parametrize("tls", ["disable", "require"])
async def test_real_cancel_requests_pass_the_guard(auth_cluster: PostgresServer,
                                                   tls: str) -> None:
    policy = postgres_auth.policy_for(tls, allow_md5=False)
    dialer = loopback_dialer()
    context: Any = False
    if tls == "require":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    conn = await asyncpg_hook.connect(dialer, host="127.0.0.1", port=auth_cluster.port,
                                      guard=policy, user="scram_user", password=PASSWORD,
                                      database="appdb", ssl=context, timeout=5)
    try:
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT pg_sleep(10)", timeout=0.3)  # asyncpg sends a cancel
        started = time.monotonic()
        assert await conn.fetchval("SELECT 1") == 1
        assert time.monotonic() - started < 5  # the sleep was cancelled, not waited out
    finally:
        await conn.close()
    connections = dialer.counters.snapshot()["connections"]
    assert connections == [{"purpose": "postgres", "outcome": "connected", "count": 2}]


async def test_guarded_tls_transport_is_the_connection_s_own(auth_cluster: PostgresServer
                                                             ) -> None:
    """After authentication the guard is out of the path: the TLS transport talks to asyncpg's
    protocol directly."""
    policy = postgres_auth.policy_for("require", allow_md5=False)
    dialer = loopback_dialer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = await asyncpg_hook.connect(dialer, host="127.0.0.1", port=auth_cluster.port,
                                      guard=policy, user="scram_user", password=PASSWORD,
                                      database="appdb", ssl=context, timeout=5)
    try:
        transport = conn._transport
        assert isinstance(transport, asyncpg_hook.GuardedTransport)
        assert transport._transport.get_protocol() is conn._protocol
        assert transport.get_protocol() is conn._protocol
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()

