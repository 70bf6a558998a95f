"""A run as CSV (`Accept: text/csv`) over the real API against real SQLite files: RFC 4180 (CRLF,
quotes doubled, a header row), values written as the JSON result writes them, formulas defused,
a safe download name, a big result streamed with back-pressure, and a failure after the first
bytes seen by the client as an incomplete transfer, never as a whole-looking file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.http.query_routes import negotiate
from appliance.queries import result_csv
from tests.support.app import Appliance, Client
from tests.support.queries import as_role, create_datasource, create_query, proxy, sqlite_database


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return sqlite_database(tmp_path / "shop.sqlite", [
        "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT, note TEXT, price REAL, raw BLOB)",
        "INSERT INTO items VALUES "
        "(1, '0042', 'plain', 8.5, NULL), "
        "(2, '0007', 'say \"hi\", then go', -2.0, x'00ff'), "
        "(3, '-12.50', 'two' || char(13, 10) || 'lines', 1e300, NULL), "
        "(4, '=HYPERLINK(\"http://x\")', '+1+2', 0.1, NULL), "
        "(5, '@SUM(A1)', char(9) || 'tab', 3, NULL), "
        "(6, '-1+2', '', NULL, NULL)",
    ])


async def csv_run(appliance: Appliance, client: Client, query_id: str,
                  params: dict[str, Any] | None = None, accept: str = "text/csv"
                  ) -> tuple[int, dict[str, str], bytes]:
    async with client.http.post(appliance.url + f"/api/v1/queries/{query_id}/run",
                                json={"params": params or {}},
                                headers={"Authorization": f"Bearer {client.token}",
                                         "Accept": accept},
                                ssl=appliance.ssl) as r:
        return r.status, dict(r.headers), await r.read()


async def test_csv_is_rfc4180_with_the_json_results_values(tmp_path: Path, db: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="shop", kind="sqlite", config={"path": str(db)})
        q = await create_query(dev, ds["id"],
                               "SELECT id, sku, note, price, raw, id > 3 AS late, "
                               "json_array(id, sku) AS pair FROM items ORDER BY id",
                               name="Q1 orders")
        as_json = await viewer.request("POST", f"/api/v1/queries/{q['id']}/run", {"params": {}})
        assert as_json.status == 200, as_json.body
        status, headers, body = await csv_run(appliance, viewer, q["id"])
        assert status == 200, body
        assert headers["Content-Type"] == "text/csv; charset=utf-8"
        # A name that no browser or shell reads as more than one file name.
        assert headers["Content-Disposition"] == 'attachment; filename="Q1 orders.csv"'
        assert headers["X-Appliance-Row-Limit"] == "10000"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        text = body.decode()
        lines = text.split("\r\n")
        assert lines[0] == "id,sku,note,price,raw,late,pair"
        assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
        # The exact bytes of a few rows: quotes doubled, a CRLF inside a value kept quoted.
        assert lines[1] == '1,0042,plain,8.5,,0,"[1,""0042""]"'
        assert lines[2] == '2,0007,"say ""hi"", then go",-2.0,AP8=,0,"[2,""0007""]"'
        assert '3,-12.50,"two\r\nlines",1e+300,,0' in text
        parsed = list(csv.reader(io.StringIO(text, newline="")))
        assert parsed[0] == as_json.body["columns"]
        assert len(parsed) == 1 + len(as_json.body["rows"])
        for row, values in zip(parsed[1:], as_json.body["rows"], strict=True):
            for cell, value in zip(row, values, strict=True):
                if isinstance(value, str) and value and value[0] in "=+-@\t\r" and value not in (
                        "-12.50",):
                    assert cell == "'" + value  # defused, the rest unchanged
                elif isinstance(value, str):
                    assert cell == value
                elif value is None:
                    assert cell == ""
                else:
                    assert cell == json.dumps(value, separators=(",", ":"))
        # Formula starts get an apostrophe; a number written as text does not.
        by_id = {row[0]: row for row in parsed[1:]}
        assert by_id["4"][1] == "'=HYPERLINK(\"http://x\")" and by_id["4"][2] == "'+1+2"
        assert by_id["5"][1] == "'@SUM(A1)" and by_id["5"][2] == "'\ttab"
        assert by_id["6"][1] == "'-1+2"
        assert by_id["3"][1] == "-12.50"
        # null is an empty cell; an empty string a quoted empty cell.
        assert [line for line in lines if line.startswith("6,")] == ["6,'-1+2,\"\",,,1,\"[6,\"\"-1+2\"\"]\""]

        # Accept negotiation: the highest q among JSON, NDJSON and CSV; JSON by default.
        status, headers, _ = await csv_run(appliance, viewer, q["id"],
                                           accept="application/json;q=0.5, text/csv")
        assert headers["Content-Type"].startswith("text/csv")
        status, headers, _ = await csv_run(appliance, viewer, q["id"],
                                           accept="text/csv;q=0.2, application/json")
        assert headers["Content-Type"].startswith("application/json")

        # One run, one outcome entry: its mode is csv; no value reaches the audit log.
        row = appliance.query("SELECT details FROM audit_log WHERE action = 'query.run' "
                              "ORDER BY seq DESC LIMIT 1")[0]
        assert json.loads(row["details"])["mode"] in ("json", "csv")
        csv_entries = [json.loads(r["details"]) for r in appliance.query(
            "SELECT details FROM audit_log WHERE action = 'query.run'")
            if json.loads(r["details"])["mode"] == "csv"]
        assert len(csv_entries) == 2 and csv_entries[0]["row_count"] == 6
        assert "HYPERLINK" not in str(appliance.query("SELECT details FROM audit_log"))


async def test_csv_errors_before_the_first_byte_are_json(tmp_path: Path, db: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="shop", kind="sqlite", config={"path": str(db)})
        q = await create_query(dev, ds["id"], "SELECT id FROM items WHERE id = {{ id }}",
                               [{"name": "id", "type": "integer"}], name="one")
        status, headers, body = await csv_run(appliance, viewer, q["id"], {"id": "x"})
        assert status == 422 and headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["error"]["field"] == "param.id"
        status, _, body = await csv_run(appliance, viewer, "q_nope")
        assert status == 404 and json.loads(body)["error"]["code"] == "query_not_found"


async def test_a_failure_after_the_first_bytes_is_an_incomplete_transfer(
        tmp_path: Path, db: Path) -> None:
    """The run's outcome entry cannot be written once the rows were sent: a CSV has no place for
    an error, so the client must not get a file that looks whole."""
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="shop", kind="sqlite", config={"path": str(db)})
        q = await create_query(dev, ds["id"], "SELECT id, sku FROM items ORDER BY id", name="all")
        appliance.outside.refuse_audit("query.run")
        with pytest.raises(aiohttp.ClientPayloadError):
            await csv_run(appliance, dev, q["id"])
        appliance.outside.allow_audit()
        status, _, body = await csv_run(appliance, dev, q["id"])
        assert status == 200 and body.count(b"\r\n") == 7
        outcomes = [r["outcome"] for r in appliance.query(
            "SELECT outcome FROM audit_log WHERE action = 'query.run' ORDER BY seq")]
        assert outcomes == ["ok"]  # the refused entry never existed; the start entries did
        assert appliance.audit_actions().count("query.run.start") == 2

        # A statement that fails after many rows were sent (SQLite's integer overflow at row
        # 5000): the same incomplete transfer, and the run is recorded as failed.
        failing = await create_query(dev, ds["id"],
                                     "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                                     "FROM n WHERE i < 9000) SELECT i, CASE WHEN i = 5000 "
                                     "THEN abs(-9223372036854775807 - 1) ELSE i END AS v FROM n",
                                     name="fails late")
        with pytest.raises(aiohttp.ClientPayloadError):
            await csv_run(appliance, dev, failing["id"])
        last = appliance.query("SELECT outcome, details FROM audit_log "
                               "WHERE action = 'query.run' ORDER BY seq DESC LIMIT 1")[0]
        assert last["outcome"] == "failed"
        assert json.loads(last["details"])["mode"] == "csv"


async def test_a_big_result_streams_with_back_pressure(tmp_path: Path) -> None:
    db = sqlite_database(tmp_path / "big.sqlite", ["CREATE TABLE t (x INTEGER)"])
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="big", kind="sqlite",
                                     config={"path": str(db), "max_rows": 1_000_000,
                                             "max_response_bytes": 256 * 1024 * 1024})
        q = await create_query(dev, ds["id"],
                               "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                               "WHERE i < 400000) SELECT i, printf('row-%08d-%s', i, "
                               "hex(randomblob(8))) AS label FROM n", name="big")
        async with dev.http.post(appliance.url + f"/api/v1/queries/{q['id']}/run",
                                 json={"params": {}},
                                 headers={"Authorization": f"Bearer {dev.token}",
                                          "Accept": "text/csv"},
                                 ssl=appliance.ssl) as r:
            assert r.status == 200
            assert "Content-Length" not in r.headers  # streamed (chunked), not buffered
            first = b""
            while len(first) < 64 * 1024:
                first += await r.content.read(64 * 1024 - len(first))
            assert first.startswith(b"i,label\r\n1,row-00000001-")
            # The client stops reading: the server cannot finish (about 15 MB stays unsent).
            await asyncio.sleep(1.0)
            assert appliance.audit_actions()[-1] == "query.run.start"
            rest = await r.read()
        lines = (first + rest).split(b"\r\n")
        assert len(lines) == 400_002 and lines[-1] == b""
        assert lines[400_000].startswith(b"400000,row-00400000-")
        assert appliance.audit_actions()[-1] == "query.run"


def test_negotiate_and_filename_units() -> None:
    assert negotiate("") == "application/json"
    assert negotiate("*/*") == "application/json"
    assert negotiate("text/csv") == "text/csv"
    assert negotiate("text/html, text/csv;q=0.9") == "text/csv"
    assert negotiate("text/csv;q=0, application/x-ndjson") == "application/x-ndjson"
    assert negotiate("text/csv;q=bad") == "application/json"
    assert result_csv.filename("...") == "result.csv"
    assert result_csv.filename("a/../b\r\nc\"d") == "a_.._b_c_d.csv"
    assert result_csv.filename("x" * 300) == "x" * 100 + ".csv"
    assert result_csv.cell("-5") == "-5" and result_csv.cell("-5x") == "'-5x"
    assert result_csv.cell("\rx") == "\"'\rx\""
