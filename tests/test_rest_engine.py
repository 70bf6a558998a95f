"""The REST engine against a real aiohttp server on 127.0.0.1: values cannot traverse paths or
inject headers, credentials are added server-side, huge responses are capped, redirects are not
followed unless enabled, and a viewer never sees the URL, headers or body template."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.queries import as_role, create_datasource, create_query, proxy, run

TOKEN = "upstream-bearer-TOKEN-0123"


class Upstream:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"method": request.method, "raw_path": request.raw_path,
                          "path": request.path, "headers": dict(request.headers),
                          "body": body})
        if request.path.startswith("/huge"):
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(64):
                await response.write(b"x" * 65536)
            return response
        if request.path.startswith("/slow"):
            await asyncio.sleep(0.5)
        if request.path.startswith("/redirect"):
            raise web.HTTPFound("/landing")
        if request.path == "/landing":
            return web.json_response({"landed": True,
                                      "auth": request.headers.get("Authorization")})
        return web.json_response({"path": request.raw_path, "n": 1})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


async def test_rest_requests_are_built_safely(tmp_path: Path, upstream: Upstream) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="api", kind="rest",
                                     config={"base_url": upstream.url + "/v1", "auth": "bearer",
                                             "max_response_bytes": 1_000_000},
                                     secrets={"token": TOKEN})
        assert TOKEN not in str(ds) and ds["secrets"]["token"] == {"set": True}
        q = await create_query(dev, ds["id"], {
            "method": "POST", "path": "/items/{{ id }}", "query": {"q": "{{ q }}"},
            # A literal credential in the template is refused at save time (secret scanning);
            # one bound from a run's value is still replaced by the datasource's own.
            "headers": {"X-Tenant": "{{ tenant }}", "Authorization": "{{ forged }}"},
            "json": {"note": "{{ q }}", "n": "{{ n }}"}},
            [{"name": "id", "type": "string"}, {"name": "q", "type": "string"},
             {"name": "tenant", "type": "string"}, {"name": "n", "type": "integer"},
             {"name": "forged", "type": "string", "required": False}],
            name="items")
        resp = await run(dev, q["id"], {"id": "a/admin?x=1#f", "q": "a&b=c/../d",
                                        "tenant": "acme", "n": 7,
                                        "forged": "Bearer client-forged"})
        assert resp.status == 200, resp.body
        assert resp.body["columns"] == ["status", "content_type", "body"]
        status, _, _body = resp.body["rows"][0]
        assert status == 200
        seen = upstream.seen[-1]
        assert seen["raw_path"].startswith("/v1/items/a%2Fadmin%3Fx%3D1%23f?q=a%26b%3Dc")
        assert seen["raw_path"].split("?")[0].split("/") == ["", "v1", "items",
                                                              "a%2Fadmin%3Fx%3D1%23f"]
        assert seen["headers"]["Authorization"] == f"Bearer {TOKEN}"  # server-side credential
        assert seen["headers"]["X-Tenant"] == "acme"
        assert json.loads(seen["body"]) == {"note": "a&b=c/../d", "n": 7}

        for bad in ("..", ".", "../../admin", "..\\x"):
            assert (await run(dev, q["id"], {"id": bad, "q": "", "tenant": "t",
                                             "n": 1})).status == 422
        count = len(upstream.seen)
        for tenant in ("a\r\nX-Injected: 1", "a\nb", "a\rb"):
            resp = await run(dev, q["id"], {"id": "1", "q": "", "tenant": tenant, "n": 1})
            assert resp.status == 422 and "tenant" in resp.body["error"]["message"]
        assert len(upstream.seen) == count  # nothing was sent

        # viewers: only id, name, description, parameters, and errors without URL/headers/body
        listed = await viewer.request("GET", "/api/v1/queries")
        assert listed.body["queries"] == [{"id": q["id"], "name": "items", "description": None,
                                           "parameters": q["parameters"]}]
        shown = await viewer.request("GET", f"/api/v1/queries/{q['id']}")
        assert set(shown.body) == {"id", "name", "description", "parameters"}
        ok = await run(viewer, q["id"], {"id": "1", "q": "x", "tenant": "t", "n": 2})
        assert ok.status == 200
        for path in ("/api/v1/datasources", f"/api/v1/datasources/{ds['id']}"):
            assert (await viewer.request("GET", path)).status == 403
        for response in (listed, shown):
            text = str(response.body)
            for secret_part in (upstream.url, "127.0.0.1", "/items/", "X-Tenant", "Bearer",
                                "note", TOKEN, "POST"):
                assert secret_part not in text


async def test_huge_responses_and_redirects(tmp_path: Path, upstream: Upstream) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="capped", kind="rest",
                                     config={"base_url": upstream.url, "auth": "bearer",
                                             "max_response_bytes": 1_000_000},
                                     secrets={"token": TOKEN})
        huge = await create_query(dev, ds["id"], {"path": "/huge"}, name="huge")
        resp = await run(dev, huge["id"])
        assert resp.status == 502 and resp.code == "response_too_large"
        redirect = await create_query(dev, ds["id"], {"path": "/redirect"}, name="redirect")
        resp = await run(dev, redirect["id"])
        assert resp.status == 502 and "redirect" in resp.body["error"]["message"]
        assert not any(s["path"] == "/landing" for s in upstream.seen)
        resp = await run(viewer, redirect["id"])
        assert resp.status == 502 and "/redirect" not in str(resp.body)
        assert upstream.url not in str(resp.body)

        follow = await create_datasource(dev, name="follow", kind="rest",
                                         config={"base_url": upstream.url, "auth": "bearer",
                                                 "follow_redirects": True},
                                         secrets={"token": TOKEN})
        q = await create_query(dev, follow["id"], {"path": "/redirect"}, name="follow")
        resp = await run(dev, q["id"])
        assert resp.status == 200
        assert resp.body["rows"][0][2] == {"landed": True, "auth": f"Bearer {TOKEN}"}


async def test_rest_denied_and_down(tmp_path: Path, upstream: Upstream) -> None:
    async with proxy(tmp_path / "state", allow_private=False) as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="private", kind="rest",
                                     config={"base_url": upstream.url})
        q = await create_query(dev, ds["id"], {"path": "/x"}, name="x")
        resp = await run(dev, q["id"])
        assert resp.status == 403 and resp.code == "egress_denied"
        assert upstream.seen == []
        resp = await run(viewer, q["id"])
        assert resp.status == 403 and "127.0.0.1" not in str(resp.body)
        assert "private" in resp.body["error"]["message"]


async def test_a_changed_datasource_moves_runs_to_its_new_engine(tmp_path: Path,
                                                                 upstream: Upstream) -> None:
    """A datasource changed (here, or on another instance): a request under way on the old
    engine ends normally; a run that took the old engine just before the change is sent with
    the new credentials by the new engine, never by the old one's config (nor a session it
    would open again and never close)."""
    from appliance.datasources.engine import Engine
    from appliance.http.app_keys import CORE

    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="api", kind="rest",
                                     config={"base_url": upstream.url, "auth": "bearer"},
                                     secrets={"token": TOKEN})
        slow = await create_query(dev, ds["id"], {"path": "/slow"}, name="slow")
        fast = await create_query(dev, ds["id"], {"path": "/fast"}, name="fast")
        service = appliance.app[CORE].datasources
        old = await service.engine(ds["id"])

        under_way = asyncio.ensure_future(run(dev, slow["id"]))
        while not upstream.seen:  # the request has reached the upstream
            await asyncio.sleep(0.01)
        changed = await dev.request("PATCH", f"/api/v1/datasources/{ds['id']}",
                                    {"secrets": {"token": "new-" + TOKEN}})
        assert changed.status == 200, changed.body
        finished = await under_way
        assert finished.status == 200, finished.body  # not cut off by the change

        real_engine = service.engine
        handed: list[Engine] = []

        async def took_it_just_before(datasource_id: str) -> Engine:
            engine = old if not handed else await real_engine(datasource_id)
            handed.append(engine)
            return engine

        service.engine = took_it_just_before  # type: ignore[method-assign]  # the race, made certain
        try:
            resp = await run(dev, fast["id"])
        finally:
            service.engine = real_engine  # type: ignore[method-assign]  # restored
        assert resp.status == 200, resp.body
        assert [engine is old for engine in handed] == [True, False]  # moved to the new one
        assert upstream.seen[-1]["path"] == "/fast"
        assert upstream.seen[-1]["headers"]["Authorization"] == f"Bearer new-{TOKEN}"
        assert old._session is None  # type: ignore[attr-defined]  # nothing reopened on it


def test_basic_credentials_are_rfc_7617_utf8() -> None:
    # RFC 7617 section 2.1's example, and a UTF-8 password (the charset the engine declares).
    from appliance.kinds.rest.engine import basic_authorization

    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert basic_authorization("test", "123£") == "Basic dGVzdDoxMjPCow=="


async def test_max_connections_caps_the_upstream_connections(tmp_path: Path) -> None:
    """A datasource's `max_connections` is its connector's limit: eight runs at once reach the
    upstream over at most two connections, two requests at a time."""
    import asyncio

    peers: set[int] = set()
    busy = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal busy, peak
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[1])
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0.2)
        busy -= 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with proxy(tmp_path / "state") as appliance:
            dev = as_role(appliance, "developer")
            ds = await create_datasource(dev, name="capped", kind="rest",
                                         config={"base_url": url, "max_connections": 2})
            q = await create_query(dev, ds["id"], {"method": "GET", "path": "/slow"},
                                   name="slow")
            answers = await asyncio.gather(*(run(dev, q["id"], {}) for _ in range(8)))
            assert [a.status for a in answers] == [200] * 8
    finally:
        await runner.cleanup()
    assert peak == 2
    assert len(peers) == 2
