"""No parameter value in any error: for every parameter type and every engine, statements that make
the database or driver quote the value (wrong type, too long, unique/check/foreign-key/NOT NULL
violations, invalid JSON, int4 overflow, a bad JSON path, a missing table chosen by identifier, a
MongoDB duplicate key echoed by the server) fail with a message that holds no canary: not in the
HTTP answer (developer, viewer, JSON and NDJSON), not in a log line at DEBUG, not in the audit log.
"""

from __future__ import annotations

import io
import json
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import PG_PASSWORD, PostgresServer
from tests.support.app import Appliance, Client
from tests.support.logs import captured_logs
from tests.support.queries import (
    as_role,
    create_datasource,
    create_query,
    proxy,
    run,
    sqlite_database,
)


def _canaries() -> dict[str, Any]:
    """One value per parameter type that appears nowhere else (random, distinctive digits)."""
    rng = random.SystemRandom()
    return {
        "string": "cnry" + secrets.token_hex(6),
        "integer": rng.randrange(10**14, 10**15),
        "number": rng.randrange(10**5, 10**6) + rng.randrange(10**8, 10**9) / 10**9,
        "date": f"{rng.randrange(2100, 2900)}-0{rng.randrange(1, 10)}-1{rng.randrange(1, 10)}",
        "time": f"0{rng.randrange(1, 10)}:{rng.randrange(10, 60)}:{rng.randrange(10, 60)}",
        "identifier": "cnrytbl" + secrets.token_hex(5),
    }


def _forms(values: dict[str, Any]) -> list[str]:
    """The strings a leak would show: each canary as text."""
    return [str(values[k]) for k in ("string", "integer", "number", "date", "time",
                                     "identifier")]


async def _ndjson(appliance: Appliance, client: Client, query_id: str,
                  params: dict[str, Any]) -> str:
    async with client.http.post(appliance.url + f"/api/v1/queries/{query_id}/run",
                                json={"params": params},
                                headers={"Authorization": f"Bearer {client.token}",
                                         "Accept": "application/x-ndjson"},
                                ssl=appliance.ssl) as resp:
        return f"{resp.status} {await resp.text()}"


async def _fail_everywhere(appliance: Appliance, datasource_id: str, name: str, body: Any,
                           declared: list[dict[str, Any]], values: dict[str, Any],
                           seen: list[str], code: str = "query_failed") -> str:
    """Save the query (with the parameters its body uses), run it as developer (JSON, NDJSON)
    and viewer; each fails with `code`. The developer's message is returned; every answer is
    kept in `seen`."""
    dev, viewer = as_role(appliance, "developer"), as_role(appliance, "viewer")
    text = body if isinstance(body, str) else json.dumps(body)
    used = [d for d in declared if f"{{{{ {d['name']} }}}}" in text]
    query_id = (await create_query(dev, datasource_id, body, used, name=name))["id"]
    params = {d["name"]: values[d["name"]] for d in used}
    answer = await run(dev, query_id, params)
    assert answer.code == code, (query_id, answer.body)
    seen.append(json.dumps(answer.body))
    seen.append(json.dumps((await run(viewer, query_id, params)).body))
    seen.append(await _ndjson(appliance, dev, query_id, params))
    return str(answer.body["error"]["message"])


def _assert_nowhere(forms: list[str], seen: list[str], logs: io.StringIO,
                    appliance: Appliance) -> None:
    audit = json.dumps([dict(r) for r in appliance.query("SELECT * FROM audit_log")])
    for form in forms:
        for text in seen:
            assert form not in text, (form, text)
        assert form not in logs.getvalue(), form
        assert form not in audit, form


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_leak(postgres_server: PostgresServer) -> Iterator[tuple[PostgresServer, dict[str, Any]]]:
    values = _canaries()
    table = values["identifier"]
    postgres_server.sql(f"""
        DROP TABLE IF EXISTS leak_u, leak_c, leak_f, leak_p, leak_n, leak_s, "{table}";
        CREATE TABLE leak_u (s text UNIQUE, i bigint UNIQUE, n float8 UNIQUE, d date UNIQUE,
                             t timestamptz UNIQUE);
        CREATE TABLE leak_c (s text, n int CONSTRAINT n_small CHECK (n < 100));
        CREATE TABLE leak_p (id bigint PRIMARY KEY);
        CREATE TABLE leak_f (s text, parent bigint REFERENCES leak_p (id));
        CREATE TABLE leak_n (s text, required text NOT NULL);
        CREATE TABLE leak_s (short varchar(3));
        CREATE TABLE "{table}" (x text UNIQUE);
        INSERT INTO "{table}" VALUES ('{values["string"]}');
        ALTER TABLE leak_u OWNER TO app; ALTER TABLE leak_c OWNER TO app;
        ALTER TABLE leak_p OWNER TO app; ALTER TABLE leak_f OWNER TO app;
        ALTER TABLE leak_n OWNER TO app; ALTER TABLE leak_s OWNER TO app;
        ALTER TABLE "{table}" OWNER TO app;
    """)
    try:
        yield postgres_server, values
    finally:
        postgres_server.sql(f'DROP TABLE IF EXISTS leak_u, leak_c, leak_f, leak_p, leak_n, '
                            f'leak_s, "{table}"')


async def test_postgres_errors_hold_no_value(tmp_path: Path,
                                            pg_leak: tuple[PostgresServer, dict[str, Any]]
                                            ) -> None:
    pg, v = pg_leak
    datetime = f"{v['date']}T{v['time']}+00:00"
    p = {"s": v["string"], "i": v["integer"], "n": v["number"], "b": True, "d": v["date"],
         "t": datetime, "j": {"k": v["string"], "n": v["integer"]}, "as": [v["string"]],
         "ai": [v["integer"]], "an": [v["number"]], "ad": [v["date"]], "at": [datetime],
         "ab": [True], "tbl": v["identifier"]}
    declared = [{"name": name, "type": kind, "required": False} for name, kind in (
        ("s", "string"), ("i", "integer"), ("n", "number"), ("b", "boolean"), ("d", "date"),
        ("t", "datetime"), ("j", "json"), ("as", "array<string>"), ("ai", "array<integer>"),
        ("an", "array<number>"), ("ad", "array<date>"), ("at", "array<datetime>"),
        ("ab", "array<boolean>"))]
    declared.append({"name": "tbl", "type": "identifier", "choices": ["leak_u",
                                                                     v["identifier"]]})
    # (statement, SQLSTATE): each makes PostgreSQL or asyncpg quote a value somewhere.
    statements = [
        ("SELECT 1 WHERE 1 = {{ s }}::int", "22000"),  # asyncpg's client-side encoding
        ("SELECT {{ s }}::text::int", "22P02"),  # invalid input syntax for type integer: "…"
        ("SELECT {{ i }}::int4", "22000"),  # out of int32 range, client-side
        ("SELECT {{ i }}::text", "22000"),  # expected str, got int: client-side
        ("SELECT {{ i }}::int8::text::int4", "22003"),  # value "…" is out of range for integer
        *((f"SELECT {{{{ {name} }}}}::text", "22000")  # client-side: not text, quoted
          for name in ("n", "b", "d", "t", "ai", "an", "ad", "at", "ab")),
        *((f"SELECT {{{{ {name} }}}}::{kind}::text::int", "22P02")  # the server quotes it
          for name, kind in (("n", "float8"), ("b", "bool"), ("d", "date"),
                             ("t", "timestamptz"), ("j", "jsonb"), ("as", "text[]"),
                             ("ai", "int8[]"), ("an", "float8[]"), ("ad", "date[]"),
                             ("at", "timestamptz[]"), ("ab", "bool[]"))),
        ("SELECT ({{ j }}::jsonb ->> 'k')::jsonb", "22P02"),  # invalid json: Token "…"
        ("SELECT {{ s }}::jsonb", "22P02"),
        ("SELECT {{ ai }}::int4[]", "22000"),
        ("INSERT INTO leak_s VALUES ({{ s }})", "22001"),
        ("SELECT {{ i }}::int8 / 0", "22012"),
        ("INSERT INTO leak_c VALUES ({{ s }}, 1000)", "23514"),  # Failing row contains (…)
        ("INSERT INTO leak_f VALUES ({{ s }}, {{ i }})", "23503"),  # Key (parent)=(…)
        ("INSERT INTO leak_n VALUES ({{ s }}, NULL)", "23502"),  # Failing row contains (…)
        ("INSERT INTO leak_u (s, i, n, d, t) SELECT {{ s }}, {{ i }}, {{ n }}, {{ d }}, "
         "{{ t }} FROM generate_series(1, 2)", "23505"),  # Key (s)=(…) already exists
        ("INSERT INTO {{ tbl }} (x) VALUES ({{ s }})", "23505"),  # table, constraint: canary
    ]
    seen: list[str] = []
    with captured_logs() as logs:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(
                dev, name="pg", kind="postgres", secrets={"password": PG_PASSWORD},
                config={"host": "127.0.0.1", "port": pg.port, "database": "appdb",
                        "user": "app", "tls": "disable"})
            for index, (sql, sqlstate) in enumerate(statements):
                message = await _fail_everywhere(appliance, ds["id"], f"leak {index}", sql,
                                                 declared, p, seen)
                assert f"({sqlstate})" in message, (sql, message)
                assert "true" not in message, (sql, message)
                if sqlstate == "23514":  # what the developer still learns: the constraint
                    assert '"n_small"' in message and '"leak_c"' in message, message
            _assert_nowhere(_forms(v), seen, logs, appliance)


# --- SQLite ----------------------------------------------------------------------------------


async def test_sqlite_errors_hold_no_value(tmp_path: Path) -> None:
    v = _canaries()
    datetime = f"{v['date']}T{v['time']}Z"
    db = sqlite_database(tmp_path / "leak.sqlite", [
        "CREATE TABLE u (s TEXT UNIQUE, n INTEGER CHECK (n < 100), req TEXT NOT NULL)",
        f"INSERT INTO u VALUES ('{v['string']}', 1, 'x')",
        "CREATE TABLE leak_t (x TEXT)"])
    p = {"s": v["string"], "i": v["integer"], "n": v["number"], "b": True, "d": v["date"],
         "t": datetime, "j": {"k": v["string"]}, "as": [v["string"]], "ai": [v["integer"]],
         "ad": [v["date"]], "tbl": v["identifier"]}
    declared = [{"name": name, "type": kind, "required": False} for name, kind in (
        ("s", "string"), ("i", "integer"), ("n", "number"), ("b", "boolean"), ("d", "date"),
        ("t", "datetime"), ("j", "json"), ("as", "array<string>"), ("ai", "array<integer>"),
        ("ad", "array<date>"))]
    declared.append({"name": "tbl", "type": "identifier", "choices": ["leak_t",
                                                                     v["identifier"]]})
    statements = [  # (statement, SQLite result code)
        *((f"SELECT json_extract('{{}}', {{{{ {name} }}}})", "SQLITE_ERROR")  # path error near
          for name in ("s", "i", "n", "b", "d", "t", "j", "as", "ai", "ad")),
        ("SELECT * FROM {{ tbl }}", "SQLITE_ERROR"),  # no such table: <identifier>
        ("INSERT INTO u VALUES ({{ s }}, 1, 'x')", "SQLITE_CONSTRAINT_UNIQUE"),
        ("INSERT INTO u VALUES ('other', {{ i }}, 'x')", "SQLITE_CONSTRAINT_CHECK"),
        ("INSERT INTO u VALUES ({{ d }}, 1, NULL)", "SQLITE_CONSTRAINT_NOTNULL"),
    ]
    seen: list[str] = []
    with captured_logs() as logs:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(dev, name="lite", kind="sqlite",
                                         config={"path": str(db), "read_only": False})
            for index, (sql, code) in enumerate(statements):
                message = await _fail_everywhere(appliance, ds["id"], f"leak {index}", sql,
                                                 declared, p, seen)
                assert f"({code})" in message, (sql, message)
                if code == "SQLITE_CONSTRAINT_UNIQUE":  # the column is still named
                    assert '"u.s"' in message, message
            assert '"nope"' in await _fail_everywhere(appliance, ds["id"], "missing",
                                                      "SELECT * FROM nope", [], {}, seen)
            _assert_nowhere(_forms(v), seen, logs, appliance)


# --- MongoDB (wire-protocol server) ----------------------------------------------------------

bson = pytest.importorskip("bson")


@pytest.fixture
async def echoing_mongo() -> AsyncIterator[Any]:
    from bson import json_util

    from tests.support.mongo_wire import WireServer

    class Echoing(WireServer):
        """Fails every command as MongoDB does on a duplicate key, quoting the command (and so
        its values) in errmsg, keyValue and errInfo; inserts fail as write errors."""

        def reply(self, command: dict[str, Any], sequences: dict[str, list[Any]]
                  ) -> dict[str, Any]:
            name = next(iter(command))
            if name.lower() in ("hello", "ismaster", "ping", "endsessions"):
                return super().reply(command, sequences)
            echo = json_util.dumps({**command, **sequences})
            error = {"code": 11000, "codeName": "DuplicateKey",
                     "errmsg": f"E11000 duplicate key error dup key: {echo}",
                     "keyValue": {"echo": echo}, "errInfo": {"echo": echo}}
            if name == "insert":
                return {"ok": 1.0, "n": 0, "writeErrors": [{"index": 0, **error}]}
            return {"ok": 0.0, **error}

    server = await Echoing().start()
    yield server
    await server.close()


async def test_mongodb_errors_hold_no_value(tmp_path: Path, echoing_mongo: Any) -> None:
    v = _canaries()
    datetime = f"{v['date']}T{v['time']}Z"
    p = {"s": v["string"], "i": v["integer"], "n": v["number"], "b": True, "d": v["date"],
         "t": datetime, "j": {"k": v["string"]}, "as": [v["string"]], "ai": [v["integer"]],
         "coll": v["identifier"]}
    declared = [{"name": name, "type": kind, "required": False} for name, kind in (
        ("s", "string"), ("i", "integer"), ("n", "number"), ("b", "boolean"), ("d", "date"),
        ("t", "datetime"), ("j", "json"), ("as", "array<string>"), ("ai", "array<integer>"))]
    declared.append({"name": "coll", "type": "identifier", "choices": ["items",
                                                                      v["identifier"]]})
    fields = {name: f"{{{{ {name} }}}}" for name in ("s", "i", "n", "b", "d", "t", "j", "as",
                                                     "ai")}
    bodies = [
        {"collection": "{{ coll }}", "operation": "find", "filter": fields},
        {"collection": "{{ coll }}", "operation": "insert_one", "document": fields},
        {"collection": "items", "operation": "update_one", "filter": {"s": "{{ s }}"},
         "update": {"$set": fields}},
    ]
    seen: list[str] = []
    with captured_logs() as logs:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(dev, name="mongo", kind="mongodb",
                                         config={"host": "127.0.0.1",
                                                 "port": echoing_mongo.port,
                                                 "database": "app", "tls": "disable"})
            for index, body in enumerate(bodies):
                message = await _fail_everywhere(appliance, ds["id"], f"leak {index}", body,
                                                 declared, p, seen)
                assert "(code 11000)" in message and "duplicate key" in message, message
            _assert_nowhere(_forms(v), seen, logs, appliance)


# --- REST (an upstream that echoes its input in its failures) --------------------------------


@pytest.fixture
async def echoing_api() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.StreamResponse:
        echo = (request.raw_path + (await request.read()).decode()).encode()
        if request.path.startswith("/badjson"):  # declared JSON, is not
            return web.Response(body=b"{" + echo, content_type="application/json")
        if request.path.startswith("/redirect"):
            raise web.HTTPFound("/landing?" + echo.decode().replace("\n", ""))
        if request.path.startswith("/huge"):
            return web.Response(body=echo * 4096, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Length": str(len(echo) * 2)})
        await response.prepare(request)
        await response.write(echo)  # then the connection ends before the body does
        request.transport.close()  # type: ignore[union-attr]  # the transport is open here
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_rest_errors_hold_no_value(tmp_path: Path, echoing_api: str) -> None:
    """The REST engine's failures (invalid JSON, a redirect not followed, a body over the cap, a
    cut connection) say what happened without the upstream's echo of the values. (An answer
    with any HTTP status is the query's result: its body reaches the caller as a row.)"""
    v = _canaries()
    p = {"s": v["string"], "i": v["integer"], "n": v["number"], "b": True, "d": v["date"],
         "t": f"{v['date']}T{v['time']}Z", "j": {"k": v["string"]}, "as": [v["string"]],
         "ai": [v["integer"]]}
    declared = [{"name": name, "type": kind, "required": False} for name, kind in (
        ("s", "string"), ("i", "integer"), ("n", "number"), ("b", "boolean"), ("d", "date"),
        ("t", "datetime"), ("j", "json"), ("as", "array<string>"), ("ai", "array<integer>"))]
    query = {name: f"{{{{ {name} }}}}" for name in ("s", "i", "n", "d", "t")}
    seen: list[str] = []
    with captured_logs() as logs:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(dev, name="api", kind="rest",
                                         config={"base_url": echoing_api,
                                                 "max_response_bytes": 100_000})
            for index, (path, code) in enumerate((
                    ("/badjson/{{ s }}", "datasource_error"),
                    ("/redirect/{{ s }}", "datasource_error"),
                    ("/huge/{{ s }}", "response_too_large"),
                    ("/cut/{{ s }}", "datasource_unreachable"))):
                body = {"method": "POST", "path": path, "query": query,
                        "json": {"j": "{{ j }}", "b": "{{ b }}", "as": "{{ as }}",
                                 "ai": "{{ ai }}"}}
                await _fail_everywhere(appliance, ds["id"], f"leak {index}", body, declared, p,
                                       seen, code=code)
            _assert_nowhere(_forms(v), seen, logs, appliance)
