"""A datasource's engine is built once for every run that wants it at the same time (the first
run after a start, or after its datasource changed). A run that leaves while the engine is being
built (its request's time limit passed, the appliance stopping) leaves alone: the runs waiting
for the same build still get the engine, and a build under way when the service closes leaves no
engine behind that nobody closes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.http.app_keys import CORE
from tests.support.queries import as_role, create_datasource, proxy, sqlite_database

STEP = 5.0  # seconds: far more than a build takes; a hang fails instead of waiting forever


async def _datasource(tmp_path: Path, appliance: object) -> str:
    db = sqlite_database(tmp_path / "data.sqlite", ["CREATE TABLE t (v TEXT)"])
    ds = await create_datasource(as_role(appliance, "developer"),  # type: ignore[arg-type]
                                 name="data", kind="sqlite", config={"path": str(db)})
    return str(ds["id"])


async def test_a_run_cancelled_during_the_build_leaves_the_others_their_engine(
        tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        datasource_id = await _datasource(tmp_path, appliance)
        service = appliance.app[CORE].datasources
        first = asyncio.ensure_future(service.engine(datasource_id))
        await asyncio.sleep(0)  # the first run is building the engine (reading the store)
        second = asyncio.ensure_future(service.engine(datasource_id))
        await asyncio.sleep(0)  # the second waits for that build
        assert not first.done() and not second.done()
        first.cancel()  # its request's time limit passed
        engine = await asyncio.wait_for(second, STEP)  # not the first run's cancellation
        assert engine.target.id == datasource_id
        assert service.open_engines() == (engine,)
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_a_build_under_way_when_the_service_closes_leaves_no_engine_open(
        tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        datasource_id = await _datasource(tmp_path, appliance)
        service = appliance.app[CORE].datasources
        building = asyncio.ensure_future(service.engine(datasource_id))
        await asyncio.sleep(0)  # the build reads the store
        await asyncio.wait_for(service.close(), STEP)
        with pytest.raises((ApplianceError, asyncio.CancelledError)):
            await asyncio.wait_for(building, STEP)
        assert service.open_engines() == ()
