"""A run's parameter errors, seen through the HTTP API by a viewer: they name the parameter and the
rule, never a part of the query body (header names, the path, query keys, JSON keys, MongoDB
arguments, the method or collection), and a refused run sends nothing upstream."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.queries import (
    as_role,
    create_datasource,
    create_query,
    proxy,
    run,
    sqlite_database,
)

REST_BODY = {
    "method": "PATCH", "path": "/hidden-path/{{ id }}", "query": {"secretQueryKey": "{{ q }}"},
    "headers": {"X-Hidden-Tenant": "tenant={{ t }}"}, "json": {"hiddenJsonKey": "n={{ note }}"}}
REST_PARAMS = [{"name": "id", "type": "string", "required": False},
               {"name": "q", "type": "json", "required": False},
               {"name": "t", "type": "string", "required": False},
               {"name": "note", "type": "string", "required": False}]
REST_BODY_PARTS = ("X-Hidden-Tenant", "x-hidden-tenant", "hidden-path", "secretQueryKey",
                   "hiddenJsonKey", "PATCH", "tenant=", "n=")


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


def assert_names_only(resp: Any, parameter: str, rule: str, body_parts: tuple[str, ...]) -> None:
    assert resp.status == 422 and resp.code == "invalid_parameter", resp.body
    message = resp.body["error"]["message"]
    assert f"'{parameter}'" in message and rule in message, message
    leaked = [part for part in body_parts if part in str(resp.body)]
    assert leaked == [], message


@pytest.mark.parametrize(("params", "parameter", "rule"), [
    ({"id": "1", "t": "x" * 9000}, "t", "8192 characters"),
    ({"id": "1", "t": "a\r\nX-Injected: 1"}, "t", "line break"),
    ({"id": "1", "t": "a\x01b"}, "t", "control character"),
    ({"id": "..", "t": "a"}, "id", "'.' or '..'"),
    ({"t": "a"}, "id", "has no value"),
    ({"id": "1"}, "t", "has no value"),
    ({"id": "1", "t": "a", "q": {"k": "\ud800"}}, "q", "not valid Unicode"),
    ({"id": "1", "t": "a", "q": {"\udfff": 1}}, "q", "not valid Unicode"),
    ({"id": "1", "t": 7}, "t", "must be a string"),
])
async def test_rest_run_errors_name_the_parameter_and_the_rule(
        tmp_path: Path, upstream: tuple[str, list[str]], params: dict[str, Any],
        parameter: str, rule: str) -> None:
    base_url, seen = upstream
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="api", kind="rest", config={"base_url": base_url})
        q = await create_query(dev, ds["id"], REST_BODY, REST_PARAMS, name="hidden")
        for client in (viewer, dev):  # one message for every role
            assert_names_only(await run(client, q["id"], params), parameter, rule,
                              REST_BODY_PARTS)
        ok = await run(viewer, q["id"], {"id": "1", "t": "a", "note": "b", "q": 1})
        assert ok.status == 200, ok.body
    assert len(seen) == 1  # only the good run reached the API


async def test_mongodb_run_errors_name_the_parameter_and_the_rule(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a closed port: binding fails before any connection
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    body_parts = ("filter", "limit", "skip", "find", "hiddenOrders", "pipeline")
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="mongo", kind="mongodb",
                                     config={"host": "127.0.0.1", "port": port,
                                             "database": "app", "tls": "disable"})
        q = await create_query(dev, ds["id"], {
            "collection": "hiddenOrders", "operation": "find", "filter": "{{ f }}",
            "limit": "{{ n }}"},
            [{"name": "f", "type": "json", "required": False},
             {"name": "n", "type": "integer", "required": False}], name="m")
        cases = [({"f": [1, 2], "n": 1}, "f", "must be a JSON object"),
                 ({"f": {}, "n": -1}, "n", "must be a non-negative integer"),
                 ({"n": 1}, "f", "has no value"),
                 ({"f": {"$where": "1"}, "n": 1}, "f", "starting with '$'")]
        for params, parameter, rule in cases:
            for client in (viewer, dev):
                assert_names_only(await run(client, q["id"], params), parameter, rule,
                                  body_parts)


async def test_sql_run_errors_name_the_parameter_and_the_rule(tmp_path: Path) -> None:
    db = sqlite_database(tmp_path / "shop.db", ["CREATE TABLE hidden_orders (note TEXT)"])
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="lite", kind="sqlite", config={"path": str(db)})
        q = await create_query(dev, ds["id"],
                               "SELECT note FROM hidden_orders WHERE note = {{ s }}",
                               [{"name": "s", "type": "string"}], name="s")
        for params, rule in (({"s": "x" * 70_000}, "longer than"), ({"s": 1}, "must be a string"),
                             ({}, "is required"), ({"s": "a\x00"}, "NUL")):
            assert_names_only(await run(viewer, q["id"], params), "s", rule,
                              ("hidden_orders", "SELECT", "note"))
