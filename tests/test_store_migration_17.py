"""Store migration 17 (`login_throttle.forget_at`) on both stores: rows written before it keep
their counts and get the end of their kind's window, so the first throttle write after the
upgrade prunes those already past it and keeps the rest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from appliance.auth.throttle import Keys, Throttle
from tests.test_store_migration_11 import (
    at_version,
    store_env,  # noqa: F401  (the fixture, both stores)
)
from tests.test_store_migration_11 import open_at as open_store_at

BEFORE = 16
HOUR, DAY = 3600.0, 86400.0


async def test_rows_before_17_get_their_window_and_old_ones_go(
        store_env: tuple[str, dict[str, str], Any], tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, env, _ = store_env
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    now = time.time()
    rows = [  # key, failures, locked_until, updated_at
        ("pair:old", 3, 0.0, now - 2 * HOUR),      # past a pair's hour
        ("pair:recent", 4, 0.0, now - 0.5 * HOUR),
        ("addr:old", 9, 0.0, now - 2 * DAY),       # past an address's day
        ("addr:recent", 9, 0.0, now - 2 * HOUR),
        ("user:recent", 9, 0.0, now - 20 * HOUR),
        ("known:recent", 0, 0.0, now - 20 * DAY),  # a known pair lasts 30 days
        ("known:old", 0, 0.0, now - 31 * DAY),
    ]
    with monkeypatch.context() as patched:
        at_version(patched, BEFORE)
        store = await open_store_at(env, state)
        try:
            async with store.transaction() as tx:
                for row in rows:
                    await tx.execute("INSERT INTO login_throttle (key, failures, locked_until,"
                                     " updated_at) VALUES (?, ?, ?, ?)", row)
        finally:
            await store.close()

    store = await open_store_at(env, state)
    try:
        assert await store.schema_version() >= 17
        migrated = {r["key"]: (r["failures"], r["forget_at"] - r["updated_at"])
                    for r in await store.fetch_all(
                        "SELECT key, failures, updated_at, forget_at FROM login_throttle")}
        assert migrated == {key: (failures, {"pair": HOUR, "addr": DAY, "user": DAY,
                                             "known": 30 * DAY}[key.partition(":")[0]])
                            for key, failures, _, _ in rows}
        new = Keys.of("someone", "192.0.2.9")
        async with store.transaction() as tx:
            await Throttle(store).failure(tx, new)
        left = {r["key"] for r in await store.fetch_all("SELECT key FROM login_throttle")}
        assert left == {"pair:recent", "addr:recent", "user:recent", "known:recent",
                        new.pair, new.address, new.account}
    finally:
        await store.close()
