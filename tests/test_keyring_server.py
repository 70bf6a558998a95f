"""A real aiohttp server (ephemeral port, the product's middlewares and the application core):
a tampered field gives one clear JSON error naming the record, and the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from appliance.core import open_core
from appliance.http import middleware
from appliance.http.app_keys import CORE, SETTINGS
from tests.support.keyring import (
    TEST_TUNING,
    init_state,
    plaintexts,
    populate,
    raw_sql,
)


async def _core_lifecycle(app: web.Application) -> AsyncIterator[None]:
    async with open_core(app[SETTINGS], serving=True, tuning=TEST_TUNING) as core:
        app[CORE] = core
        yield


async def _probe(request: web.Request) -> web.Response:
    vault = request.app[CORE].vault
    secret = await vault.get("datasource", request.match_info["record"], "password")
    return web.json_response({"set": secret is not None,
                              "length": len(secret.reveal()) if secret else 0})


async def test_tampered_field_is_a_clear_error_and_the_server_survives(state: Path):
    s = await init_state(state)
    secrets = plaintexts(3)
    await populate(s, secrets)
    raw_sql(state, "UPDATE sealed_fields SET blob = substr(blob, 1, length(blob) - 1) "
            "WHERE record_id = 'ds-0001'")
    app = web.Application(middlewares=[middleware.front()])
    app[SETTINGS] = s
    app.cleanup_ctx.append(_core_lifecycle)
    app.router.add_get("/probe/{record}", _probe)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/probe/ds-0001") as response:
                assert response.status == 500
                body = await response.json()
                assert body["error"]["code"] == "sealed_field_unreadable"
                assert "datasource/ds-0001/password" in body["error"]["message"]
                assert "PLAINTEXT" not in await response.text()
            for record in ("ds-0000", "ds-0002"):
                async with http.get(f"/probe/{record}") as response:
                    assert response.status == 200
                    assert (await response.json())["set"] is True
            async with http.get("/probe/absent") as response:
                assert (await response.json()) == {"set": False, "length": 0}
    finally:
        await runner.cleanup()


async def test_keys_endpoint_reports_versions_and_counts_without_key_material(
    tmp_path: Path,
) -> None:
    """GET /api/v1/keys (admin): the same numbers as `appliance keys status`, no key bytes."""
    from tests.support.app import running

    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        admin = appliance.client(token=appliance.tokens["admin"])
        resp = await admin.request("GET", "/api/v1/keys", None, csrf=False)
        assert resp.status == 200
        keys = resp.body["keys"]
        assert len(keys) >= 1 and sum(k["active"] for k in keys) == 1
        assert set(keys[0]) == {"version", "active", "created_at", "fields"}
        viewer = appliance.client(token=appliance.tokens["viewer"])
        assert (await viewer.request("GET", "/api/v1/keys", None, csrf=False)).status == 403
