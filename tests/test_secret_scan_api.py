"""Secret scanning over the real API (a real appliance on an ephemeral port, a real store): a
fake key pasted into a query of any kind is refused with 422 `secret_in_query` at its place and
nothing is written; the matched text reaches no response, log line, audit entry, store row,
findings list or doctor line; only an admin allows a finding (audited, by keyed fingerprint), and
another secret at the same place is caught again; stored queries' findings are listed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.http.app_keys import CORE
from appliance.queries.secret_findings import SecretInQuery
from tests.conftest import clean_env, run_cli
from tests.support.app import Appliance, store_env
from tests.support.fake_keys import corpus
from tests.support.logs import captured_logs
from tests.support.queries import as_role, create_datasource, proxy, sqlite_database

FAKES = corpus()


async def _datasources(appliance: Appliance, tmp_path: Path) -> dict[str, str]:
    admin = as_role(appliance, "admin")
    db = sqlite_database(tmp_path / "shop.sqlite", ["CREATE TABLE t (x INTEGER)"])
    configs: dict[str, dict[str, Any]] = {
        "sqlite": {"path": str(db)},
        "postgres": {"host": "db.example", "database": "app", "user": "u"},
        "mysql": {"host": "db.example", "database": "app", "user": "u"},
        "mongodb": {"host": "m.example", "database": "app"},
        "rest": {"base_url": "https://api.example", "auth": "none"},
    }
    out = {}
    for kind, config in configs.items():
        out[kind] = (await create_datasource(admin, name=f"ds {kind}", kind=kind,
                                             config=config))["id"]
    return out


def _bodies(kind: str, text: str) -> tuple[Any, str]:
    """A query of `kind` with `text` in its body, and the place a finding must name."""
    if kind in ("sqlite", "postgres", "mysql"):
        return f"SELECT 1 AS a,\n  '{text}' AS b", "line 2"
    if kind == "rest":
        return {"method": "POST", "path": "/v1/notes", "json": {"note": text}}, "json.note"
    return {"collection": "notes", "operation": "find", "filter": {"note": text}}, "filter.note"


def _all_text(appliance: Appliance) -> str:
    rows = appliance.query("SELECT * FROM audit_log")
    return json.dumps([dict(row) for row in rows], default=str)


async def test_a_pasted_key_is_refused_in_every_kind_at_its_place(tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        datasources = await _datasources(appliance, tmp_path)
        dev = as_role(appliance, "developer")
        with captured_logs() as logs:
            for kind, datasource_id in datasources.items():
                for fake in FAKES:
                    body, place = _bodies(kind, fake.text)
                    resp = await dev.request("POST", "/api/v1/queries", {
                        "name": "pasted", "datasource_id": datasource_id, "body": body})
                    assert resp.status == 422 and resp.code == "secret_in_query", \
                        (kind, fake.rule, resp.body)
                    error = resp.body["error"]
                    assert error["field"] == "body"
                    assert fake.rule in [f["rule"] for f in error["findings"]], (kind, fake.rule)
                    finding = next(f for f in error["findings"] if f["rule"] == fake.rule)
                    assert finding["place"].startswith(place)
                    if kind in ("sqlite", "postgres", "mysql"):
                        assert error["line"] == 2 and error["column"] >= 4
                    assert error["message"].startswith(place if place.startswith("line")
                                                       else f"body {place}")
                    assert "datasource's secrets" in error["message"]
                    raw = json.dumps(resp.body)
                    assert fake.secret not in raw and fake.secret[-16:] not in raw
        assert (await dev.request("GET", "/api/v1/queries")).body["queries"] == []
        assert "query.create" not in appliance.audit_actions()
        stored, audit, logged = appliance.stored_bytes(), _all_text(appliance), logs.getvalue()
        for fake in FAKES:
            for where in (audit, logged):
                assert fake.secret not in where and fake.secret[-16:] not in where, fake.rule
            assert fake.secret[-16:].encode() not in stored, fake.rule


async def test_only_an_admin_allows_a_finding_and_a_new_secret_is_caught_again(
        tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        datasources = await _datasources(appliance, tmp_path)
        dev, admin = as_role(appliance, "developer"), as_role(appliance, "admin")
        first = "Bearer 7d0c4a1e9b2f4c3a8e6d5b4a3c2e1f0a"
        second = "Bearer 0a1f2e3c4a5b6d8e3a4c2f9b1e9a4c0d"
        query = {"name": "orders api", "datasource_id": datasources["rest"],
                 "body": {"method": "GET", "path": "/v1/orders",
                          "headers": {"Authorization": first}}}
        refused = await dev.request("POST", "/api/v1/queries", query)
        assert refused.status == 422 and refused.code == "secret_in_query"
        (finding,) = refused.body["error"]["findings"]
        assert finding["place"] == "headers.Authorization"
        assert finding["rule"] == "credential_header" and finding["hint"] == "…(32 chars)"
        allow = {**query, "allow_secret_findings": [finding["fingerprint"]]}

        by_dev = await dev.request("POST", "/api/v1/queries", allow)
        assert by_dev.status == 403 and by_dev.code == "admin_required"
        assert by_dev.body["error"]["field"] == "allow_secret_findings"
        wrong = await admin.request("POST", "/api/v1/queries",
                                    {**query, "allow_secret_findings": ["0" * 32]})
        assert wrong.status == 422 and wrong.body["error"]["field"] == "allow_secret_findings"
        bad = await admin.request("POST", "/api/v1/queries",
                                  {**query, "allow_secret_findings": "all"})
        assert bad.status == 422 and bad.body["error"]["field"] == "allow_secret_findings"
        assert (await dev.request("GET", "/api/v1/queries")).body["queries"] == []

        created = await admin.request("POST", "/api/v1/queries", allow)
        assert created.status == 201, created.body
        query_id = created.body["id"]
        entries = appliance.query("SELECT action, details FROM audit_log WHERE action = ?",
                                  ("query.secret_finding.allow",))
        assert len(entries) == 1
        details = json.loads(entries[0]["details"])
        assert details == {"rule": "credential_header", "field": "body",
                           "place": "headers.Authorization",
                           "fingerprint": finding["fingerprint"]}
        # The allowance stays with the query: a developer's other changes save.
        renamed = await dev.request("PATCH", f"/api/v1/queries/{query_id}",
                                    {"description": "orders, by the allowed header"})
        assert renamed.status == 200, renamed.body
        # Another secret at the same place is another finding.
        changed = await dev.request("PATCH", f"/api/v1/queries/{query_id}", {
            "body": {"method": "GET", "path": "/v1/orders",
                     "headers": {"Authorization": second}}})
        assert changed.status == 422 and changed.code == "secret_in_query"
        assert changed.body["error"]["findings"][0]["fingerprint"] != finding["fingerprint"]
        # ... and the same one listed as allowed
        listed = await admin.request("GET", "/api/v1/queries/secret-findings")
        assert listed.status == 200
        assert [(f["query_id"], f["place"], f["allowed"]) for f in listed.body["findings"]] == \
            [(query_id, "headers.Authorization", True)]
        assert (await dev.request("GET", "/api/v1/queries/secret-findings")).status == 403
        spec = (await dev.request("GET", "/api/v1/openapi.json")).body
        paths = spec["paths"]
        assert paths["/api/v1/queries/secret-findings"]["get"]["x-required-role"] == "admin"
        assert paths["/api/v1/queries/{id}/secret-findings/{fingerprint}/allow"]["post"][
            "x-required-role"] == "admin"
        assert "allow_secret_findings" in str(paths["/api/v1/queries"]["post"]["requestBody"])
        assert "findings" in spec["components"]["schemas"]["Error"]["properties"]["error"][
            "properties"]
        for secret in (first, second):
            token = secret.split()[1]
            assert token not in json.dumps(listed.body) and token not in _all_text(appliance)
        # The same check for a caller that saves its own way (the coming `appliance import`).
        findings = appliance.app[CORE].queries.secret_findings
        stored = {"body": query["body"], "parameters": [], "description": None}
        await findings.refuse_unallowed(appliance.app[CORE].store, query_id, "rest", stored)
        with pytest.raises(SecretInQuery):
            await findings.refuse_unallowed(appliance.app[CORE].store, None, "rest", stored)
        # Deleting the query deletes its allowances.
        assert (await dev.request("DELETE", f"/api/v1/queries/{query_id}")).status == 204
        assert appliance.query("SELECT * FROM query_secret_allowances") == []


def _insert_stored_query(appliance: Appliance, datasource_id: str, body: Any,
                         parameters: list[dict[str, Any]] | None = None) -> str:
    """A query saved before secret scanning existed (an existing installation)."""
    query_id = "q_" + format(time.time_ns() % 10**16, "016x")
    now = time.time()
    appliance.execute(
        "INSERT INTO queries (id, name, datasource_id, body, parameters, timeout_ms, max_rows, "
        "version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?)",
        (query_id, f"legacy {query_id}", datasource_id,
         json.dumps({"body": body, "description": None}), json.dumps(parameters or []), now,
         now))
    return query_id


async def test_stored_queries_findings_api_allow_and_doctor(tmp_path: Path) -> None:
    state = tmp_path / "state"
    aws = next(f for f in FAKES if f.rule == "aws_access_key_id")
    slack = next(f for f in FAKES if f.rule == "slack_token")
    async with proxy(state) as appliance:
        datasources = await _datasources(appliance, tmp_path)
        dev, admin = as_role(appliance, "developer"), as_role(appliance, "admin")
        legacy_sql = _insert_stored_query(appliance, datasources["postgres"],
                                          f"SELECT 1\n-- {aws.text}")
        legacy_rest = _insert_stored_query(
            appliance, datasources["rest"], {"method": "GET", "path": "/v1/{{ x }}"},
            [{"name": "x", "type": "string", "default": slack.text}])
        with captured_logs() as logs:
            listed = await admin.request_until(
                "GET", "/api/v1/queries/secret-findings",
                lambda r: len(r.body.get("findings", [])) == 2)
            assert listed.status == 200
            findings = {f["query_id"]: f for f in listed.body["findings"]}
            assert findings[legacy_sql]["rule"] == "aws_access_key_id"
            assert (findings[legacy_sql]["line"], findings[legacy_sql]["column"]) == (2, 4)
            assert findings[legacy_sql]["hint"] == "AKIA…(20 chars)"
            assert findings[legacy_rest]["field"] == "parameters[0].default"
            assert findings[legacy_rest]["place"] == "parameter 'x'"
            assert not any(f["allowed"] for f in findings.values())

            fingerprint = findings[legacy_sql]["fingerprint"]
            path = f"/api/v1/queries/{legacy_sql}/secret-findings/{fingerprint}/allow"
            assert (await dev.request("POST", path)).status == 403
            missing = await admin.request(
                "POST", f"/api/v1/queries/{legacy_sql}/secret-findings/{'f' * 32}/allow")
            assert missing.status == 404 and missing.code == "secret_finding_not_found"
            allowed = await admin.request("POST", path)
            assert allowed.status == 200 and allowed.body["allowed"] is True
            again = await admin.request("GET", "/api/v1/queries/secret-findings")
            assert {f["query_id"]: f["allowed"] for f in again.body["findings"]} == \
                {legacy_sql: True, legacy_rest: False}
            assert "query.secret_finding.allow" in appliance.audit_actions()
        shown = json.dumps(listed.body) + json.dumps(again.body) + logs.getvalue() + \
            _all_text(appliance)
    doctor = run_cli("doctor", "--state-dir", str(state), env=clean_env(**store_env(state)))
    for secret in (aws.secret, slack.secret):
        assert secret not in shown and secret[4:] not in shown
        assert secret not in doctor.stdout + doctor.stderr
        assert secret[4:] not in doctor.stdout + doctor.stderr
    lines = [line for line in doctor.stdout.splitlines() if "secrets in queries" in line]
    assert len(lines) == 1, doctor.stdout  # the allowed one is not reported
    assert lines[0].startswith("WARN") and f"legacy {legacy_rest}" in lines[0]
    assert "parameter 'x' default: a Slack token (xoxb-…(56 chars))" in lines[0]


async def test_an_admin_withdraws_an_allowance_and_the_finding_counts_again(
        tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        datasources = await _datasources(appliance, tmp_path)
        dev, admin = as_role(appliance, "developer"), as_role(appliance, "admin")
        header = "Bearer 7d0c4a1e9b2f4c3a8e6d5b4a3c2e1f0a"
        query = {"name": "orders api", "datasource_id": datasources["rest"],
                 "body": {"method": "GET", "path": "/v1/orders",
                          "headers": {"Authorization": header}}}
        refused = await dev.request("POST", "/api/v1/queries", query)
        (finding,) = refused.body["error"]["findings"]
        created = await admin.request("POST", "/api/v1/queries",
                                      {**query, "allow_secret_findings": [finding["fingerprint"]]})
        assert created.status == 201, created.body
        query_id = created.body["id"]
        path = f"/api/v1/queries/{query_id}/secret-findings/{finding['fingerprint']}/allow"

        # Only an admin withdraws; a fingerprint or query that names no allowance is a 404.
        assert (await dev.request("DELETE", path)).status == 403
        other = await admin.request(
            "DELETE", f"/api/v1/queries/{query_id}/secret-findings/{'f' * 32}/allow")
        assert other.status == 404 and other.code == "secret_allowance_not_found"
        nowhere = await admin.request(
            "DELETE", f"/api/v1/queries/q_nope/secret-findings/{finding['fingerprint']}/allow")
        assert nowhere.status == 404 and nowhere.code == "query_not_found"
        assert len(appliance.query("SELECT * FROM query_secret_allowances")) == 1

        withdrawn = await admin.request("DELETE", path)
        assert withdrawn.status == 200, withdrawn.body
        assert withdrawn.body == {"query_id": query_id, "query_name": "orders api",
                                  "rule": "credential_header", "field": "body",
                                  "place": "headers.Authorization",
                                  "fingerprint": finding["fingerprint"], "allowed": False}
        assert appliance.query("SELECT * FROM query_secret_allowances") == []
        [entry] = appliance.query("SELECT actor, target, details FROM audit_log WHERE action"
                                  " = 'query.secret_finding.withdraw'")
        assert entry["actor"].startswith("admin") and entry["target"] == f"query:{query_id}"
        assert json.loads(entry["details"]) == {
            "rule": "credential_header", "field": "body", "place": "headers.Authorization",
            "fingerprint": finding["fingerprint"], "allowed_by": entry["actor"]}
        assert (await admin.request("DELETE", path)).code == "secret_allowance_not_found"

        # The finding counts again: listed as not allowed, and the next save is refused.
        listed = await admin.request("GET", "/api/v1/queries/secret-findings")
        assert [(f["query_id"], f["allowed"]) for f in listed.body["findings"]] == \
            [(query_id, False)]
        renamed = await dev.request("PATCH", f"/api/v1/queries/{query_id}",
                                    {"description": "orders"})
        assert renamed.status == 422 and renamed.code == "secret_in_query"
        # Allowed again by an admin, it saves again.
        assert (await admin.request("POST", path)).status == 200
        again = await dev.request("PATCH", f"/api/v1/queries/{query_id}",
                                  {"description": "orders"})
        assert again.status == 200, again.body
        spec = (await dev.request("GET", "/api/v1/openapi.json")).body
        assert spec["paths"][
            "/api/v1/queries/{id}/secret-findings/{fingerprint}/allow"]["delete"][
            "x-required-role"] == "admin"
        assert header.split()[1] not in _all_text(appliance)
