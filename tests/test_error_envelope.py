"""The error envelope through the real API: `{"error": {"code", "message", "field"?, "line"?,
"column"?}}`. Each kind of error names its input (a datasource's config key or secret, a query's
body with line and column, a declaration, a run parameter as developer and as viewer, the 409
secrets_required), hostile input gets a field that names no value and no made-up key, and an error
about nothing in particular carries no field at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ApplianceError
from appliance.http.query_routes import for_viewer
from tests.conftest import PG_PASSWORD, PostgresServer
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

SECRET_VALUE = "hunter2-do-not-echo-7f3a"
HOSTILE_KEY = "<img src=x onerror=alert(1)>"
SQL = "SELECT id\nFROM orders\nWHERE customer = '{{ customer }}'"


def error_of(resp: Any) -> dict[str, Any]:
    assert isinstance(resp.body, dict) and isinstance(resp.body.get("error"), dict), resp.body
    error = resp.body["error"]
    assert set(error) <= {"code", "message", "field", "line", "column"}, error
    return error


def pg_config(pg: PostgresServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
            "tls": "disable", **extra}


@pytest.mark.parametrize(("body", "field", "in_message"), [
    ({"name": "pg", "kind": "postgres", "config": {"host": "127.0.0.1", "port": "5432",
                                                   "database": "d", "user": "u"}},
     "config.port", "config.port"),
    ({"name": "pg", "kind": "postgres", "config": {"host": "bad host!", "database": "d",
                                                   "user": "u"}},
     "config.host", "config.host"),
    ({"name": "pg", "kind": "postgres", "config": {"host": "h", "database": "d", "user": "u",
                                                   "max_rows": 0}},
     "config.max_rows", "config.max_rows"),
    ({"name": "api", "kind": "rest", "config": {"base_url": "ftp://example.com"}},
     "config.base_url", "config.base_url"),
    ({"name": "pg", "kind": "postgres", "config": {"host": "h", "database": "d", "user": "u",
                                                   HOSTILE_KEY: 1}},
     "config", "unknown key"),
    ({"name": "pg", "kind": "postgres", "config": "host=h"}, "config", "'config'"),
    ({"name": "<b>", "kind": "sqlite", "config": {"path": "/tmp/x.db"}}, "name", "'name'"),
    ({"name": "x", "kind": "oracle", "config": {}}, "kind", "'kind'"),
    ({"name": "api", "kind": "rest", "config": {"base_url": "https://example.com",
                                                "auth": "bearer"}},
     "secrets.token", "secrets.token"),
    ({"name": "pg", "kind": "postgres", "config": {"host": "h", "database": "d", "user": "u"},
      "secrets": {"password": SECRET_VALUE + "\r\nX: 1"}},
     "secrets.password", "secrets.password"),
    ({"name": "pg", "kind": "postgres", "config": {"host": "h", "database": "d", "user": "u"},
      "secrets": {"password": SECRET_VALUE * 1000}},
     "secrets.password", "8192"),
    ({"name": "pg", "kind": "postgres", "config": {"host": "h", "database": "d", "user": "u"},
      "secrets": {HOSTILE_KEY: SECRET_VALUE}},
     "secrets", "take these secrets"),
])
async def test_a_datasource_error_names_its_config_key_or_secret(
        tmp_path: Path, body: dict[str, Any], field: str, in_message: str) -> None:
    async with proxy(tmp_path / "state") as appliance:
        resp = await as_role(appliance, "developer").request("POST", "/api/v1/datasources", body)
    assert resp.status == 422, resp.body
    error = error_of(resp)
    assert error["code"] == "invalid_datasource"
    assert error["field"] == field and in_message in error["message"], error
    assert "line" not in error and "column" not in error
    # The secret never comes back; a made-up key is never a field (the message may quote it,
    # as it did before: a key the caller sent, not a value).
    assert SECRET_VALUE not in str(resp.body) and HOSTILE_KEY not in error["field"]


async def test_a_moved_destination_is_409_naming_the_secret_to_enter_again(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="pg", kind="postgres",
                                     config=pg_config(postgres_server),
                                     secrets={"password": PG_PASSWORD})
        moved = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                  {"config": {"port": postgres_server.port + 1}})
        taken = await dev.request("POST", "/api/v1/datasources", {
            "name": "pg", "kind": "postgres", "config": pg_config(postgres_server)})
    assert moved.status == 409, moved.body
    error = error_of(moved)
    assert error["code"] == "secrets_required" and error["field"] == "secrets.password", error
    assert "config.port" in error["message"]  # the message still names what moved
    assert PG_PASSWORD not in str(moved.body)
    assert taken.status == 409 and error_of(taken)["field"] == "name", taken.body


async def test_a_sql_body_error_has_field_body_line_and_column(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="pg", kind="postgres",
                                     config=pg_config(postgres_server),
                                     secrets={"password": PG_PASSWORD})
        params = [{"name": "customer", "type": "string"}]
        literal = await dev.request("POST", "/api/v1/queries", {
            "name": "q", "datasource_id": ds["id"], "body": SQL, "parameters": params})
        undeclared = await dev.request("POST", "/api/v1/queries", {
            "name": "q", "datasource_id": ds["id"], "body": "SELECT 1,\n  {{ nope }}",
            "parameters": []})
        empty = await dev.request("POST", "/api/v1/queries", {
            "name": "q", "datasource_id": ds["id"], "body": "  -- nothing\n", "parameters": []})
    error = error_of(literal)
    assert literal.status == 422 and error["code"] == "invalid_query"
    column = SQL.splitlines()[2].index("{{") + 1
    assert (error["field"], error["line"], error["column"]) == ("body", 3, column), error
    # The message keeps its wording (the place first, then the problem and the fix).
    assert error["message"].startswith(f"line 3, column {column}: a binding inside a string")
    error = error_of(undeclared)
    assert (error["field"], error["line"], error["column"]) == ("body", 2, 3), error
    error = error_of(empty)
    assert error["field"] == "body" and "line" not in error, error


@pytest.mark.parametrize(("parameters", "body", "field"), [
    ([{"name": "a", "type": "string"}, {"name": "b", "type": "text"}],
     "SELECT {{ a }}, {{ b }}", "parameters[1].type"),
    ([{"name": "a", "type": "string"}, {"name": "b", "type": "string"}],
     "SELECT {{ a }}", "parameters[1]"),
    ([{"name": "a", "type": "string"}, {"name": "a", "type": "string"}],
     "SELECT {{ a }}", "parameters[1].name"),
    ([{"name": "1bad", "type": "string"}], "SELECT 1", "parameters[0].name"),
    ([{"name": "a", "type": "integer", "default": "x"}], "SELECT {{ a }}", "parameters[0].default"),
    ([{"name": "a", "type": "identifier"}], "SELECT {{ a }}", "parameters[0].choices"),
    ([{"name": "a", "type": "string", HOSTILE_KEY: 1}], "SELECT {{ a }}", "parameters[0]"),
    ("a", "SELECT 1", "parameters"),
])
async def test_a_declaration_error_names_the_declaration(
        tmp_path: Path, parameters: Any, body: str, field: str) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="lite", kind="sqlite",
                                     config={"path": str(tmp_path / "x.db")})
        resp = await dev.request("POST", "/api/v1/queries", {
            "name": "q", "datasource_id": ds["id"], "body": body, "parameters": parameters})
    assert resp.status == 422, resp.body
    error = error_of(resp)
    assert error["code"] == "invalid_query" and error["field"] == field, error
    assert "line" not in error and HOSTILE_KEY not in error["field"]


@pytest.mark.parametrize(("change", "field"), [
    ({"name": "bad/name"}, "name"),
    ({"timeout_ms": 0}, "timeout_ms"),
    ({"max_rows": "10"}, "max_rows"),
    ({"description": 5}, "description"),
    ({"datasource_id": "ds_nothere"}, "datasource_id"),
    ({"datasource_id": 5}, "datasource_id"),
    ({"body": {"method": "GET"}}, "body"),
])
async def test_a_query_field_error_names_the_field(tmp_path: Path, change: dict[str, Any],
                                                   field: str) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="lite", kind="sqlite",
                                     config={"path": str(tmp_path / "x.db")})
        resp = await dev.request("POST", "/api/v1/queries", {
            "name": "q", "datasource_id": ds["id"], "body": "SELECT 1", **change})
    assert resp.status == 422, resp.body
    error = error_of(resp)
    assert error["field"] == field and "line" not in error, error


async def test_rest_and_mongodb_body_errors_are_field_body_without_a_position(
        tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        rest = await create_datasource(dev, name="api", kind="rest",
                                       config={"base_url": "http://127.0.0.1:9"})
        mongo = await create_datasource(dev, name="m", kind="mongodb", config={
            "host": "127.0.0.1", "port": 9, "database": "d", "tls": "disable"})
        bad_rest = await dev.request("POST", "/api/v1/queries", {
            "name": "r", "datasource_id": rest["id"],
            "body": {"path": "/x/{{ id", "headers": {"Host": "evil"}}})
        bad_mongo = await dev.request("POST", "/api/v1/queries", {
            "name": "m", "datasource_id": mongo["id"],
            "body": {"collection": "c", "operation": "find", "filter": {"$where": "1"}}})
    for resp in (bad_rest, bad_mongo):
        assert resp.status == 422, resp.body
        error = error_of(resp)
        assert error["field"] == "body" and "line" not in error and "column" not in error, error


async def test_a_run_error_names_the_parameter_for_developer_and_viewer(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="pg", kind="postgres",
                                     config=pg_config(postgres_server),
                                     secrets={"password": PG_PASSWORD})
        query = await create_query(dev, ds["id"], "SELECT {{ n }}::int AS n, {{ s }}::text AS s",
                                   [{"name": "n", "type": "integer"},
                                    {"name": "s", "type": "string", "default": "x"}])
        answers = {}
        for role, client in (("developer", dev), ("viewer", viewer)):
            answers[role, "type"] = await run(client, query["id"], {"n": SECRET_VALUE})
            answers[role, "missing"] = await run(client, query["id"], {})
            answers[role, "unknown"] = await run(client, query["id"],
                                                 {"n": 1, "zzz": SECRET_VALUE})
            answers[role, "ndjson"] = await client.request(
                "POST", f"/api/v1/queries/{query['id']}/run", {"params": {"n": 1.5}},
                headers={"Accept": "application/x-ndjson"})
            answers[role, "ok"] = await run(client, query["id"], {"n": 7})
    for role in ("developer", "viewer"):
        for case, field in (("type", "param.n"), ("missing", "param.n"), ("unknown", "params"),
                            ("ndjson", "param.n")):
            resp = answers[role, case]
            assert resp.status == 422, (role, case, resp.body)
            error = error_of(resp)
            assert error["code"] == "invalid_parameter" and error["field"] == field, (role, error)
            assert "line" not in error and "column" not in error
            assert SECRET_VALUE not in str(resp.body)
        assert answers[role, "ok"].status == 200 and answers[role, "ok"].body["rows"] == [[7, "x"]]


def test_a_viewer_never_gets_a_place_in_the_body_even_on_a_visible_code() -> None:
    """The rule as a mechanism: whatever raised it, a viewer's error keeps at most a field that
    names a run parameter (or the run's values), never a body field, line or column."""
    placed = ApplianceError("the problem", code="invalid_parameter", field="body", line=3,
                            column=7)
    placed.status = 422
    safe = for_viewer(placed)
    assert (safe.field, safe.line, safe.column) == (None, None, None)
    assert (safe.status, safe.code, safe.message) == (422, "invalid_parameter", "the problem")
    named = ApplianceError("parameter 'n' is required", code="invalid_parameter",
                           field="param.n")
    assert for_viewer(named) is named
    hidden = ApplianceError("line 1, column 2: no", code="invalid_query", field="body", line=1,
                            column=2)
    hidden.status = 422
    safe = for_viewer(hidden)
    assert (safe.field, safe.line, safe.column) == (None, None, None)
    assert "line" not in safe.message


async def test_errors_about_no_one_input_carry_no_field(tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        missing = await dev.request("GET", "/api/v1/queries/q_0000000000000000")
        nopath = await dev.request("GET", "/api/v1/nothing-here")
        unknown = await dev.request("POST", "/api/v1/datasources", {"name": "x", HOSTILE_KEY: 1})
        malformed = await dev.request("POST", "/api/v1/queries", raw_body=b"{not json",
                                      headers={"Content-Type": "application/json"})
    for resp in (missing, nopath, unknown, malformed):
        error = error_of(resp)
        assert set(error) == {"code", "message"}, error


async def test_users_and_egress_errors_name_their_field(tmp_path: Path) -> None:
    """The console places these by `field` (it no longer reads messages)."""
    async with proxy(tmp_path / "state") as appliance:
        admin = as_role(appliance, "admin")
        short = await admin.request("POST", "/api/v1/users", {
            "username": "newbie", "role": "viewer", "password": "short"})
        name = await admin.request("POST", "/api/v1/users", {
            "username": "-bad", "role": "viewer", "password": "long-enough-password"})
        role = await admin.request("POST", "/api/v1/users", {
            "username": "newbie", "role": "root", "password": "long-enough-password"})
        deny = await admin.request("PUT", "/api/v1/egress", {"deny": ["not a rule !!"]})
        probe = await admin.request("POST", "/api/v1/egress/probe", {"host": "", "port": 5432})
    assert error_of(short)["field"] == "password" and "12 characters" in short.body["error"][
        "message"]
    assert error_of(name)["field"] == "username"
    assert error_of(role)["field"] == "role"
    assert error_of(deny)["field"] == "deny"
    assert error_of(probe)["field"] == "host"
