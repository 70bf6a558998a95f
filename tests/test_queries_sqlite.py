"""Datasources and stored queries over the real API against real SQLite files: CRUD, typed
parameters, JSON and NDJSON runs, limits, the read-only default and the compiled-query cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.queries import (
    as_role,
    create_datasource,
    create_query,
    proxy,
    run,
    sqlite_database,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return sqlite_database(tmp_path / "shop.sqlite", [
        "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT, name TEXT, price REAL)",
        "INSERT INTO items VALUES (1, '0001', 'mug', 8.5), (2, '1', 'pen', 2.0), "
        "(3, '0042', 'Café', 4.25)",
        "CREATE TABLE other (x INTEGER)",
        "INSERT INTO other VALUES (7)",
    ])


async def test_crud_typed_runs_and_streaming(tmp_path: Path, db: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="shop", kind="sqlite", config={"path": str(db)})
        assert ds["config"]["read_only"] is True and ds["secrets"] == {}
        assert (await dev.request("GET", f"/api/v1/datasources/{ds['id']}")).body["name"] == "shop"
        q = await create_query(dev, ds["id"], "SELECT id, name FROM items WHERE sku = {{ sku }}",
                               [{"name": "sku", "type": "string"}], name="by sku")
        resp = await run(dev, q["id"], {"sku": "0001"})
        assert resp.status == 200, resp.body
        assert resp.body["columns"] == ["id", "name"]
        assert resp.body["rows"] == [[1, "mug"]]  # "0001" stayed a string: not the row with '1'
        assert resp.body["row_count"] == 1 and resp.body["truncated"] is False
        assert isinstance(resp.body["duration_ms"], float | int)

        bad = await run(dev, q["id"], {"sku": 1})
        assert bad.status == 422 and bad.code == "invalid_parameter" and "sku" in \
            bad.body["error"]["message"]
        assert (await run(dev, q["id"], {"sku": "x", "extra": 1})).status == 422
        assert (await run(dev, "q_nope")).status == 404

        arr = await create_query(dev, ds["id"],
                                 "SELECT name FROM {{ t }} WHERE id IN ({{ ids }}) ORDER BY id",
                                 [{"name": "ids", "type": "array<integer>"},
                                  {"name": "t", "type": "identifier", "choices": ["items"]}],
                                 name="by ids")
        resp = await run(dev, arr["id"], {"ids": [1, 3], "t": "items"})
        assert resp.body["rows"] == [["mug"], ["Café"]]
        assert (await run(dev, arr["id"], {"ids": [], "t": "items"})).body["rows"] == []
        assert (await run(dev, arr["id"], {"ids": [1], "t": "other"})).status == 422

        # NDJSON: header, one row per line, summary
        async with dev.http.post(appliance.url + f"/api/v1/queries/{arr['id']}/run",
                                 json={"params": {"ids": [1, 2, 3], "t": "items"}},
                                 headers={"Authorization": f"Bearer {dev.token}",
                                          "Accept": "application/x-ndjson"},
                                 ssl=appliance.ssl) as r:
            assert r.status == 200 and r.content_type == "application/x-ndjson"
            # prepared by the handler itself, and still with the security headers
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "no-store"
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            lines = [json.loads(line) for line in (await r.text()).splitlines()]
        assert lines[0] == {"columns": ["name"]}
        assert lines[1:4] == [["mug"], ["pen"], ["Café"]]
        assert lines[4]["row_count"] == 3 and lines[4]["truncated"] is False

        # the cache follows changes
        patched = await dev.request("PATCH", f"/api/v1/queries/{q['id']}",
                                    {"body": "SELECT id, name, price FROM items "
                                             "WHERE sku = {{ sku }}"})
        assert patched.status == 200, patched.body
        assert (await run(dev, q["id"], {"sku": "0001"})).body["rows"] == [[1, "mug", 8.5]]
        bad_patch = await dev.request("PATCH", f"/api/v1/queries/{q['id']}",
                                      {"body": "SELECT '{{ sku }}'"})
        assert bad_patch.status == 422 and bad_patch.code == "invalid_query"
        assert (await run(dev, q["id"], {"sku": "0001"})).body["rows"] == [[1, "mug", 8.5]]

        # a datasource in use cannot be deleted; then it can
        assert (await dev.request("DELETE", f"/api/v1/datasources/{ds['id']}")).status == 409
        for query in (q, arr):
            assert (await dev.request("DELETE", f"/api/v1/queries/{query['id']}")).status == 204
        assert (await run(dev, q["id"], {"sku": "0001"})).status == 404
        assert (await dev.request("DELETE", f"/api/v1/datasources/{ds['id']}")).status == 204
        actions = appliance.audit_actions()
        assert {"datasource.create", "query.create", "query.update", "query.run",
                "query.delete", "datasource.delete"} <= set(actions)


async def test_limits_truncate(tmp_path: Path) -> None:
    db = sqlite_database(tmp_path / "n.sqlite", [
        "CREATE TABLE n (i INTEGER)",
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000) "
        "INSERT INTO n SELECT i FROM c"])
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="n", kind="sqlite",
                                     config={"path": str(db), "max_rows": 1000,
                                             "max_response_bytes": 100_000})
        q = await create_query(dev, ds["id"], "SELECT i FROM n ORDER BY i", name="all")
        body = (await run(dev, q["id"])).body
        assert body["row_count"] == 1000 and body["truncated"] is True
        assert body["rows"][-1] == [1000]
        tight = await create_query(dev, ds["id"], "SELECT i FROM n ORDER BY i", name="tight",
                                   max_rows=10)
        body = (await run(dev, tight["id"])).body
        assert body["row_count"] == 10 and body["truncated"] is True
        wide = await create_query(dev, ds["id"], "SELECT printf('%.500c', 'x') FROM n",
                                  name="wide")
        body = (await run(dev, wide["id"])).body
        assert body["truncated"] is True and 150 <= body["row_count"] <= 200
        # a query cannot loosen its datasource's limits
        loose = await dev.request("POST", "/api/v1/queries",
                                  {"name": "loose", "datasource_id": ds["id"],
                                   "body": "SELECT 1", "max_rows": 10**9})
        assert loose.status == 422


async def test_sqlite_is_read_only_and_cannot_attach(tmp_path: Path, db: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="ro", kind="sqlite", config={"path": str(db)})
        for i, sql in enumerate([
            "INSERT INTO items (id, sku, name, price) VALUES (9, 'x', 'y', 1)",
            "DELETE FROM items",
            f"ATTACH DATABASE '{appliance.store_path}' AS store",
            "PRAGMA query_only = OFF",
        ]):
            q = await create_query(dev, ds["id"], sql, name=f"w{i}")
            resp = await run(dev, q["id"])
            assert resp.status == 422 and resp.code == "query_failed", (sql, resp.body)
        assert sqlite_rows(db, "SELECT count(*) FROM items") == [(3,)]
        # the store itself can never be a datasource
        for path in (appliance.store_path, appliance.state / "x.sqlite"):
            resp = await dev.request("POST", "/api/v1/datasources",
                                     {"name": "store", "kind": "sqlite",
                                      "config": {"path": str(path)}})
            assert resp.status == 422 and "state directory" in resp.body["error"]["message"]
        missing = await create_datasource(dev, name="gone", kind="sqlite",
                                          config={"path": str(tmp_path / "missing.sqlite")})
        q = await create_query(dev, missing["id"], "SELECT 1", name="gone q")
        resp = await run(dev, q["id"])
        assert resp.status == 502 and "'gone'" in resp.body["error"]["message"]
        assert not (tmp_path / "missing.sqlite").exists()
        test = await dev.request("POST", f"/api/v1/datasources/{missing['id']}/test")
        assert test.status == 502 and test.body["ok"] is False
        test = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
        assert test.status == 200 and test.body["ok"] is True


async def test_bad_input(tmp_path: Path, db: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        for body, status in [
            ({"name": "x", "kind": "oracle", "config": {}}, 422),
            ({"name": "", "kind": "sqlite", "config": {"path": str(db)}}, 422),
            ({"name": "x", "kind": "sqlite", "config": {"path": "relative.db"}}, 422),
            ({"name": "x", "kind": "sqlite", "config": {"path": str(db), "max_rows": 0}}, 422),
            ({"name": "x", "kind": "sqlite", "config": {"path": str(db), "typo": 1}}, 422),
            ({"name": "x", "kind": "sqlite", "config": {"path": str(db)},
              "secrets": {"password": "p"}}, 422),
            ({"name": "x", "kind": "rest", "config": {"base_url": "ftp://x"}}, 422),
            ({"name": "x", "kind": "rest", "config": {"base_url": "https://u:p@x"}}, 422),
            ({"name": "x", "kind": "rest", "config": {"base_url": "https://x",
                                                      "auth": "bearer"}}, 422),
            ({"name": "x", "kind": "postgres", "config": {"host": "h"}}, 422),
        ]:
            resp = await dev.request("POST", "/api/v1/datasources", body)
            assert resp.status == status, (body, resp.body)
        raw = await dev.request("POST", "/api/v1/datasources", raw_body=b"{nope",
                                headers={"Content-Type": "application/json"})
        assert raw.status == 400
        ds = await create_datasource(dev, name="ok", kind="sqlite", config={"path": str(db)})
        dup = await dev.request("POST", "/api/v1/datasources",
                                {"name": "OK", "kind": "sqlite", "config": {"path": str(db)}})
        assert dup.status == 409
        assert (await dev.request("GET", "/api/v1/datasources/ds_nope")).status == 404
        q = await create_query(dev, ds["id"], "SELECT 1", name="one")
        assert (await dev.request("POST", f"/api/v1/queries/{q['id']}/run",
                                  {"params": [1]})).status == 400
        assert (await dev.request("POST", f"/api/v1/queries/{q['id']}/run",
                                  {"params": {}, "mode": "edit"})).status == 400
        for body in ({"name": "q2", "datasource_id": "ds_nope", "body": "SELECT 1"},
                     {"name": "q2", "datasource_id": ds["id"], "body": "SELECT 1; SELECT 2"},
                     {"name": "q2", "datasource_id": ds["id"], "body": "SELECT '{{ a }}'",
                      "parameters": [{"name": "a", "type": "string"}]}):
            assert (await dev.request("POST", "/api/v1/queries", body)).status == 422


def sqlite_rows(path: Path, sql: str) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_no_result_leaves_before_its_audit_entry(tmp_path: Path, db: Path) -> None:
    """Fail-closed: a JSON answer waits for its entry; a stream's first row waits for the
    entry of its start, and a stream whose final entry fails ends with that error."""
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="shop", kind="sqlite", config={"path": str(db)})
        q = await create_query(dev, ds["id"], "SELECT name FROM items WHERE id = {{ id }}",
                               [{"name": "id", "type": "integer"}], name="one")

        def refuse(action: str | None) -> None:
            appliance.outside.allow_audit()
            if action is not None:
                appliance.outside.refuse_audit(action)

        async def stream() -> tuple[int, str]:
            async with dev.http.post(appliance.url + f"/api/v1/queries/{q['id']}/run",
                                     json={"params": {"id": 3}},
                                     headers={"Authorization": f"Bearer {dev.token}",
                                              "Accept": "application/x-ndjson"},
                                     ssl=appliance.ssl) as r:
                return r.status, await r.text()

        refuse("query.run")
        resp = await run(dev, q["id"], {"id": 3})
        assert resp.status == 503 and resp.code == "audit_unavailable", resp.body
        assert "Café" not in json.dumps(resp.body)

        refuse("query.run.start")
        status, text = await stream()
        assert status == 503 and "audit_unavailable" in text and "Café" not in text

        refuse("query.run")  # the start is recorded, the end is not: the stream says so
        status, text = await stream()
        lines = [json.loads(line) for line in text.splitlines()]
        assert status == 200 and lines[1] == ["Café"]
        assert lines[-1]["error"]["code"] == "audit_unavailable"

        refuse(None)
        before = appliance.audit_actions()
        status, text = await stream()
        assert status == 200 and json.loads(text.splitlines()[-1])["row_count"] == 1
        assert appliance.audit_actions()[len(before):] == ["query.run.start", "query.run"]
        assert (await run(dev, q["id"], {"id": 3})).body["rows"] == [["Café"]]
        assert appliance.audit_actions()[-1] == "query.run"
        assert appliance.query("SELECT count(*) AS n FROM audit_log WHERE action = "
                               "'query.run.start'")[0]["n"] == 2
