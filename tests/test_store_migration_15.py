"""Store migration 15 (groups and the forced password change) on both stores: a store at the
version before it, with users, sessions and queries, migrates with every row intact; queries are
then for every viewer (`groups` '[]'), no user must change a password, and a user's groups go
with the user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import StoreError
from tests.support.store_migration import (
    Q_COLUMNS,
    insert_catalogue,
    new_state,
    opened,
    store_env,  # noqa: F401  (the fixture, both stores)
)

BEFORE = 11  # before 15 on this branch (12-14 are independent of it)
USERS = [("u_1", "ana", "viewer", "h1", 0, 0, 0, 1.0, 1.0),
         ("u_2", "Bo", "admin", "h2", 0, 1, 7, 2.0, 2.0)]
U_COLUMNS = ("id, username, role, password_hash, disabled, totp_enabled, totp_last_step, "
             "created_at, updated_at")


async def test_a_store_before_15_migrates_with_rows_intact(
        store_env: tuple[str, dict[str, str], Any], tmp_path: Path) -> None:  # noqa: F811
    _, env, _ = store_env
    state = new_state(tmp_path)
    async with opened(env, state, BEFORE) as store:
        async with store.transaction() as tx:
            await insert_catalogue(tx)
            for u in USERS:
                await tx.execute(f"INSERT INTO users ({U_COLUMNS}) VALUES "
                                 "(?, ?, ?, ?, ?, ?, ?, ?, ?)", u)
        queries = await store.fetch_all(f"SELECT {Q_COLUMNS} FROM queries ORDER BY id")
        users = await store.fetch_all(f"SELECT {U_COLUMNS} FROM users ORDER BY id")

    async with opened(env, state) as store:
        assert await store.schema_version() >= 15
        assert await store.fetch_all(f"SELECT {Q_COLUMNS} FROM queries ORDER BY id") == queries
        assert await store.fetch_all(f"SELECT {U_COLUMNS} FROM users ORDER BY id") == users
        groups = await store.fetch_all("SELECT DISTINCT groups FROM queries")
        assert groups == [{"groups": "[]"}]
        flags = await store.fetch_all("SELECT DISTINCT must_change_password AS f FROM users")
        assert flags == [{"f": 0}]
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO user_groups (user_id, name) VALUES ('u_1', 'a')")
            await tx.execute("INSERT INTO user_groups (user_id, name) VALUES ('u_1', 'b')")
            await tx.execute("INSERT INTO user_groups (user_id, name) VALUES ('u_2', 'a')")
        # Once per user and group; only for a user who exists.
        for row in (("u_1", "a"), ("u_none", "c")):
            with pytest.raises(StoreError):
                async with store.transaction() as tx:
                    await tx.execute("INSERT INTO user_groups (user_id, name) VALUES (?, ?)",
                                     row)
        # A user's groups go with the user.
        async with store.transaction() as tx:
            await tx.execute("DELETE FROM users WHERE id = 'u_1'")
        left = await store.fetch_all("SELECT user_id, name FROM user_groups ORDER BY name")
        assert left == [{"user_id": "u_2", "name": "a"}]
