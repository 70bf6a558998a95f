"""Helpers for the query-proxy tests (no tests here): a real appliance in this process with
loopback datasources allowed by the egress policy, tokens per role, and small API shortcuts."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.support.app import Appliance, Client, running


@contextlib.asynccontextmanager
async def proxy(state: Path, **egress: Any) -> AsyncIterator[Appliance]:
    """The appliance with users admin/developer/viewer and a token each (`appliance.tokens`)."""
    async with running(state, require_2fa="", tokens=True, connection_limit=0,
                       egress={"allow_private": True, **egress}) as appliance:
        yield appliance


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
