"""The MySQL/MariaDB kind through the real API against the real MariaDB fixture
(tests/support/mariadb.py): the kind is listed, a datasource over verified TLS is created and
tested, a query with every kind of parameter runs as JSON and as an NDJSON stream, SQL-injection
payloads keep their meaning, the audit entry holds no value and the secret reaches no response,
log or stored byte."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.mariadb import (
    DATABASE,
    NATIVE_PASSWORD,
    NATIVE_USER,
    TLS_PASSWORD,
    TLS_USER,
    MariaDBServer,
)
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

pytest.importorskip("asyncmy")

PAYLOADS = [
    "' OR '1'='1", "'; DROP TABLE e2e_vault; --", "\" OR \"\"=\"", "1 OR 1=1", "1; SELECT 1",
    "\\'; DROP TABLE e2e_vault; -- ", "\\", "?", "/*! SELECT 1 */", "# x", "`e2e_vault`",
    "%", "_", "NULL", "{{ s }}", "0x27", "🚀' OR 1=1 -- ",
]
MARKER = "e2e-marker-7f3a9c"  # a value only this file sends: looked for in the general log


@pytest.fixture(scope="module")
def maria(mariadb_server: MariaDBServer) -> MariaDBServer:
    mariadb_server.sql("""
        DROP TABLE IF EXISTS e2e_items, e2e_vault;
        CREATE TABLE e2e_items (id INT PRIMARY KEY, name VARCHAR(50), price DECIMAL(12, 2),
                                made DATE, active BOOLEAN, big BIGINT UNSIGNED);
        INSERT INTO e2e_items VALUES
          (1, 'mug', 8.50, '2024-01-02', TRUE, 18446744073709551615),
          (2, 'pen', 1.25, '2023-12-31', FALSE, 7),
          (3, 'Café 🚀', 1234567890.99, NULL, TRUE, NULL);
        CREATE TABLE e2e_vault (owner VARCHAR(50), secret VARCHAR(50));
        INSERT INTO e2e_vault VALUES ('alice', 'alice-secret');
    """)
    return mariadb_server


def tls_config(server: MariaDBServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "database": DATABASE, "user": TLS_USER,
            "tls": "verify-full", **extra}


async def ndjson(dev: Any, appliance: Any, query_id: str, params: dict[str, Any]
                 ) -> tuple[int, str, list[Any]]:
    async with dev.http.post(appliance.url + f"/api/v1/queries/{query_id}/run",
                             json={"params": params},
                             headers={"Authorization": f"Bearer {dev.token}",
                                      "Accept": "application/x-ndjson"},
                             ssl=appliance.ssl) as r:
        text = await r.text()
        return r.status, r.content_type, [json.loads(line) for line in text.splitlines()]


async def test_a_mysql_datasource_end_to_end(tmp_path: Path, maria: MariaDBServer,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    # verify-full against the fixture's test CA (the system's CAs, as OpenSSL reads them).
    monkeypatch.setenv("SSL_CERT_FILE", str(maria.ca.ca_pem))
    bodies: list[str] = []
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")

        kinds = await dev.request("GET", "/api/v1/kinds")
        assert kinds.status == 200
        mysql = next(k for k in kinds.body["kinds"] if k["name"] == "mysql")
        assert mysql["title"] == "MySQL / MariaDB" and mysql["body"] == "sql"
        assert mysql["where"] == "{host}:{port}/{database}"
        assert [f["name"] for f in mysql["fields"]][:6] == [
            "host", "port", "database", "user", "tls", "allow_password_without_verified_tls"]

        ds = await create_datasource(dev, name="Maria", kind="mysql", config=tls_config(maria),
                                     secrets={"password": TLS_PASSWORD})
        bodies.append(json.dumps(ds))
        assert ds["kind"] == "mysql" and ds["secrets"] == {"password": {"set": True}}
        tested = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
        bodies.append(json.dumps(tested.body))
        assert tested.status == 200, tested.body
        got = await dev.request("GET", f"/api/v1/datasources/{ds['id']}")
        bodies.append(json.dumps(got.body))
        assert got.status == 200 and got.body["config"]["tls"] == "verify-full"
        listed = await dev.request("GET", "/api/v1/datasources")
        bodies.append(json.dumps(listed.body))

        q = await create_query(
            dev, ds["id"],
            "SELECT id, name, price, made, active, big FROM {{ t }}\n"
            "WHERE id IN ({{ ids }}) AND name <> {{ not_name }} AND (made >= {{ since }} OR "
            "made IS NULL)\n  AND active IN ({{ flag }}, TRUE) AND id < {{ below }}\nORDER BY id",
            [{"name": "t", "type": "identifier", "choices": ["e2e_items", "e2e_vault"]},
             {"name": "ids", "type": "array<integer>"},
             {"name": "not_name", "type": "string"},
             {"name": "since", "type": "date"},
             {"name": "flag", "type": "boolean"},
             {"name": "below", "type": "integer", "required": False, "default": 100}],
            name="items")
        bodies.append(json.dumps(q))
        params = {"t": "e2e_items", "ids": [1, 2, 3], "not_name": MARKER, "since": "2024-01-01",
                  "flag": False}
        resp = await run(dev, q["id"], params)
        bodies.append(json.dumps(resp.body))
        assert resp.status == 200, resp.body
        assert resp.body["columns"] == ["id", "name", "price", "made", "active", "big"]
        # DECIMAL exact as a string, DATE ISO, BOOLEAN is TINYINT, unsigned BIGINT past 2^53 a
        # string; pen (made 2023) is out by the date.
        assert resp.body["rows"] == [[1, "mug", "8.50", "2024-01-02", 1, "18446744073709551615"],
                                     [3, "Café 🚀", "1234567890.99", None, 1, None]]
        assert resp.body["row_count"] == 2 and resp.body["truncated"] is False
        assert (await run(dev, q["id"], {**params, "ids": []})).body["rows"] == []
        # Refused values: 422 naming the parameter, never quoting the value.
        for bad in ({**params, "ids": ["1"]}, {**params, "t": "mysql.user"},
                    {**params, "since": MARKER}, {**params, "extra": 1}):
            refused = await run(dev, q["id"], bad)
            bodies.append(json.dumps(refused.body))
            assert refused.status == 422 and refused.code == "invalid_parameter", refused.body
            assert MARKER not in json.dumps(refused.body)

        # NDJSON: the header line, one line per row, the summary last.
        status, content_type, lines = await ndjson(dev, appliance, q["id"], params)
        bodies.append(json.dumps(lines))
        assert status == 200 and content_type == "application/x-ndjson"
        assert lines[0] == {"columns": ["id", "name", "price", "made", "active", "big"]}
        assert lines[1:3] == resp.body["rows"]
        assert lines[3]["row_count"] == 2 and lines[3]["truncated"] is False
        # A viewer runs it too, and sees nothing of the datasource.
        assert (await run(viewer, q["id"], params)).body["rows"] == resp.body["rows"]
        assert (await viewer.request("GET", f"/api/v1/datasources/{ds['id']}")).status == 403

        # Injection payloads through a string parameter come back as they went in, and leave
        # the table alone.
        echo = await create_query(dev, ds["id"], "SELECT {{ s }} AS s, CHAR_LENGTH({{ s }}) AS n",
                                  [{"name": "s", "type": "string"}], name="echo")
        for payload in PAYLOADS:
            echoed = await run(dev, echo["id"], {"s": payload})
            assert echoed.status == 200, (payload, echoed.body)
            assert echoed.body["rows"] == [[payload, len(payload)]], payload
        assert maria.sql("SELECT COUNT(*) FROM e2e_vault").strip() == "1"

        # A bad body is refused at save time with its line and column.
        inside = await dev.request("POST", "/api/v1/queries", {
            "name": "inside", "datasource_id": ds["id"], "parameters": [{"name": "s",
                                                                         "type": "string"}],
            "body": "SELECT 1\nFROM e2e_items WHERE name = '{{ s }}'"})
        assert inside.status == 422 and inside.code == "invalid_query"
        assert (inside.body["error"]["line"], inside.body["error"]["column"]) == (2, 30)
        executable = await dev.request("POST", "/api/v1/queries", {
            "name": "exec", "datasource_id": ds["id"], "body": "SELECT 1 /*! , 2 */"})
        assert executable.status == 422 and executable.code == "invalid_query"

        # Read only by default: a write fails on the server, and says so without the value.
        write = await create_query(dev, ds["id"], "INSERT INTO e2e_vault VALUES ({{ o }}, 'x')",
                                   [{"name": "o", "type": "string"}], name="write")
        refused = await run(dev, write["id"], {"o": MARKER})
        bodies.append(json.dumps(refused.body))
        assert refused.status == 422 and refused.code == "query_failed", refused.body
        assert MARKER not in json.dumps(refused.body)
        assert maria.sql("SELECT COUNT(*) FROM e2e_vault").strip() == "1"

        # Each run's audit entry: which query, which datasource, the outcome; no value.
        entries = appliance.query("SELECT target, outcome, details FROM audit_log "
                                  "WHERE action = 'query.run' ORDER BY seq")
        assert entries, "no query.run entry"
        assert {e["outcome"] for e in entries} == {"ok", "failed"}, entries
        for entry in entries:
            assert json.loads(entry["details"])["datasource"] == ds["id"]
        audit_text = json.dumps(appliance.query("SELECT * FROM audit_log"))
        for value in (MARKER, "2024-01-01", "alice-secret", TLS_PASSWORD, *PAYLOADS[:3]):
            assert value not in audit_text, value
        stored = appliance.stored_bytes()
        assert TLS_PASSWORD.encode() not in stored

        # A wrong password: 502, naming the datasource, never the secret.
        wrong = await create_datasource(dev, name="Maria wrong", kind="mysql",
                                        config=tls_config(maria),
                                        secrets={"password": "Wr0ng-" + TLS_PASSWORD})
        wq = await create_query(dev, wrong["id"], "SELECT 1", name="wrong")
        failed = await run(dev, wq["id"])
        bodies.append(json.dumps(failed.body))
        assert failed.status == 502 and failed.code == "datasource_auth_failed", failed.body

    for body in bodies:
        assert TLS_PASSWORD not in body and "Wr0ng-" not in body
    assert TLS_PASSWORD not in caplog.text and "Wr0ng-" not in caplog.text
    assert MARKER not in caplog.text
    # The values travelled as prepared-statement values: the server's general log has no
    # `Query` carrying one (MariaDB writes the values into its own `Execute` lines).
    carrying = [(command, text) for command, text in log_entries(maria) if MARKER in text]
    assert carrying, "the marker never reached the server"
    assert {command for command, _ in carrying} == {"Execute"}, carrying


def log_entries(server: MariaDBServer) -> list[tuple[str, str]]:
    """(command, whole argument) of every general-log entry, a statement's later lines kept."""
    head = re.compile(r"^(?:\d{6}\s+[\d:]+\s+)?\s*\d+\s+(\w[\w ]*?)\t(.*)$")
    entries: list[tuple[str, str]] = []
    for line in server.general_log_lines():
        m = head.match(line)
        if m:
            entries.append((m.group(1).strip(), m.group(2)))
        elif entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + "\n" + line)
    return entries


async def test_the_password_is_never_sent_without_verified_tls_unless_allowed(
        tmp_path: Path, maria: MariaDBServer) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        config = {"host": "127.0.0.1", "port": maria.port, "database": DATABASE,
                  "user": NATIVE_USER, "tls": "disable"}
        plain = await create_datasource(dev, name="plain", kind="mysql", config=config,
                                        secrets={"password": NATIVE_PASSWORD})
        q = await create_query(dev, plain["id"], "SELECT 1 AS one", name="one")
        refused = await run(dev, q["id"])
        assert refused.status == 502 and refused.code == "auth_method_refused", refused.body
        assert "allow_password_without_verified_tls" in refused.body["error"]["message"]
        # Allowing it is a change of destination: the secret must be given again.
        patched = await dev.request("PATCH", f"/api/v1/datasources/{plain['id']}",
                                    {"config": {**config,
                                                "allow_password_without_verified_tls": True}})
        assert patched.status == 409 and patched.code == "secrets_required", patched.body
        patched = await dev.request("PATCH", f"/api/v1/datasources/{plain['id']}",
                                    {"config": {**config,
                                                "allow_password_without_verified_tls": True},
                                     "secrets": {"password": NATIVE_PASSWORD}})
        assert patched.status == 200, patched.body
        ok = await run(dev, q["id"])
        assert ok.status == 200 and ok.body["rows"] == [[1]], ok.body
