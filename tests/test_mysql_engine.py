"""The MySQL/MariaDB engine (appliance/kinds/mysql/engine.py) against the real MariaDB of
tests/support/mariadb.py: prepared statements only (read from the server's general log), the pool
reset, the time limit killed on the server, read-only sessions, LOAD DATA LOCAL refused, the source
address, TLS modes and the password rule, values, streaming, and no secret in errors or logs."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest

pytest.importorskip("asyncmy")

from appliance.datasources.engine import Target
from appliance.datasources.errors import (
    DatasourceAuthFailed,
    DatasourceAuthRefused,
    DatasourceTimeout,
    DatasourceTLSError,
    QueryFailed,
)
from appliance.egress import Dialer, EgressDenied, PolicyHolder, StaticResolver
from appliance.kinds.mysql import asyncmy_private
from appliance.kinds.mysql.binding import compile_mysql
from appliance.kinds.mysql.engine import MysqlEngine
from appliance.parameters import parse_parameters
from appliance.queries.result_json import dumps
from appliance.secret import Secret
from appliance.settings import EgressSettings
from tests.support.mariadb import (
    ED25519_PASSWORD,
    ED25519_USER,
    NATIVE_PASSWORD,
    NATIVE_USER,
    SOURCE_PASSWORD,
    SOURCE_USER,
    TLS_PASSWORD,
    TLS_USER,
    MariaDBServer,
)


def dialer(**overrides: Any) -> Dialer:
    base: dict[str, Any] = {"source_address": (), "mode": "default", "allow": (), "deny": (),
                            "allow_private": True}
    base.update(overrides)
    return Dialer(PolicyHolder(EgressSettings(**base)),
                  resolver=StaticResolver({"db.example": ["127.0.0.1"]}))


def engine(server: MariaDBServer, *, user: str = NATIVE_USER, password: str = NATIVE_PASSWORD,
           tls: str = "disable", allow: bool = True, host: str = "127.0.0.1",
           the_dialer: Dialer | None = None, **config: Any) -> MysqlEngine:
    cfg = server.datasource_config(user=user, tls=tls, host=host, **{
        "allow_password_without_verified_tls": allow, "read_only": True,
        "statement_timeout_ms": 30_000, **config})
    target = Target(id="ds_my", name="my", kind="mysql", config=cfg, version=1,
                    secrets={"password": Secret(password)})
    return MysqlEngine(target, the_dialer or dialer())


def bound(sql: str, params: list[dict[str, Any]] | None = None, values: dict[str, Any] | None = None
          ) -> Any:
    return compile_mysql(sql, parse_parameters(params or [])).bind(values or {})


async def rows_of(eng: MysqlEngine, statement: Any, *, timeout: float = 10, fetch: int = 10_000
                  ) -> tuple[list[str], list[Any]]:
    found: list[Any] = []
    async with eng.open(statement, timeout=timeout, fetch=fetch) as stream:
        async for batch in stream.batches:
            found.extend(batch)
        return stream.columns, found


async def thread_of(eng: MysqlEngine) -> int:
    _, rows = await rows_of(eng, bound("SELECT CONNECTION_ID()"))
    return int(rows[0][0])


async def test_private_names_are_there() -> None:
    # Async: asyncmy's Connection() asks for the event loop, which a sync test run after an
    # async one (pytest-asyncio leaves none set) does not have.
    asyncmy_private.check()  # fails loudly when asyncmy changes


async def test_injection_payloads_keep_their_meaning_and_travel_as_prepared_values(
        mariadb_server: MariaDBServer) -> None:
    eng = engine(mariadb_server)
    payloads = ["x' OR '1'='1", "x\\' OR 1=1 -- ", "'; DROP TABLE t; --", "\" OR \"\"=\"",
                "`", "/*! SELECT 1 */", "\\", "🦄' UNION SELECT 1 #", "marker-7f3a"]
    params = [{"name": "s", "type": "string"}, {"name": "n", "type": "integer"},
              {"name": "j", "type": "json"}, {"name": "a", "type": "array<string>"}]
    sql = "SELECT {{ s }}, {{ n }} + 0, {{ j }}, {{ s }} IN ({{ a }}), 'b' IN ({{ a }})"
    try:
        for payload in payloads:
            statement = bound(sql, params, {"s": payload, "n": 7, "j": {"k": payload},
                                            "a": [payload, "b"]})
            _, rows = await rows_of(eng, statement)
            assert rows[0][0] == payload
            assert rows[0][1] == 7
            assert json.loads(rows[0][2]) == {"k": payload}
            assert list(rows[0][3:]) == [1, 1]
        thread = await thread_of(eng)
    finally:
        await eng.close()
    commands = mariadb_server.log_commands(thread)
    assert ("Prepare", "SELECT CONNECTION_ID()") in commands
    assert any(c == "Execute" for c, _ in commands)
    # Every other connection of this engine: values only ever in Prepare/Execute lines.
    text = "\n".join(mariadb_server.general_log_lines())
    for line in text.splitlines():
        if "\tQuery\t" in line or " Query\t" in line:
            assert "marker-7f3a" not in line and "DROP TABLE" not in line


async def test_every_run_is_a_prepare_and_an_execute(mariadb_server: MariaDBServer) -> None:
    eng = engine(mariadb_server)
    try:
        statement = bound("SELECT {{ s }}, CONNECTION_ID()", [{"name": "s", "type": "string"}],
                          {"s": "value-91c2"})
        _, rows = await rows_of(eng, statement)
        thread = int(rows[0][1])
    finally:
        await eng.close()
    commands = mariadb_server.log_commands(thread)
    assert ("Prepare", "SELECT ?, CONNECTION_ID()") in commands
    assert any(c == "Execute" and "value-91c2" in a for c, a in commands)
    assert not any(c == "Query" and "value-91c2" in a for c, a in commands)


async def test_state_does_not_leak_between_runs(mariadb_server: MariaDBServer) -> None:
    eng = engine(mariadb_server, max_connections=1, read_only=False)
    try:
        first = await thread_of(eng)
        await rows_of(eng, bound("SET @leak = 42"))
        await rows_of(eng, bound("CREATE TEMPORARY TABLE leak_tmp (x INT)"))
        await rows_of(eng, bound("SET SESSION sql_mode = 'ANSI_QUOTES'"))
        await asyncio.sleep(0.2)  # the reset runs in a task of its own
        assert await thread_of(eng) == first  # the same connection, reset
        _, rows = await rows_of(eng, bound("SELECT @leak, @@session.sql_mode LIKE '%ANSI_QUOTES%'"))
        assert [list(r) for r in rows] == [[None, 0]]
        with pytest.raises(QueryFailed) as info:
            await rows_of(eng, bound("SELECT * FROM leak_tmp"))
        assert "1146" in info.value.message
    finally:
        await eng.close()


async def test_read_only_by_default(mariadb_server: MariaDBServer) -> None:
    mariadb_server.sql("CREATE TABLE IF NOT EXISTS ro_t (x INT)")
    eng = engine(mariadb_server)
    try:
        with pytest.raises(QueryFailed) as info:
            await rows_of(eng, bound("INSERT INTO ro_t VALUES (1)"))
        assert "read-only" in info.value.message
        _, rows = await rows_of(eng, bound("SELECT @@session.tx_read_only"))
        assert [list(r) for r in rows] == [[1]]
    finally:
        await eng.close()
    assert mariadb_server.sql("SELECT COUNT(*) FROM ro_t").strip() == "0"
    writer = engine(mariadb_server, read_only=False)
    try:
        await rows_of(writer, bound("INSERT INTO ro_t VALUES (1)"))
    finally:
        await writer.close()
    assert mariadb_server.sql("SELECT COUNT(*) FROM ro_t").strip() == "1"


async def test_time_limit_kills_the_statement_on_the_server(mariadb_server: MariaDBServer
                                                            ) -> None:
    # The server's own limit is out of the way (SET STATEMENT lifts it for one statement, as a
    # stored query may): the client's limit must KILL QUERY.
    eng = engine(mariadb_server)
    statement = bound("SET STATEMENT max_statement_time = 0 FOR SELECT SLEEP(10) AS marker_sleep")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DatasourceTimeout):
            await rows_of(eng, statement, timeout=1)
        assert loop.time() - started < 5
        for _ in range(50):
            running = mariadb_server.sql(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE '%marker_sleep%' AND COMMAND <> 'Sleep' AND ID <> CONNECTION_ID()")
            if running.strip() == "0":
                break
            await asyncio.sleep(0.1)
        assert running.strip() == "0"
        _, rows = await rows_of(eng, bound("SELECT 1"))  # the engine still serves
        assert [list(r) for r in rows] == [[1]]
    finally:
        await eng.close()


async def test_server_time_limit_is_set(mariadb_server: MariaDBServer) -> None:
    eng = engine(mariadb_server, statement_timeout_ms=1500)
    try:
        _, rows = await rows_of(eng, bound("SELECT @@session.max_statement_time"))
        assert float(rows[0][0]) == 1.5
        with pytest.raises(DatasourceTimeout):
            await rows_of(eng, bound("SELECT SLEEP(5) FROM seq_1_to_2"), timeout=20)
    finally:
        await eng.close()


async def test_load_data_local_is_refused(mariadb_server: MariaDBServer, tmp_path) -> None:
    mariadb_server.sql("CREATE TABLE IF NOT EXISTS infile_t (line TEXT)")
    secret_file = tmp_path / "appliance-secret.txt"
    secret_file.write_text("do-not-read\n")
    secret_file.chmod(0o644)
    eng = engine(mariadb_server, read_only=False)
    try:
        for sql in (f"LOAD DATA LOCAL INFILE '{secret_file}' INTO TABLE infile_t",
                    f"LOAD DATA LOCAL INFILE '{secret_file}' INTO TABLE infile_t "
                    "FIELDS TERMINATED BY ','"):
            with pytest.raises(QueryFailed):
                await rows_of(eng, bound(sql))
        _, rows = await rows_of(eng, bound("SELECT @@local_infile"))
        assert [list(r) for r in rows] == [[1]]  # the server allows it: the client refused
    finally:
        await eng.close()
    assert mariadb_server.sql("SELECT COUNT(*) FROM infile_t").strip() == "0"


async def test_source_address_through_the_dialer(mariadb_server: MariaDBServer) -> None:
    eng = engine(mariadb_server, user=SOURCE_USER, password=SOURCE_PASSWORD, host="db.example",
                 the_dialer=dialer(source_address=("127.0.0.2",)))
    try:
        _, rows = await rows_of(eng, bound("SELECT SUBSTRING_INDEX(USER(), '@', -1)"))
        assert [list(r) for r in rows] == [["127.0.0.2"]]
    finally:
        await eng.close()
    denied = engine(mariadb_server, the_dialer=dialer(allow_private=False))
    try:
        with pytest.raises(EgressDenied):
            await rows_of(denied, bound("SELECT 1"))
    finally:
        await denied.close()


async def test_tls_modes(mariadb_server: MariaDBServer, monkeypatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(mariadb_server.ca.ca_pem))
    ssl_query = bound("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                      "WHERE VARIABLE_NAME = 'Ssl_version'")
    verified = engine(mariadb_server, user=TLS_USER, password=TLS_PASSWORD, tls="verify-full",
                      allow=False)
    try:
        _, rows = await rows_of(verified, ssl_query)
        assert rows[0][0].startswith("TLS")
    finally:
        await verified.close()
    required = engine(mariadb_server, user=TLS_USER, password=TLS_PASSWORD, tls="require")
    try:
        _, rows = await rows_of(required, ssl_query)
        assert rows[0][0].startswith("TLS")
    finally:
        await required.close()
    # The account requires TLS: a plain connection is refused by the server.
    plain = engine(mariadb_server, user=TLS_USER, password=TLS_PASSWORD, tls="disable")
    try:
        with pytest.raises(DatasourceAuthFailed):
            await rows_of(plain, bound("SELECT 1"))
    finally:
        await plain.close()
    monkeypatch.delenv("SSL_CERT_FILE")
    untrusted = engine(mariadb_server, user=TLS_USER, password=TLS_PASSWORD, tls="verify-full")
    try:
        with pytest.raises(DatasourceTLSError):
            await rows_of(untrusted, bound("SELECT 1"))
    finally:
        await untrusted.close()


@pytest.mark.parametrize("tls", ["disable", "require"])
async def test_password_only_over_verified_tls_unless_allowed(mariadb_server: MariaDBServer,
                                                              tls: str) -> None:
    before = len(mariadb_server.general_log_lines())
    eng = engine(mariadb_server, tls=tls, allow=False)
    try:
        with pytest.raises(DatasourceAuthRefused) as info:
            await rows_of(eng, bound("SELECT 1"))
    finally:
        await eng.close()
    assert "allow_password_without_verified_tls" in info.value.message
    assert not any("Connect" in line for line in mariadb_server.general_log_lines()[before:])


async def test_ed25519_account(mariadb_server: MariaDBServer) -> None:
    pytest.importorskip("nacl")
    eng = engine(mariadb_server, user=ED25519_USER, password=ED25519_PASSWORD)
    try:
        _, rows = await rows_of(eng, bound("SELECT 1"))
        assert [list(r) for r in rows] == [[1]]
    finally:
        await eng.close()


async def test_the_secret_never_reaches_errors_or_logs(mariadb_server: MariaDBServer,
                                                       caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-secret-5d1e"
    eng = engine(mariadb_server, password=wrong)
    try:
        with pytest.raises(DatasourceAuthFailed) as info:
            await rows_of(eng, bound("SELECT 1"))
        with pytest.raises(DatasourceAuthFailed):
            await eng.test(5)
    finally:
        await eng.close()
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in caplog.text
    assert wrong not in repr(eng.target)
    ok = engine(mariadb_server)
    try:  # a server error quoting a value is reported by number, not by its message
        with pytest.raises(QueryFailed) as failed:
            await rows_of(ok, bound("SELECT CAST({{ s }} AS JSON) + JSON_EXTRACT({{ s }}, '$.a')",
                                    [{"name": "s", "type": "string"}], {"s": "value-ab12"}))
        assert "value-ab12" not in failed.value.message
    finally:
        await ok.close()


async def test_values(mariadb_server: MariaDBServer) -> None:
    mariadb_server.sql("CREATE TABLE IF NOT EXISTS bits_t (b BIT(12)); DELETE FROM bits_t; "
                       "INSERT INTO bits_t VALUES (b'101000000001')")
    eng = engine(mariadb_server)
    sql = ("SELECT CAST('12345678901234567890.123456789' AS DECIMAL(30,9)), "
           "CAST('2024-02-29 13:14:15.123456' AS DATETIME(6)), CAST('2024-02-29' AS DATE), "
           "CAST('-12:34:56.5' AS TIME(1)), JSON_OBJECT('a', 1, 'b', JSON_ARRAY(true, null)), "
           "(SELECT b FROM bits_t), X'00FF10', CAST(18446744073709551615 AS UNSIGNED), "
           "CAST(9007199254740993 AS SIGNED), 42, NULL, 'ünï'")
    try:
        columns, rows = await rows_of(eng, bound(sql))
    finally:
        await eng.close()
    assert len(columns) == 12
    # MariaDB's JSON is LONGTEXT with a check: text here (MySQL's JSON type would be parsed).
    assert json.loads(dumps(list(rows[0]))) == [
        "12345678901234567890.123456789", "2024-02-29T13:14:15.123456", "2024-02-29",
        "PT-45296.5S", '{"a": 1, "b": [true, null]}', 2561,
        base64.b64encode(b"\x00\xff\x10").decode(), "18446744073709551615",
        "9007199254740993", 42, None, "ünï"]


async def test_streams_in_batches_and_stops_at_fetch(mariadb_server: MariaDBServer) -> None:
    eng = engine(mariadb_server)
    try:
        sizes: list[int] = []
        async with eng.open(bound("SELECT seq FROM seq_1_to_200000"), timeout=30, fetch=150_000,
                            stream=True) as stream:
            async for batch in stream.batches:
                sizes.append(len(batch))
        assert max(sizes) <= 1000 and sum(sizes) == 150_000
        got: list[Any] = []
        columns = await eng.collect(bound("SELECT seq FROM seq_1_to_100"), timeout=10, fetch=7,
                                    take=lambda b: got.extend(b) or True)
        assert columns == ["seq"] and [r[0] for r in got] == list(range(1, 8))
        empty: list[Any] = []
        await eng.collect(bound("SELECT seq FROM seq_1_to_10 WHERE seq > 99"), timeout=10,
                          fetch=7, take=lambda b: empty.extend(b) or True)
        assert empty == []
    finally:
        await eng.close()


# -- answers (collect): no cursor, the prepare and the execute in one write on MariaDB ----------


async def answer_of(eng: MysqlEngine, statement: Any, *, fetch: int = 10_000) -> list[Any]:
    got: list[Any] = []
    await eng.collect(statement, timeout=10, fetch=fetch, take=lambda b: got.extend(b) or True)
    return got


async def answer_thread(eng: MysqlEngine) -> int:
    return int((await answer_of(eng, bound("SELECT CONNECTION_ID()")))[0][0])


async def resets_done(eng: MysqlEngine) -> None:
    """Until the connections given back have been reset (the pool does it in a task)."""
    for _ in range(200):
        pool = eng._pool
        if pool is None or not pool._resets:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a reset did not end")


def on_path(eng: MysqlEngine, path: str) -> MysqlEngine:
    """`eng`, its connections taking MySQL's path (the execute waits for the prepare's answer:
    no statement id -1) when `path` is "mysql", even on MariaDB."""
    if path == "mysql":
        connect = eng._connect

        async def as_mysql() -> Any:
            conn = await connect()
            conn.mariadb = False  # its settings stay MariaDB's (max_statement_time)
            return conn

        eng._connect = as_mysql  # type: ignore[method-assign]  # before the pool exists
    return eng


def count_writes(eng: MysqlEngine) -> list[int]:
    """A list that grows by one for each write to the server on the engine's connections."""
    writes: list[int] = []
    connect = eng._connect

    async def counted() -> Any:
        conn = await connect()
        write = conn._write_bytes

        def one(data: bytes) -> None:
            writes.append(len(data))
            write(data)

        conn._write_bytes = one
        return conn

    eng._connect = counted  # type: ignore[method-assign]  # before the pool exists
    return writes


def com_counters(server: MariaDBServer) -> dict[str, int]:
    out = server.sql("SHOW GLOBAL STATUS LIKE 'Com\\_%'")
    pairs = (line.split("\t") for line in out.splitlines() if "\t" in line)
    return {name: int(value) for name, value in pairs if value.isdigit()}


@pytest.mark.parametrize("path", ["mariadb", "mysql"])
async def test_an_answer_is_a_prepare_an_execute_and_a_reset(mariadb_server: MariaDBServer,
                                                             path: str) -> None:
    eng = on_path(engine(mariadb_server, max_connections=1), path)
    writes = count_writes(eng)
    runs = 20
    try:
        await answer_of(eng, bound("SELECT 1"))  # the connection opened and its settings set
        await resets_done(eng)
        before = com_counters(mariadb_server)
        written = len(writes)
        for i in range(runs):
            rows = await answer_of(eng, bound("SELECT {{ n }} + 1, {{ s }}",
                                              [{"name": "n", "type": "integer"},
                                               {"name": "s", "type": "string"}],
                                              {"n": i, "s": "value-5e1d"}))
            assert [list(r) for r in rows] == [[i + 1, "value-5e1d"]]
            await resets_done(eng)
        after = com_counters(mariadb_server)
        written = len(writes) - written
        thread = await answer_thread(eng)
    finally:
        await eng.close()
    # One write per run on MariaDB (the prepare, the execute, the reset and the settings), two
    # on MySQL (the prepare; then the execute, the reset and the settings).
    assert written == runs * (1 if path == "mariadb" else 2)
    per_run = {name.removeprefix("Com_"): (after[name] - before.get(name, 0)) / runs
               for name in ("Com_stmt_prepare", "Com_stmt_execute", "Com_stmt_fetch",
                            "Com_admin_commands", "Com_stmt_close")}
    # Each run: one prepare, one execute, no fetch; its reset (COM_RESET_CONNECTION, an admin
    # command) and the settings come after it, in the execute's write.
    assert per_run == {"stmt_prepare": 1, "stmt_execute": 1, "stmt_fetch": 0,
                       "admin_commands": 1, "stmt_close": 0}
    commands = mariadb_server.log_commands(thread)
    assert ("Prepare", "SELECT ? + 1, ?") in commands
    assert any(c == "Execute" and "value-5e1d" in a for c, a in commands)
    assert not any(c == "Query" and "value-5e1d" in a for c, a in commands)


@pytest.mark.parametrize("path", ["mariadb", "mysql"])
async def test_state_does_not_leak_between_answers(mariadb_server: MariaDBServer, path: str
                                                   ) -> None:
    eng = on_path(engine(mariadb_server, max_connections=1, read_only=False), path)
    try:
        first = await answer_thread(eng)
        await answer_of(eng, bound("SET @leak = 42"))
        assert [list(r) for r in await answer_of(eng, bound("SELECT GET_LOCK('leak_lock', 0)"))
                ] == [[1]]
        await answer_of(eng, bound("CREATE TEMPORARY TABLE leak_answer_tmp (x INT)"))
        await answer_of(eng, bound("SET SESSION sql_mode = 'ANSI_QUOTES'"))
        await answer_of(eng, bound("SET SESSION TRANSACTION READ WRITE"))
        await resets_done(eng)
        assert mariadb_server.sql("SELECT IS_FREE_LOCK('leak_lock')").strip() == "1"
        assert await answer_thread(eng) == first  # the same connection, reset
        rows = await answer_of(eng, bound(
            "SELECT @leak, @@session.sql_mode LIKE '%ANSI_QUOTES%', @@session.time_zone"))
        assert [list(r) for r in rows] == [[None, 0, "+00:00"]]  # the settings set again
        with pytest.raises(QueryFailed) as info:
            await answer_of(eng, bound("SELECT * FROM leak_answer_tmp"))
        assert "1146" in info.value.message
    finally:
        await eng.close()
    ro = on_path(engine(mariadb_server, max_connections=1), path)
    try:
        await answer_of(ro, bound("SET SESSION TRANSACTION READ WRITE"))
        await resets_done(ro)
        rows = await answer_of(ro, bound("SELECT @@session.tx_read_only"))
        assert [list(r) for r in rows] == [[1]]  # read-only again after the reset
    finally:
        await ro.close()


async def test_an_answer_past_fetch_closes_its_connection_and_the_next_run_works(
        mariadb_server: MariaDBServer) -> None:
    eng = engine(mariadb_server, max_connections=1)
    try:
        first = await answer_thread(eng)
        rows = await answer_of(eng, bound("SELECT seq FROM seq_1_to_300000"), fetch=7)
        assert [r[0] for r in rows] == list(range(1, 8))
        await resets_done(eng)
        assert eng._pool is not None and eng._pool.size == 0  # closed, its slot free
        second = await answer_thread(eng)
        assert second != first
        rows = await answer_of(eng, bound("SELECT seq FROM seq_1_to_5"), fetch=7)
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]  # all of it: the connection stays
        await resets_done(eng)
        assert await answer_thread(eng) == second
    finally:
        await eng.close()


@pytest.mark.parametrize("path", ["mariadb", "mysql"])
async def test_a_statement_the_server_cannot_prepare_leaves_the_connection_in_step(
        mariadb_server: MariaDBServer, path: str) -> None:
    eng = on_path(engine(mariadb_server, max_connections=1), path)
    try:
        first = await answer_thread(eng)
        for sql in ("SELECT {{ n }} FROM no_such_table_9c1",
                    "SELECT no_such_function_9c1({{ n }})"):
            with pytest.raises(QueryFailed):
                await answer_of(eng, bound(sql, [{"name": "n", "type": "integer"}], {"n": 1}))
            await resets_done(eng)
            assert await answer_thread(eng) == first
        rows = await answer_of(eng, bound("SELECT {{ n }} * 2", [{"name": "n", "type": "integer"}],
                                          {"n": 21}))
        assert [list(r) for r in rows] == [[42]]
        with pytest.raises(QueryFailed):  # fails at its 11th row, after the first were sent
            await answer_of(eng, bound("SELECT 10 - CAST(seq AS UNSIGNED) FROM seq_1_to_20"))
        await resets_done(eng)
        assert await answer_thread(eng) == first
    finally:
        await eng.close()
