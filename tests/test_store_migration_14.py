"""Store migration 14 (query_secret_allowances) on both stores: a store at version 11 with
queries migrates with its rows intact; an allowance references its query, is unique per query
and fingerprint, and goes when its query is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import StoreError
from tests.test_store_migration_11 import (
    DATASOURCES,
    DS_COLUMNS,
    Q_COLUMNS,
    QUERIES,
    at_version,
    open_at,
    rows,
)
from tests.test_store_migration_11 import store_env as store_env  # the fixture, re-exported

ALLOWANCE = ("q-1", "a" * 32, "credential_header", "body", "headers.Authorization", "admin",
             5.0)
A_COLUMNS = "query_id, fingerprint, rule, field, place, allowed_by, allowed_at"


async def test_a_version_11_store_migrates_and_allowances_follow_their_query(
        store_env: tuple[str, dict[str, str], Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, env, _ = store_env
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with monkeypatch.context() as patched:
        at_version(patched, 11)
        store = await open_at(env, state)
        try:
            assert await store.schema_version() == 11
            async with store.transaction() as tx:
                for row in DATASOURCES:
                    await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                                     "(?, ?, ?, ?, ?, ?, ?)", row)
                for row in QUERIES:
                    await tx.execute(f"INSERT INTO queries ({Q_COLUMNS}) VALUES "
                                     "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            before = await rows(store)
        finally:
            await store.close()

    store = await open_at(env, state)
    try:
        assert await store.schema_version() >= 14
        assert await rows(store) == before
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
    finally:
        await store.close()
