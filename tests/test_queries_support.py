"""Helpers for the query-proxy tests (no tests here): a real appliance in this process with
loopback datasources allowed by the egress policy, tokens per role, and small API shortcuts."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from appliance.http.app import build_app
from appliance.server import bound_ports
from appliance.tls import TLSManager
from tests.test_auth_support import Appliance, Client, prepare


@contextlib.asynccontextmanager
async def proxy(state: Path, **egress: Any) -> AsyncIterator[Appliance]:
    """The appliance with users admin/developer/viewer and a token each (`appliance.tokens`)."""
    s, raw_tokens = await prepare(state, require_2fa="", tokens=True)
    s = dataclasses.replace(s, egress=dataclasses.replace(s.egress,
                                                          **{"allow_private": True, **egress}))
    tls = TLSManager(s.tls, state)
    tls.load_initial()
    app = build_app(s, tls)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
        await site.start()
        port = bound_ports(site)[0][1]
        assert tls.ca is not None
        ctx = ssl.create_default_context(cafile=str(tls.ca.cert_path))
        url = f"https://127.0.0.1:{port}"
        appliance = Appliance(s, state, app, runner, url, url, ctx, raw_tokens)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         connector=connector) as http:
            appliance._http = http
            yield appliance
    finally:
        await runner.cleanup()


def as_role(appliance: Appliance, role: str) -> Client:
    return appliance.client(token=appliance.tokens[role])


async def create_datasource(client: Client, **body: Any) -> dict[str, Any]:
    resp = await client.request("POST", "/api/v1/datasources", body)
    assert resp.status == 201, resp.body
    return resp.body


async def create_query(client: Client, datasource_id: str, body: Any,
                       parameters: list[dict[str, Any]] | None = None, **extra: Any
                       ) -> dict[str, Any]:
    payload = {"name": extra.pop("name", f"q{id(body) % 100000}"), "datasource_id": datasource_id,
               "body": body, "parameters": parameters or [], **extra}
    resp = await client.request("POST", "/api/v1/queries", payload)
    assert resp.status == 201, resp.body
    return resp.body


async def run(client: Client, query_id: str, params: dict[str, Any] | None = None) -> Any:
    return await client.request("POST", f"/api/v1/queries/{query_id}/run",
                                {"params": params or {}})


def sqlite_database(path: Path, statements: list[str]) -> Path:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    return path
