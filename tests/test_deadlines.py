"""Time limits on the request path (appliance.deadlines): asyncio.timeout's behaviour, one
sweep per loop instead of a timer per limit; and the request limit as a client sees it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from appliance import deadlines
from appliance.http import middleware
from appliance.http.app_keys import SETTINGS
from tests.support.app import make_settings

LATE = deadlines.RESOLUTION + 0.35  # how late a limit may fire on a loaded test machine


async def test_a_block_past_its_limit_raises_timeout_error_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with deadlines.limit(0.2):
            await asyncio.sleep(5)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.2 + LATE
    await asyncio.sleep(0.01)  # the task was not left cancelled


async def test_a_block_done_in_time_leaves_nothing_behind() -> None:
    with deadlines.limit(0.1) as limit:
        await asyncio.sleep(0)
    await asyncio.sleep(0.1 + LATE)  # past the deadline: no late cancellation arrives
    assert not limit.expired
    assert limit not in deadlines._sweeper(asyncio.get_running_loop()).open


async def test_errors_from_the_block_pass_through_unchanged() -> None:
    with pytest.raises(KeyError):
        with deadlines.limit(5):
            await asyncio.sleep(0)
            raise KeyError("x")


async def test_nested_limits_the_one_that_expired_raises() -> None:
    with deadlines.limit(5) as outer:
        with pytest.raises(TimeoutError):
            with deadlines.limit(0.1):
                await asyncio.sleep(5)
        await asyncio.sleep(0.01)  # the outer block goes on
    assert not outer.expired

    inner_saw: list[type[BaseException]] = []
    with pytest.raises(TimeoutError):
        with deadlines.limit(0.1):
            try:
                with deadlines.limit(5):
                    await asyncio.sleep(5)
            except BaseException as exc:
                inner_saw.append(type(exc))
                raise
    assert inner_saw == [asyncio.CancelledError]  # the inner limit did not claim it


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def guarded() -> None:
        with deadlines.limit(5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_sweep_stops_when_no_limit_is_open() -> None:
    with deadlines.limit(1):
        await asyncio.sleep(0)
    sweeper = deadlines._sweeper(asyncio.get_running_loop())
    await asyncio.sleep(deadlines.RESOLUTION * 3)
    assert not sweeper.open and not sweeper.scheduled


async def test_a_request_past_the_request_timeout_gets_504(tmp_path: Path) -> None:
    """The request limit as a client sees it: 504 `request_timeout`, and the server still up."""
    settings = make_settings(tmp_path)
    settings = dataclasses.replace(settings,
                                   server=dataclasses.replace(settings.server, request_timeout=1))

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="too late")

    async def quick(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[middleware.front()])
    app[SETTINGS] = settings
    app.router.add_get("/slow", slow)
    app.router.add_get("/quick", quick)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.get(f"http://127.0.0.1:{port}/slow") as resp:
                body = await resp.json()
            assert resp.status == 504 and body["error"]["code"] == "request_timeout"
            assert 1 <= time.monotonic() - started < 1 + LATE + 0.5
            async with http.get(f"http://127.0.0.1:{port}/quick") as resp:
                assert resp.status == 200 and await resp.text() == "ok"
    finally:
        await runner.cleanup()
