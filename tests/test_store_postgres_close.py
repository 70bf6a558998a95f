"""Closing the PostgreSQL store while something still uses it: a read under way (or its reader
connecting) ends, and its connection is closed rather than kept idle in a store nobody will
close again (a server connection left open until the process exits); a write under way ends
before the close; two closes at once both end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance import settings
from appliance.egress import Dialer, PolicyHolder
from appliance.store import open_store
from appliance.store.postgres import PostgresStore

from .conftest import StoreDatabase

STEP = 10.0  # seconds: far more than any step takes; a hang fails instead of waiting forever


async def _open(database: StoreDatabase, state: Path) -> PostgresStore:
    s = settings.load(env=database.env(), flags={"state_dir": str(state)})
    store = await open_store(s, Dialer(PolicyHolder(s.egress)))
    assert isinstance(store, PostgresStore)
    return store


def _store_connections(database: StoreDatabase) -> int:
    """The store's connections the server still has (other than the one asking)."""
    return int(database.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'appliance-store' AND pid <> pg_backend_pid()").strip())


async def _none_left(database: StoreDatabase) -> int:
    """The store's connections still open once the server has seen the closes (a moment)."""
    for _ in range(50):
        left = await asyncio.to_thread(_store_connections, database)
        if left == 0:
            return 0
        await asyncio.sleep(0.1)
    return left


async def test_a_read_under_way_at_close_ends_and_its_connection_is_closed(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    store = await _open(store_database, tmp_path)
    reads = [asyncio.ensure_future(store.fetch_one("SELECT pg_sleep(0.5) AS slept"))
             for _ in range(2)]  # one on the idle reader, one on a reader connecting now
    await asyncio.sleep(0.2)
    await asyncio.wait_for(store.close(), STEP)
    done, _ = await asyncio.wait(reads, timeout=STEP)
    assert len(done) == 2, "a read under way at close never ended"
    assert await _none_left(store_database) == 0, "a connection of a closed store is still open"


async def test_a_write_under_way_at_close_ends_first(store_database: StoreDatabase,
                                                     tmp_path: Path) -> None:
    store = await _open(store_database, tmp_path)

    async def write() -> None:
        async with store.transaction() as tx:
            await tx.execute("SELECT pg_sleep(0.3)")
            await tx.execute("INSERT INTO meta (key, value) VALUES ('closing', 'written')")

    writing = asyncio.ensure_future(write())
    await asyncio.sleep(0.1)
    await asyncio.wait_for(asyncio.gather(store.close(), store.close()), STEP)
    assert writing.done() and writing.exception() is None  # the close waited for it
    assert "written" in store_database.sql("SELECT value FROM meta WHERE key = 'closing'")
    assert await _none_left(store_database) == 0
