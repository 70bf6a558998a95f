"""Numbers a run cannot take, sent as raw JSON through the real API to queries of every kind:
`1e400` (which JSON parsers read as infinity), NaN and Infinity (not JSON), and integers past 64
bits are refused with the parameter named, and never run with the default instead."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import Appliance, Client
from tests.support.queries import as_role, create_datasource, create_query, proxy, sqlite_database

PARAMETERS = [{"name": "n", "type": "number", "default": 1},
              {"name": "i", "type": "integer", "default": 1},
              {"name": "ns", "type": "array<number>", "default": [1]},
              {"name": "j", "type": "json", "default": 1}]
# (raw value of one parameter, the status, the words of the refusal)
CASES = [
    ('{"n": 1e400}', 422, "parameter 'n' must be a finite number"),
    ('{"n": -1e400}', 422, "parameter 'n' must be a finite number"),
    ('{"i": 1e400}', 422, "parameter 'i' must be an integer"),
    ('{"ns": [1, 1e400]}', 422, "parameter 'ns'"),
    ('{"j": {"a": 1e400}}', 422, "parameter 'j' contains a number that is not finite"),
    ('{"n": 100000000000000000000000000000}', 422, "parameter 'n' is outside the 64-bit"),
    ('{"i": 9223372036854775808}', 422, "parameter 'i' is outside the 64-bit integer range"),
    ('{"i": -9223372036854775809}', 422, "parameter 'i' is outside the 64-bit integer range"),
    ('{"j": [18446744073709551616]}', 422, "parameter 'j' contains an integer outside"),
    ('{"n": NaN}', 400, "not valid JSON"),
    ('{"n": Infinity}', 400, "not valid JSON"),
    ('{"n": -Infinity}', 400, "not valid JSON"),
]


async def raw_run(appliance: Appliance, client: Client, query_id: str, params: str) -> Any:
    return await client.request("POST", f"/api/v1/queries/{query_id}/run",
                                raw_body=b'{"params": ' + params.encode() + b"}",
                                headers={"Content-Type": "application/json"})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind", ["sqlite", "rest", "mongodb", "postgres", "mysql"])
async def test_unusable_numbers_are_refused_for_every_kind(tmp_path: Path, kind: str) -> None:
    port = closed_port()  # nothing runs: every refusal comes before a connection
    configs: dict[str, tuple[dict[str, Any], Any]] = {
        "sqlite": ({"path": str(sqlite_database(tmp_path / "n.db", ["CREATE TABLE t (x)"]))},
                   "SELECT {{ n }}, {{ i }}, {{ j }} WHERE 1 IN ({{ ns }})"),
        "rest": ({"base_url": f"http://127.0.0.1:{port}"},
                 {"method": "POST", "path": "/x",
                  "json": {"n": "{{ n }}", "i": "{{ i }}", "ns": "{{ ns }}", "j": "{{ j }}"}}),
        "mongodb": ({"host": "127.0.0.1", "port": port, "database": "d", "tls": "disable"},
                    {"collection": "c", "operation": "find",
                     "filter": {"n": "{{ n }}", "i": "{{ i }}", "ns": {"$in": "{{ ns }}"},
                                "j": "{{ j }}"}}),
        "postgres": ({"host": "127.0.0.1", "port": port, "database": "d", "user": "u",
                      "tls": "disable"},
                     "SELECT {{ n }}, {{ i }}, {{ j }} WHERE 1 = ANY({{ ns }})"),
        "mysql": ({"host": "127.0.0.1", "port": port, "database": "d", "user": "u",
                   "tls": "disable"},
                  "SELECT {{ n }}, {{ i }}, {{ j }} FROM dual WHERE 1 IN ({{ ns }})"),
    }
    config, body = configs[kind]
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        extra: dict[str, Any] = {"secrets": {"password": "pw"}} if kind in (
            "postgres", "mysql") else {}
        ds = await create_datasource(dev, name=kind, kind=kind, config=config, **extra)
        q = await create_query(dev, ds["id"], body, PARAMETERS, name=f"numbers {kind}")
        runs_before = appliance.audit_actions().count("query.run")
        for params, status, words in CASES:
            resp = await raw_run(appliance, viewer, q["id"], params)
            assert resp.status == status, (params, resp.body)
            assert words in resp.body["error"]["message"], (params, resp.body)
            if status == 422:
                name = params.split('"')[1]
                assert resp.body["error"]["field"] == f"param.{name}", resp.body
        # Refused while binding: each is recorded as a failed run; none reached the datasource.
        entries = appliance.query("SELECT outcome, details FROM audit_log "
                                  "WHERE action = 'query.run' ORDER BY seq")[runs_before:]
        assert len(entries) == sum(1 for case in CASES if case[1] == 422)
        assert {entry["outcome"] for entry in entries} == {"failed"}
        assert all('"invalid_parameter"' in entry["details"] for entry in entries)


async def test_a_default_that_is_not_finite_is_refused_at_save(tmp_path: Path) -> None:
    db = sqlite_database(tmp_path / "n.db", ["CREATE TABLE t (x)"])
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="lite", kind="sqlite", config={"path": str(db)})
        raw = (b'{"name": "q", "datasource_id": "' + ds["id"].encode() + b'", "body": '
               b'"SELECT {{ n }}", "parameters": [{"name": "n", "type": "number", '
               b'"default": 1e400}]}')
        resp = await dev.request("POST", "/api/v1/queries", raw_body=raw,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 422, resp.body
        assert resp.body["error"]["field"].startswith("parameters[0]"), resp.body
