"""The PostgreSQL engine through the real API against a real cluster (the session fixture in
conftest): every parameter type, NULL, unicode, arrays, identifiers; SQL-injection payloads through
every type never change a statement's meaning; down, slow and refused datasources; a secret change
replaces the pool; 200 concurrent runs."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from appliance.http.app_keys import CORE
from tests.conftest import PG_PASSWORD, PostgresServer
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

pytest.importorskip("asyncpg")

PAYLOADS = [
    "' OR '1'='1", "'; DROP TABLE vault; --", "\" OR \"\"=\"", "1 OR 1=1", "1; SELECT 1",
    "$1", "$$ OR true $$", "E'\\x27 OR 1=1 --'", "0001", "admin'--", "') OR ('a'='a",
    "\\'; DROP TABLE vault; --", "1' UNION SELECT secret FROM vault --", "%", "_", "*/ OR 1=1 /*",
    "NULL", "{{ s }}", "\uff33\uff25\uff2c\uff25\uff23\uff34", "🚀' OR 1=1 --",
]


@pytest.fixture(scope="module")
def pg(postgres_server: PostgresServer) -> PostgresServer:
    postgres_server.sql("""
        DROP TABLE IF EXISTS typed, vault, "Mixed Case";
        CREATE TABLE typed (id int PRIMARY KEY, s text, i bigint, n double precision,
                            b boolean, d date, t timestamptz, j jsonb, tags text[],
                            amount numeric(12, 2), u uuid);
        INSERT INTO typed VALUES
          (1, '0001', 1, 1.5, true, '2024-01-02', '2024-01-02 03:04:05+00', '{"a": [1, null]}',
           ARRAY['zoë', '日本'], 12.34, '00000000-0000-0000-0000-000000000001'),
          (2, 'Zoë 🚀 日本', -9007199254740993, -0.25, false, '1999-12-31', NULL, 'null',
           ARRAY[]::text[], NULL, NULL);
        CREATE TABLE vault (owner text, secret text, n int, d date, flag boolean, meta jsonb);
        INSERT INTO vault VALUES ('alice', 'alice-secret', 1, '2024-01-01', true, '{"k": 1}');
        CREATE TABLE "Mixed Case" (x int); INSERT INTO "Mixed Case" VALUES (42);
        ALTER TABLE typed OWNER TO app; ALTER TABLE vault OWNER TO app;
        ALTER TABLE "Mixed Case" OWNER TO app;
    """)
    return postgres_server


def pg_config(pg: PostgresServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
            "tls": "disable", **extra}


async def pg_datasource(client: Any, pg: PostgresServer, name: str = "pg", **extra: Any
                        ) -> dict[str, Any]:
    return await create_datasource(client, name=name, kind="postgres", config=pg_config(pg, **extra),
                                   secrets={"password": PG_PASSWORD})


async def test_every_type_null_unicode_arrays_identifiers(tmp_path: Path, pg: PostgresServer
                                                          ) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await pg_datasource(dev, pg)
        assert ds["secrets"] == {"password": {"set": True}}
        assert PG_PASSWORD not in str(ds)
        echo = await create_query(
            dev, ds["id"],
            "SELECT {{ s }}::text AS s, {{ i }}::bigint AS i, {{ n }}::float8 AS n, "
            "{{ b }}::boolean AS b, {{ d }}::date AS d, {{ t }}::timestamptz AS t, "
            "{{ j }}::jsonb AS j, {{ a }}::text[] AS a, {{ ai }}::int8[] AS ai",
            [{"name": "s", "type": "string", "required": False},
             {"name": "i", "type": "integer", "required": False},
             {"name": "n", "type": "number", "required": False},
             {"name": "b", "type": "boolean", "required": False},
             {"name": "d", "type": "date", "required": False},
             {"name": "t", "type": "datetime", "required": False},
             {"name": "j", "type": "json", "required": False},
             {"name": "a", "type": "array<string>", "required": False},
             {"name": "ai", "type": "array<integer>", "required": False}], name="echo")
        values = {"s": "0001 Zoë 🚀 日本 'quoted' \"dq\" \\", "i": -(2**63), "n": 1e-300,
                  "b": False, "d": "2024-02-29", "t": "2024-01-02T03:04:05.123456+02:00",
                  "j": {"x": [1, "two", None, {"y": True}]}, "a": ["a,b", "{c}", "", "日本"],
                  "ai": [2**63 - 1, 0]}
        resp = await run(dev, echo["id"], values)
        assert resp.status == 200, resp.body
        row = dict(zip(resp.body["columns"], resp.body["rows"][0], strict=True))
        assert row["s"] == values["s"] and row["i"] == values["i"] and row["n"] == 1e-300
        assert row["b"] is False and row["d"] == "2024-02-29"
        assert row["t"] == "2024-01-02T01:04:05.123456+00:00"
        assert row["j"] == values["j"] and row["a"] == values["a"] and row["ai"] == values["ai"]
        nulls = await run(dev, echo["id"], {})
        assert nulls.body["rows"] == [[None] * 9]

        table = await create_query(
            dev, ds["id"], "SELECT * FROM typed WHERE id = ANY({{ ids }}) ORDER BY id",
            [{"name": "ids", "type": "array<integer>"}], name="typed")
        body = (await run(dev, table["id"], {"ids": [1, 2]})).body
        first, second = (dict(zip(body["columns"], r, strict=True)) for r in body["rows"])
        assert first["s"] == "0001" and first["amount"] == "12.34" and first["tags"] == ["zoë",
                                                                                       "日本"]
        assert first["j"] == {"a": [1, None]} and first["u"].endswith("0001")
        assert second["s"] == "Zoë 🚀 日本" and second["i"] == -9007199254740993
        assert second["t"] is None and second["j"] is None and second["tags"] == []
        assert (await run(dev, table["id"], {"ids": []})).body["rows"] == []

        ident = await create_query(
            dev, ds["id"], "SELECT count(*) AS n FROM {{ tbl }}",
            [{"name": "tbl", "type": "identifier", "choices": ["typed", "Mixed Case"]}],
            name="ident")
        assert (await run(dev, ident["id"], {"tbl": "Mixed Case"})).body["rows"] == [[1]]
        assert (await run(dev, ident["id"], {"tbl": "typed"})).body["rows"] == [[2]]
        assert (await run(dev, ident["id"], {"tbl": "vault"})).status == 422


async def test_injection_payloads_never_change_the_statement(tmp_path: Path, pg: PostgresServer
                                                             ) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await pg_datasource(dev, pg)
        guarded = {
            "string": ("SELECT secret FROM vault WHERE owner = {{ v }}", "string"),
            "like": ("SELECT secret FROM vault WHERE owner LIKE 'nobody' || {{ v }}", "string"),
            "array": ("SELECT secret FROM vault WHERE owner = ANY({{ v }})", "array<string>"),
            "json": ("SELECT secret FROM vault WHERE meta = {{ v }}::jsonb", "json"),
            "integer": ("SELECT secret FROM vault WHERE n = {{ v }} AND owner = 'x'", "integer"),
            "number": ("SELECT secret FROM vault WHERE n = {{ v }} AND owner = 'x'", "number"),
            "boolean": ("SELECT secret FROM vault WHERE flag = {{ v }} AND owner = 'x'",
                        "boolean"),
            "date": ("SELECT secret FROM vault WHERE d = {{ v }} AND owner = 'x'", "date"),
            "datetime": ("SELECT secret FROM vault WHERE d = {{ v }}::date AND owner = 'x'",
                         "datetime"),
            "identifier": ("SELECT secret FROM {{ v }} WHERE owner = 'x'", "identifier"),
        }
        ids = {}
        for label, (sql, kind) in guarded.items():
            declaration: dict[str, Any] = {"name": "v", "type": kind}
            if kind == "identifier":
                declaration["choices"] = ["vault"]
            ids[label] = (await create_query(dev, ds["id"], sql, [declaration],
                                             name=f"guard {label}"))["id"]
        for payload in PAYLOADS:
            for label, query_id in ids.items():
                value: Any = payload
                if label == "array":
                    value = [payload, payload + "x"]
                if label == "json":
                    value = {"k": payload}
                resp = await run(dev, query_id, {"v": value})
                if label in ("string", "like", "array", "json"):
                    assert resp.status == 200, (label, payload, resp.body)
                    assert resp.body["rows"] == [], (label, payload)
                else:
                    # a string is never accepted for these types: refused before anything is sent
                    assert resp.status == 422 and resp.code == "invalid_parameter", (label,
                                                                                     payload)
                assert "alice-secret" not in str(resp.body)
        assert pg.sql("SELECT count(*) FROM vault").strip() == "1"  # nothing was dropped


async def test_down_slow_and_refused_datasources(tmp_path: Path, pg: PostgresServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        down = await create_datasource(dev, name="down db", kind="postgres",
                                       config=pg_config(pg, port=closed_port),
                                       secrets={"password": PG_PASSWORD})
        q = await create_query(dev, down["id"], "SELECT 1", name="down q")
        resp = await run(dev, q["id"])
        assert resp.status == 502 and "'down db'" in resp.body["error"]["message"]
        assert PG_PASSWORD not in str(resp.body)
        test = await dev.request("POST", f"/api/v1/datasources/{down['id']}/test")
        assert test.status == 502 and test.body["ok"] is False

        wrong = await create_datasource(dev, name="wrong pw", kind="postgres",
                                        config=pg_config(pg), secrets={"password": "guess-1234"})
        test = await dev.request("POST", f"/api/v1/datasources/{wrong['id']}/test")
        assert test.status == 502 and test.body["error"]["code"] == "datasource_auth_failed"
        assert "guess-1234" not in str(test.body) and "authentication failed" in str(test.body)

        slow_ds = await pg_datasource(dev, pg, name="slow", statement_timeout_ms=400)
        slow = await create_query(dev, slow_ds["id"], "SELECT pg_sleep(5)", name="slow q")
        resp = await run(dev, slow["id"])
        assert resp.status == 504 and "'slow'" in resp.body["error"]["message"]
        ok = await create_query(dev, slow_ds["id"], "SELECT 1 AS one", name="after slow")
        assert (await run(dev, ok["id"])).body["rows"] == [[1]]  # the pool recovered

        failing = await create_query(dev, slow_ds["id"], "SELECT 1 / ({{ n }} - 1)",
                                     [{"name": "n", "type": "integer"}], name="div")
        resp = await run(dev, failing["id"], {"n": 1})
        assert resp.status == 422 and resp.code == "query_failed" and "22012" in \
            resp.body["error"]["message"]
        good = await pg_datasource(dev, pg, name="good")
        test = await dev.request("POST", f"/api/v1/datasources/{good['id']}/test")
        assert test.status == 200 and test.body["ok"] is True


async def test_a_run_waiting_for_a_free_connection_times_out(tmp_path: Path,
                                                           pg: PostgresServer) -> None:
    """With every connection busy, a run waits for one within its own time limit, then gets a
    504 naming the datasource; the busy run is not disturbed."""
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await pg_datasource(dev, pg, name="one slot", max_connections=1,
                                 statement_timeout_ms=5000)
        busy = await create_query(dev, ds["id"], "SELECT pg_sleep(1.5) AS slept", name="busy")
        quick = await create_query(dev, ds["id"], "SELECT 1 AS one", name="quick",
                                   timeout_ms=300)
        holder = asyncio.ensure_future(run(dev, busy["id"]))
        await asyncio.sleep(0.3)  # the only connection is taken
        started = asyncio.get_running_loop().time()
        waited = await run(dev, quick["id"])
        assert waited.status == 504 and "'one slot'" in waited.body["error"]["message"]
        assert asyncio.get_running_loop().time() - started < 1.0
        assert (await holder).status == 200
        assert (await run(dev, quick["id"])).body["rows"] == [[1]]


async def test_a_secret_change_replaces_the_pool(tmp_path: Path, pg: PostgresServer) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await pg_datasource(dev, pg)
        q = await create_query(dev, ds["id"], "SELECT pg_backend_pid() AS pid", name="pid")
        first = await run(dev, q["id"])
        assert first.status == 200
        service = appliance.app[CORE].datasources
        assert service.cached_version(ds["id"]) == 1
        patched = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                    {"secrets": {"password": "not-the-password"}})
        assert patched.status == 200 and patched.body["version"] == 2
        assert patched.body["secrets"] == {"password": {"set": True}}
        assert service.cached_version(ds["id"]) is None  # the old pool is gone
        resp = await run(dev, q["id"])
        assert resp.status == 502 and resp.body["error"]["code"] == "datasource_auth_failed"
        await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                          {"secrets": {"password": PG_PASSWORD}})
        again = await run(dev, q["id"])
        assert again.status == 200 and again.body["rows"] != first.body["rows"]  # new connection
        assert service.cached_version(ds["id"]) == 3
        cleared = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                    {"secrets": {"password": None}})
        assert cleared.body["secrets"] == {"password": {"set": False}}


async def test_concurrent_runs(tmp_path: Path, pg: PostgresServer) -> None:
    count = int(os.environ.get("PROXY_CONCURRENT_RUNS", "200"))
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await pg_datasource(dev, pg, max_connections=10)
        q = await create_query(dev, ds["id"], "SELECT {{ i }}::int * 2 AS twice",
                               [{"name": "i", "type": "integer"}], name="twice")
        results = await asyncio.gather(*(run(viewer if i % 2 else dev, q["id"], {"i": i})
                                         for i in range(count)))
        assert [r.status for r in results] == [200] * count
        assert [r.body["rows"] for r in results] == [[[2 * i]] for i in range(count)]
        stats = (await appliance.app[CORE].datasources.engine(ds["id"])).pool_stats()
        assert stats is not None and 1 <= stats.size <= 10  # the datasource's limit held


async def test_ndjson_stream_from_postgres(tmp_path: Path, pg: PostgresServer) -> None:
    import json

    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await pg_datasource(dev, pg, max_rows=2500)
        q = await create_query(dev, ds["id"], "SELECT i, 'r' || i AS s FROM "
                                              "generate_series(1, {{ n }}) i",
                               [{"name": "n", "type": "integer"}], name="series")
        async with dev.http.post(appliance.url + f"/api/v1/queries/{q['id']}/run",
                                 json={"params": {"n": 5000}},
                                 headers={"Authorization": f"Bearer {dev.token}",
                                          "Accept": "application/x-ndjson"},
                                 ssl=appliance.ssl) as r:
            assert r.status == 200
            lines = [json.loads(line) for line in (await r.text()).splitlines()]
        assert lines[0] == {"columns": ["i", "s"]}
        assert lines[1] == [1, "r1"] and lines[2500] == [2500, "r2500"]
        assert lines[-1]["row_count"] == 2500 and lines[-1]["truncated"] is True
        writes = await create_query(dev, ds["id"], "INSERT INTO vault (owner) VALUES ({{ o }}) "
                                                   "RETURNING owner",
                                    [{"name": "o", "type": "string"}], name="insert")
        async with dev.http.post(appliance.url + f"/api/v1/queries/{writes['id']}/run",
                                 json={"params": {"o": "streamed"}},
                                 headers={"Authorization": f"Bearer {dev.token}",
                                          "Accept": "application/x-ndjson"},
                                 ssl=appliance.ssl) as r:
            assert (await r.text()).splitlines()[1] == '["streamed"]'
        assert pg.sql("SELECT count(*) FROM vault WHERE owner = 'streamed'").strip() == "1"
        pg.sql("DELETE FROM vault WHERE owner = 'streamed'")


async def test_no_session_state_survives_a_run(tmp_path: Path, pg: PostgresServer) -> None:
    """Connections go back to the pool after the answer is sent, but always reset: a setting
    or a role one stored query sets is never seen by the next run on the same connection."""
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        pg.sql("DROP ROLE IF EXISTS proxy_other; CREATE ROLE proxy_other; "
               "GRANT proxy_other TO app", database="postgres")
        ds = await pg_datasource(dev, pg, max_connections=1)  # every run: the same connection
        setter = await create_query(
            dev, ds["id"], "SELECT set_config('search_path', 'hijacked', false) AS s, "
                           "set_config('role', 'proxy_other', false) AS r, "
                           "pg_backend_pid() AS pid", name="set")
        reader = await create_query(
            dev, ds["id"], "SELECT current_setting('search_path') AS s, current_user AS r, "
                           "pg_backend_pid() AS pid", name="read")
        for _ in range(5):
            first = await run(dev, setter["id"])
            second = await run(dev, reader["id"])
            assert first.status == second.status == 200
            assert first.body["rows"][0][2] == second.body["rows"][0][2]  # same connection
            assert second.body["rows"][0][:2] == ["\"$user\", public", "app"]
        # A stored query may not prepare, run or drop statements by name: they would outlive the
        # run on its connection, where the appliance keeps its own prepared statements.
        for text in ("PREPARE p AS SELECT 1", "DEALLOCATE ALL", "EXECUTE p", "DISCARD ALL",
                     "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"):
            refused = await dev.request("POST", "/api/v1/queries", {
                "name": "session", "datasource_id": ds["id"], "body": text, "parameters": []})
            assert refused.status == 422, refused.body
            assert "is not allowed in a stored query" in refused.body["error"]["message"]
        # Closing the engine waits for resets still under way, and leaves no connection open.
        engine = await appliance.app[CORE].datasources.engine(ds["id"])
        runs = [asyncio.ensure_future(run(dev, reader["id"])) for _ in range(5)]
        await asyncio.gather(*runs)
        pool = engine._pool  # type: ignore[attr-defined]  # the engine's pool, inspected
        await engine.close()
        assert (pool.size, pool.idle) == (0, 0)
        left = pg.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                      "'appliance' AND datname = 'appdb'").strip()
        assert left == "0"
