"""Store migration 17 (`login_throttle.forget_at`) on both stores: rows written before it keep
their counts and get the end of their kind's window, so the first throttle write after the
upgrade prunes those already past it and keeps the rest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.auth.throttle import Keys, Throttle
from tests.support.store_migration import (
    new_state,
    opened,
    store_env,  # noqa: F401  (the fixture, both stores)
)

BEFORE = 16
HOUR, DAY = 3600.0, 86400.0


async def test_rows_before_17_get_their_window_and_old_ones_go(
        store_env: tuple[str, dict[str, str], Any], tmp_path: Path) -> None:  # noqa: F811
    _, env, _ = store_env
    state = new_state(tmp_path)
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
    async with opened(env, state, BEFORE) as store, store.transaction() as tx:
        for row in rows:
            await tx.execute("INSERT INTO login_throttle (key, failures, locked_until,"
                             " updated_at) VALUES (?, ?, ?, ?)", row)

    async with opened(env, state) as store:
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
