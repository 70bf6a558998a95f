"""A datasource's engine is built once for every run that wants it at the same time (the first
run after a start, or after its datasource changed). A run that leaves while the engine is being
built (its request's time limit passed, the appliance stopping) leaves alone: the runs waiting
for the same build still get the engine, and a build under way when the service closes leaves no
engine behind that nobody closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.datasources import DatasourceService
from appliance.errors import ApplianceError
from appliance.http.app_keys import CORE
from tests.support.queries import as_role, create_datasource, proxy, sqlite_database

STEP = 5.0  # seconds: far more than a build takes; a hang fails instead of waiting forever


@contextlib.asynccontextmanager
async def _service(tmp_path: Path) -> AsyncIterator[tuple[DatasourceService, str]]:
    """A running appliance's datasource service, and a SQLite datasource it has no engine for."""
    db = sqlite_database(tmp_path / "data.sqlite", ["CREATE TABLE t (v TEXT)"])
    async with proxy(tmp_path / "state") as appliance:
        ds = await create_datasource(as_role(appliance, "developer"), name="data",
                                     kind="sqlite", config={"path": str(db)})
        yield appliance.app[CORE].datasources, str(ds["id"])


async def test_a_run_cancelled_during_the_build_leaves_the_others_their_engine(
        tmp_path: Path) -> None:
    async with _service(tmp_path) as (service, datasource_id):
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
    async with _service(tmp_path) as (service, datasource_id):
        building = asyncio.ensure_future(service.engine(datasource_id))
        await asyncio.sleep(0)  # the build reads the store
        await asyncio.wait_for(service.close(), STEP)
        with pytest.raises((ApplianceError, asyncio.CancelledError)):
            await asyncio.wait_for(building, STEP)
        assert service.open_engines() == ()
