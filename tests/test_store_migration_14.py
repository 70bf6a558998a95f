"""Store migration 14 (query_secret_allowances) on both stores: a store at version 11 with
queries migrates with its rows intact; an allowance references its query, is unique per query
and fingerprint, and goes when its query is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import StoreError
from tests.support.store_migration import (
    catalogue,
    insert_catalogue,
    new_state,
    opened,
    store_env,  # noqa: F401  (the fixture, both stores)
)

ALLOWANCE = ("q-1", "a" * 32, "credential_header", "body", "headers.Authorization", "admin",
             5.0)
A_COLUMNS = "query_id, fingerprint, rule, field, place, allowed_by, allowed_at"


async def test_a_version_11_store_migrates_and_allowances_follow_their_query(
        store_env: tuple[str, dict[str, str], Any], tmp_path: Path) -> None:  # noqa: F811
    _, env, _ = store_env
    state = new_state(tmp_path)
    async with opened(env, state, 11) as store:
        assert await store.schema_version() == 11
        async with store.transaction() as tx:
            await insert_catalogue(tx)
        before = await catalogue(store)

    async with opened(env, state) as store:
        assert await store.schema_version() >= 14
        assert await catalogue(store) == before
        async with store.transaction() as tx:
            await tx.execute(f"INSERT INTO query_secret_allowances ({A_COLUMNS}) VALUES "
                             "(?, ?, ?, ?, ?, ?, ?)", ALLOWANCE)
        with pytest.raises(StoreError):  # one allowance per query and fingerprint
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO query_secret_allowances ({A_COLUMNS}) VALUES "
                                 "(?, ?, ?, ?, ?, ?, ?)", ALLOWANCE)
        with pytest.raises(StoreError):  # only for a query that exists
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO query_secret_allowances ({A_COLUMNS}) VALUES "
                                 "(?, ?, ?, ?, ?, ?, ?)", ("q-none", *ALLOWANCE[1:]))
        async with store.transaction() as tx:
            await tx.execute("DELETE FROM queries WHERE id = ?", ("q-1",))
        assert await store.fetch_all("SELECT * FROM query_secret_allowances") == []
