"""Closing a SQLite datasource's engine (its datasource changed, here or on another instance, or
the appliance stops) while a run holds one of its connections: the run finishes on it, the
connection is closed once, when the run lets it go, and neither the run nor the close waits
forever. aiosqlite's `Connection.close()` hangs when two closes of one connection overlap (the
second waits on a worker thread the first already stopped), which is how a run on another
instance hung once a datasource was changed under it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.datasources.engine import Target
from appliance.datasources.errors import EngineRetired
from appliance.kinds.sql.binding import BoundStatement
from appliance.kinds.sqlite.engine import SQLiteEngine
from tests.support.queries import sqlite_database

STEP = 5.0  # seconds: far more than any step takes; a hang fails instead of waiting forever


def _engine(tmp_path: Path) -> SQLiteEngine:
    tmp_path.mkdir(exist_ok=True)
    path = sqlite_database(tmp_path / "data.sqlite", ["CREATE TABLE t (v TEXT)",
                                                      "INSERT INTO t VALUES ('x'), ('y')"])
    return SQLiteEngine(Target(id="ds_test", name="data", kind="sqlite",
                               config={"path": str(path)}, version=1))


ALL = BoundStatement("SELECT v FROM t ORDER BY v", ())


async def _rows(engine: SQLiteEngine) -> list[list[str]]:
    got: list[list[str]] = []
    await asyncio.wait_for(engine.collect(ALL, timeout=STEP, fetch=10,
                                          take=lambda batch: got.extend(batch) or True), STEP)
    return [list(row) for row in got]


async def test_a_run_that_ends_while_its_engine_closes_ends_and_the_close_ends(
        tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    assert await _rows(engine) == [["x"], ["y"]]  # one idle connection now
    for stream in (False, True):
        async with asyncio.timeout(STEP):
            run = engine.open(ALL, timeout=STEP, fetch=10, stream=stream)
            rows = await run.__aenter__()
            assert rows.columns == ["v"]
            closing = asyncio.create_task(engine.close())
            await asyncio.sleep(0)  # the close has started
            await run.__aexit__(None, None, None)  # the run lets its connection go meanwhile
            await closing
        assert engine.pool_stats() is not None and engine.pool_stats().size == 0
        engine = _engine(tmp_path / str(stream))


async def test_a_close_waits_for_the_run_under_way(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    async with asyncio.timeout(STEP):
        async with engine.open(ALL, timeout=STEP, fetch=10) as rows:
            closing = asyncio.create_task(engine.close())
            await asyncio.sleep(0.05)
            assert not closing.done(), "the close did not wait for the run under way"
            assert [list(row) async for batch in rows.batches for row in batch] == [["x"], ["y"]]
        await closing
    assert engine.pool_stats().size == 0


async def test_a_closed_engine_closes_its_idle_connections_and_starts_no_run(
        tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    await asyncio.gather(*(_rows(engine) for _ in range(3)))
    assert engine.pool_stats().size >= 1
    await asyncio.wait_for(engine.close(), STEP)
    assert engine.pool_stats().size == 0
    await asyncio.wait_for(engine.close(), STEP)  # idempotent
    with pytest.raises(EngineRetired):
        await _rows(engine)
