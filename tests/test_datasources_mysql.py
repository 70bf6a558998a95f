"""The MySQL/MariaDB kind through the real API against the real MariaDB fixture
(tests/support/mariadb.py): the kind is listed, a datasource over verified TLS is created and
tested, a query with every kind of parameter runs as JSON and as an NDJSON stream, SQL-injection
payloads keep their meaning, the audit entry holds no value and the secret reaches no response,
log or stored byte."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.mariadb import (
    NATIVE_PASSWORD,
    TLS_PASSWORD,
    TLS_USER,
    MariaDBServer,
    mariadb,
)
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

pytest.importorskip("asyncmy")

PAYLOADS = [
    "' OR '1'='1", "'; DROP TABLE e2e_vault; --", "\" OR \"\"=\"", "1 OR 1=1", "1; SELECT 1",
    "\\'; DROP TABLE e2e_vault; -- ", "\\", "?", "/*! SELECT 1 */", "# x", "`e2e_vault`",
    "%", "_", "NULL", "{{ s }}", "0x27", "🚀' OR 1=1 -- ",
]
MARKER = "e2e-tag-51c0d8"  # a value only this file sends: looked for in the general log


@pytest.fixture(scope="module")
def maria(mariadb_server: MariaDBServer) -> MariaDBServer:
    mariadb_server.sql("""
        CREATE TABLE IF NOT EXISTS e2e_items (id INT PRIMARY KEY, name VARCHAR(50),
                                              price DECIMAL(12, 2), made DATE, active BOOLEAN,
                                              big BIGINT UNSIGNED);
        TRUNCATE e2e_items;
        INSERT INTO e2e_items VALUES
          (1, 'mug', 8.50, '2024-01-02', TRUE, 18446744073709551615),
          (2, 'pen', 1.25, '2023-12-31', FALSE, 7),
          (3, 'Café 🚀', 1234567890.99, NULL, TRUE, NULL);
        CREATE TABLE IF NOT EXISTS e2e_vault (owner VARCHAR(50), secret VARCHAR(50));
        TRUNCATE e2e_vault;
        INSERT INTO e2e_vault VALUES ('alice', 'alice-secret');
    """)
    return mariadb_server


def tls_config(server: MariaDBServer, **extra: Any) -> dict[str, Any]:
    return server.datasource_config(user=TLS_USER, tls="verify-full", **extra)


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
        config = maria.datasource_config()
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


# --- a server restart mid-load, and a long stream ----------------------------------------------


async def test_a_server_restart_mid_load_fails_cleanly_then_recovers(tmp_path: Path) -> None:
    """Runs under way and runs while the server is down fail as 502/503/504 with an error code
    naming the datasource (never a 500, never a hang); once the server is back, runs succeed
    again without restarting the appliance."""
    with mariadb(name="mariadb-restart") as server:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(dev, name="Restarting", kind="mysql",
                                         config=server.datasource_config(
                                             allow_password_without_verified_tls=True,
                                             statement_timeout_ms=5000),
                                         secrets={"password": NATIVE_PASSWORD})
            q = await create_query(dev, ds["id"], "SELECT {{ i }} AS i, SLEEP(0.02) AS s",
                                   [{"name": "i", "type": "integer"}], name="load")
            outcomes: list[tuple[str, int, str | None]] = []
            phase = "before"
            stop = asyncio.Event()

            async def worker(n: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    resp = await asyncio.wait_for(run(dev, q["id"], {"i": n * 1000 + i}), 30)
                    outcomes.append((phase, resp.status, resp.code))
                    if resp.status == 200:
                        assert resp.body["rows"] == [[n * 1000 + i, 0]], resp.body
                    else:
                        assert "'Restarting'" in resp.body["error"]["message"], resp.body
                    await asyncio.sleep(0.01)

            workers = [asyncio.create_task(worker(n)) for n in range(6)]
            try:
                await asyncio.sleep(1.0)
                phase = "down"
                await asyncio.to_thread(server.stop)  # a clean shutdown: connections closed
                await asyncio.sleep(1.5)
                phase = "starting"
                await asyncio.to_thread(server.start)
                phase = "after"
                await asyncio.sleep(3.0)
            finally:
                stop.set()
                await asyncio.gather(*workers)
        by_phase = {p: [(s, c) for q_, s, c in outcomes if q_ == p]
                    for p in ("before", "down", "starting", "after")}
        assert by_phase["before"] and all(s == 200 for s, _ in by_phase["before"])
        failures = [(s, c) for _, s, c in outcomes if s != 200]
        assert failures, "no run failed while the server was down"
        assert {s for s, _ in failures} <= {502, 503, 504}, failures
        assert {c for _, c in failures} <= {"datasource_unreachable", "datasource_error",
                                            "datasource_timeout", "pool_exhausted"}, failures
        # Recovered: after the first success past the restart, every run succeeds.
        after = by_phase["after"]
        first_ok = next(i for i, (s, _) in enumerate(after) if s == 200)
        assert len(after) - first_ok > 50 and all(s == 200 for s, _ in after[first_ok:]), after


async def test_a_million_row_stream_keeps_memory_flat(tmp_path: Path, maria: MariaDBServer
                                                      ) -> None:
    """1,000,000 rows as NDJSON through the appliance: the peak resident memory of this process
    (appliance and client together) grows by far less than the rows would take if held."""
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="Big", kind="mysql", config=maria.datasource_config(
            allow_password_without_verified_tls=True, max_rows=2_000_000,
            max_response_bytes=1 << 30), secrets={"password": NATIVE_PASSWORD})
        q = await create_query(dev, ds["id"], "SELECT seq FROM seq_1_to_1000000 LIMIT {{ n }}",
                               [{"name": "n", "type": "integer"}], name="million")

        async def stream(n: int) -> tuple[int, float]:
            lines = 0
            last = b""
            started = time.monotonic()
            async with dev.http.post(appliance.url + f"/api/v1/queries/{q['id']}/run",
                                     json={"params": {"n": n}},
                                     headers={"Authorization": f"Bearer {dev.token}",
                                              "Accept": "application/x-ndjson"},
                                     ssl=appliance.ssl) as r:
                assert r.status == 200
                async for chunk in r.content.iter_chunked(1 << 16):
                    lines += chunk.count(b"\n")
                    last = (last + chunk)[-200:]
            summary = json.loads(last.rstrip(b"\n").rsplit(b"\n", 1)[-1])
            assert summary["row_count"] == n and summary["truncated"] is False
            return lines, time.monotonic() - started

        await stream(1000)  # warm: the pool and the code paths, not the allocator's arenas
        gc.collect()
        reset_peak_rss()
        base = rss_kib("VmRSS")
        lines, seconds = await stream(1_000_000)
        grew = rss_kib("VmHWM") - base
    assert lines == 1_000_002  # the header, a million rows, the summary
    # Held as Python lists, a million one-integer rows take about 100 MB; streamed, the peak
    # moves by a few batches.
    assert grew < 40 * 1024, f"peak RSS grew by {grew} KiB in {seconds:.1f} s"


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """VmHWM back to the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")
