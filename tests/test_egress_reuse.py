"""Kept-alive connections and a change of the egress policy: a real aiohttp upstream on 127.0.0.1
records the client port of every request it answers, so a reused connection (same port) and a
fresh dial (a new port) can be told apart. A connection checked under the old policy is never
used under the new one: an idle one is closed at the change, one in use when it is released, and
the next request dials afresh through the policy (denied, or a new connection)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from appliance.egress import Dialer, EgressDenied, PolicyHolder, StaticResolver
from appliance.egress.aiohttp_hook import EgressConnector, egress_session
from appliance.egress.runtime import RuntimeEgress
from appliance.settings import EgressSettings
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

OPEN = EgressSettings(source_address=(), mode="default", allow=(), deny=(), allow_private=True)


class Upstream:
    """Answers every request with {"ok": true}; `/slow` waits for `go` first. `ports`: the client
    port of each request, in order."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.go = asyncio.Event()
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(int(peer[1]) if peer else -1)
        if request.path == "/slow":
            self.arrived.set()
            await self.go.wait()
        return web.json_response({"ok": True})

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


def open_connections(session: aiohttp.ClientSession) -> int:
    """How many connections the session's pool holds open, idle or in use."""
    connector = session.connector
    assert isinstance(connector, EgressConnector)
    idle = sum(1 for conns in connector._conns.values() for proto, _ in conns
               if proto.is_connected())
    return idle + len(connector._acquired)


async def get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def test_an_api_change_closes_the_kept_alive_connection(tmp_path: Path,
                                                              upstream: Upstream) -> None:
    async with proxy(tmp_path / "state") as appliance:
        admin = as_role(appliance, "admin")
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="api", kind="rest",
                                     config={"base_url": upstream.url})
        q = await create_query(dev, ds["id"], {"path": "/x"}, name="x")
        for _ in range(2):
            resp = await run(dev, q["id"])
            assert resp.status == 200, resp.body
        kept = upstream.ports[0]
        assert upstream.ports == [kept, kept]  # the premise: the second run reused the first's

        changed = await admin.request("PUT", "/api/v1/egress",
                                      {"deny": [f"127.0.0.1:{upstream.port}"]})
        assert changed.status == 200, changed.body
        denied = await run(dev, q["id"])
        assert denied.status == 403 and denied.code == "egress_denied", denied.body
        assert upstream.ports == [kept, kept]  # nothing reached it over the old connection

        reset = await admin.request("PUT", "/api/v1/egress", {"deny": None})
        assert reset.status == 200, reset.body
        again = await run(dev, q["id"])
        assert again.status == 200, again.body
        assert len(upstream.ports) == 3 and upstream.ports[2] != kept  # dialed afresh


async def test_a_connection_in_use_at_the_change_is_closed_when_released(
        upstream: Upstream) -> None:
    """A reloaded settings file (`RuntimeEgress.rebase`, as on SIGHUP) denies the upstream while
    a request is under way: that request ends normally, its connection is not kept, and the next
    request is denied without a byte sent."""
    holder = PolicyHolder(OPEN)
    runtime = RuntimeEgress(OPEN, Dialer(holder, resolver=StaticResolver({})))
    async with egress_session(runtime.dialer, purpose="rest") as session:
        assert await get(session, upstream.url + "/warm") == 200
        slow = asyncio.create_task(get(session, upstream.url + "/slow"))
        await asyncio.wait_for(upstream.arrived.wait(), 10)
        assert upstream.ports[1] == upstream.ports[0]  # the slow one took the kept connection
        await runtime.rebase(dataclasses.replace(OPEN, deny=(f"127.0.0.1:{upstream.port}",)))
        upstream.go.set()
        assert await asyncio.wait_for(slow, 10) == 200
        await asyncio.sleep(0)  # the closed transport's connection_lost
        assert open_connections(session) == 0
        with pytest.raises(EgressDenied):
            await get(session, upstream.url + "/after")
    assert len(upstream.ports) == 2


async def test_a_change_that_still_allows_makes_the_next_request_dial_afresh(
        upstream: Upstream) -> None:
    holder = PolicyHolder(OPEN)
    dialer = Dialer(holder, resolver=StaticResolver({}))
    checks: list[Any] = []
    original = dialer.check

    async def counted(*args: Any, **kwargs: Any) -> Any:
        checks.append(args)
        return await original(*args, **kwargs)

    dialer.check = counted  # type: ignore[method-assign]  # count the policy checks
    async with egress_session(dialer, purpose="rest") as session:
        for _ in range(3):
            assert await get(session, upstream.url + "/x") == 200
        assert len(set(upstream.ports)) == 1 and len(checks) == 1
        holder.update(dataclasses.replace(OPEN, deny=("192.0.2.1",)))
        await asyncio.sleep(0)
        assert open_connections(session) == 0  # the idle one was closed at the change
        assert await get(session, upstream.url + "/x") == 200
        assert await get(session, upstream.url + "/x") == 200
    assert len(checks) == 2  # one new check, then its connection kept under the new policy
    assert len(set(upstream.ports)) == 2 and upstream.ports[3] == upstream.ports[4]


async def test_a_change_installed_from_another_thread_closes_the_idle_connection_in_its_loop(
        upstream: Upstream) -> None:
    """The policy installed from a worker thread (the connector's loop not running there): the
    idle connection is closed in the connector's loop, and the next request dials afresh."""
    holder = PolicyHolder(OPEN)
    dialer = Dialer(holder, resolver=StaticResolver({}))
    async with egress_session(dialer, purpose="rest") as session:
        assert await get(session, upstream.url + "/x") == 200
        assert open_connections(session) == 1
        await asyncio.to_thread(holder.update, dataclasses.replace(OPEN, deny=("192.0.2.1",)))
        for _ in range(10):  # brought over by call_soon_threadsafe: a turn or two
            if open_connections(session) == 0:
                break
            await asyncio.sleep(0.01)
        assert open_connections(session) == 0
        assert await get(session, upstream.url + "/x") == 200
    assert len(set(upstream.ports)) == 2


async def test_a_closed_session_is_forgotten_by_the_policy(upstream: Upstream) -> None:
    """The policy holds its watchers weakly: a closed, dropped session is not kept alive and a
    later change does not reach it."""
    import gc
    import weakref

    holder = PolicyHolder(OPEN)
    dialer = Dialer(holder, resolver=StaticResolver({}))
    async with egress_session(dialer, purpose="rest") as session:
        assert await get(session, upstream.url + "/x") == 200
        gone = weakref.ref(session.connector)
    del session
    gc.collect()
    assert gone() is None
    holder.update(dataclasses.replace(OPEN, deny=("192.0.2.1",)))  # nothing to tell, no error
