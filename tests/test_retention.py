"""Nothing retained: runs whose parameters and rows carry canary strings leave no trace in the
state directory (every file, raw bytes), in any log line (DEBUG and up), or in the audit log."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.logs import captured_logs
from tests.support.queries import (
    as_role,
    create_datasource,
    create_query,
    proxy,
    run,
    sqlite_database,
)

PARAM_CANARY = "CANARY-param-7f3a9c"
ROW_CANARY = "CANARY-row-51bd20"


async def test_no_parameter_or_result_is_retained(tmp_path: Path) -> None:
    db = sqlite_database(tmp_path / "data.sqlite", [
        "CREATE TABLE t (id INTEGER, secret TEXT)",
        f"INSERT INTO t VALUES (1, '{ROW_CANARY}')"])
    state = tmp_path / "state"
    with captured_logs() as lines:
        async with proxy(state) as appliance:
            dev = as_role(appliance, "developer")
            viewer = as_role(appliance, "viewer")
            ds = await create_datasource(dev, name="data", kind="sqlite",
                                         config={"path": str(db)})
            q = await create_query(
                dev, ds["id"], "SELECT id, secret, {{ p }} AS echo FROM t WHERE secret <> {{ p }}",
                [{"name": "p", "type": "string"}], name="canary")
            bad = await create_query(dev, ds["id"], "SELECT CAST({{ p }} AS INTEGER) / 0, "
                                                    "abs(-9223372036854775807 - {{ n }})",
                                     [{"name": "p", "type": "string"},
                                      {"name": "n", "type": "integer"}], name="failing")
            for client in (dev, viewer):
                resp = await run(client, q["id"], {"p": PARAM_CANARY})
                assert resp.status == 200
                assert resp.body["rows"] == [[1, ROW_CANARY, PARAM_CANARY]]
                async with client.http.post(
                        appliance.url + f"/api/v1/queries/{q['id']}/run",
                        json={"params": {"p": PARAM_CANARY}},
                        headers={"Authorization": f"Bearer {client.token}",
                                 "Accept": "application/x-ndjson"}, ssl=appliance.ssl) as r:
                    assert ROW_CANARY in await r.text()
                # failures: wrong type (the value is not echoed), and a failing statement
                resp = await run(client, q["id"], {"p": [PARAM_CANARY]})
                assert resp.status == 422 and PARAM_CANARY not in str(resp.body)
                resp = await run(client, bad["id"], {"p": PARAM_CANARY, "n": 5})
                assert resp.status in (200, 422)
            audit = appliance.query("SELECT * FROM audit_log")
            runs = [row for row in audit if row["action"] == "query.run"]
            assert len(runs) == 8
            details = json.loads(runs[0]["details"])
            assert details["row_count"] == 1 and "duration_ms" in details
            assert runs[0]["target"] == f"query:{q['id']}"
            for row in audit:
                for value in dict(row).values():
                    assert PARAM_CANARY not in str(value) and ROW_CANARY not in str(value)
            # Every table as stored (the SQLite file, or a snapshot of the PostgreSQL tables).
            stored = appliance.stored_bytes()
            on_sqlite = appliance.outside.dialect == "sqlite"
    text = lines.getvalue()
    assert text.count("\n") > 10  # the log did capture the requests
    assert PARAM_CANARY not in text and ROW_CANARY not in text
    files = [p for p in state.rglob("*") if p.is_file()]
    assert not on_sqlite or any(p.name.endswith(".db") or "store" in p.name for p in files)
    for path, raw in (("the store", stored), *((p, p.read_bytes()) for p in files)):
        for canary in (PARAM_CANARY, ROW_CANARY):
            for encoded in (canary.encode(), canary.encode("utf-16-le")):
                assert encoded not in raw, (path, canary)
