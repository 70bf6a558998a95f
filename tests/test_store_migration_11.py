"""Store migration 11 (the `mysql` datasource kind) on both stores: a store at version 10 with
datasources and the queries that reference them migrates, rows, columns, indexes and foreign keys
intact; 'mysql' is then accepted and an unknown kind still refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import StoreError
from appliance.state_dir import STORE_FILE
from tests.support.store_migration import (
    DS_COLUMNS,
    Q_COLUMNS,
    catalogue,
    insert_catalogue,
    new_state,
    opened,
    store_env,  # noqa: F401  (the fixture, both stores)
)


def sqlite_shape(path: Path) -> dict[str, Any]:
    """Columns (type, not-null, default, key), indexes (unique, columns, collation), foreign keys
    and STRICT of the two tables, as SQLite itself reports them."""
    conn = sqlite3.connect(path)
    try:
        shape: dict[str, Any] = {}
        for table in ("datasources", "queries"):
            indexes = []
            for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
                columns = [(r[2], r[4]) for r in conn.execute(f"PRAGMA index_xinfo({name})")
                           if r[5]]  # key columns, with their collation
                indexes.append((name if origin == "c" else origin, unique, partial, columns))
            shape[table] = {
                "columns": conn.execute(f"PRAGMA table_xinfo({table})").fetchall(),
                "indexes": sorted(indexes),
                "foreign_keys": conn.execute(f"PRAGMA foreign_key_list({table})").fetchall(),
                "strict": conn.execute("SELECT strict FROM pragma_table_list WHERE name = ?",
                                       (table,)).fetchone(),
            }
        return shape
    finally:
        conn.close()


def postgres_shape(database: Any) -> str:
    return str(database.sql(
        "SELECT table_name, column_name, data_type, is_nullable, collation_name,"
        " column_default FROM information_schema.columns"
        " WHERE table_name IN ('datasources', 'queries') ORDER BY 1, 2;"
        " SELECT conrelid::regclass, conname, contype, pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE conrelid IN ('datasources'::regclass, 'queries'::regclass)"
        " AND conname <> 'datasources_kind_check' ORDER BY 1, 2;"
        " SELECT indexname, indexdef FROM pg_indexes"
        " WHERE tablename IN ('datasources', 'queries') ORDER BY 1"))


async def test_a_version_10_store_migrates_with_rows_and_foreign_keys_intact(
        store_env: tuple[str, dict[str, str], Any], tmp_path: Path) -> None:  # noqa: F811
    kind, env, database = store_env
    state = new_state(tmp_path)
    async with opened(env, state, 10) as store:
        assert await store.schema_version() == 10
        async with store.transaction() as tx:
            await insert_catalogue(tx)
        # At version 10 the kind is refused: the migration is what lets it in.
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                                 "('ds-x', 'early', 'mysql', '{}', 1, 0, 0)")
        before = await catalogue(store)
    shape_before = (sqlite_shape(state / STORE_FILE) if kind == "sqlite"
                    else postgres_shape(database))

    # This migration's own result; later ones have their tests.
    async with opened(env, state, 11) as store:
        assert await store.schema_version() >= 11  # and later ones
        assert await catalogue(store) == before
        assert len(before[0]) == 3 and len(before[1]) == 3

        # A mysql datasource is accepted, with a query on it.
        async with store.transaction() as tx:
            await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                             "('ds-4', 'Maria', 'mysql', '{}', 1, 5.0, 5.0)")
            await tx.execute(f"INSERT INTO queries ({Q_COLUMNS}) VALUES "
                             "('q-4', 'maria', 'ds-4', 'SELECT 4', '[]', NULL, NULL, 1, 5, 5)")
        # An unknown kind is still refused, and nothing of that transaction stays.
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                                 "('ds-5', 'Oracle', 'oracle', '{}', 1, 6.0, 6.0)")
        # Names are still unique without regard to case.
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                                 "('ds-6', 'ORDERS', 'mysql', '{}', 1, 6.0, 6.0)")
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO queries ({Q_COLUMNS}) VALUES "
                                 "('q-5', 'BY ID', 'ds-2', 'x', '[]', NULL, NULL, 1, 5, 5)")
        # The foreign key still holds both ways: no query on a missing datasource, and a
        # datasource with queries cannot go (ON DELETE RESTRICT).
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO queries ({Q_COLUMNS}) VALUES "
                                 "('q-6', 'orphan', 'ds-none', 'x', '[]', NULL, NULL, 1, 5, 5)")
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.execute("DELETE FROM datasources WHERE id = 'ds-1'")
        # A datasource without queries can.
        async with store.transaction() as tx:
            await tx.execute("DELETE FROM datasources WHERE id = 'ds-3'")
        ids = await store.fetch_all("SELECT id FROM datasources ORDER BY id")
        assert [r["id"] for r in ids] == ["ds-1", "ds-2", "ds-4"]

    if kind == "sqlite":
        after = sqlite_shape(state / STORE_FILE)
        assert after == shape_before
        assert after["queries"]["foreign_keys"] == [
            (0, 0, "datasources", "datasource_id", "id", "NO ACTION", "RESTRICT", "NONE")]
        assert after["datasources"]["strict"] == (1,) and after["queries"]["strict"] == (1,)
        conn = sqlite3.connect(state / STORE_FILE)
        try:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'")}
            assert not {t for t in tables if t.endswith("_new")}
            # STRICT still refuses a value of the wrong type.
            conn.execute("PRAGMA foreign_keys = ON")
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                             "('ds-7', 'typed', 'mysql', '{}', 'one', 0, 0)")
        finally:
            conn.close()
    else:
        assert postgres_shape(database) == shape_before
        check = database.sql("SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                             " WHERE conname = 'datasources_kind_check'")
        assert "'mysql'" in check
        # No orphan anywhere (what foreign_key_check asks SQLite).
        assert database.sql("SELECT count(*) FROM queries q LEFT JOIN datasources d"
                            " ON d.id = q.datasource_id WHERE d.id IS NULL").strip() == "0"


async def test_a_fresh_store_is_created_at_11_and_takes_mysql(
        store_env: tuple[str, dict[str, str], Any], tmp_path: Path) -> None:  # noqa: F811
    _, env, _ = store_env
    async with opened(env, new_state(tmp_path)) as store:
        assert await store.schema_version() >= 11  # and the later ones
        async with store.transaction() as tx:
            await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                             "('ds-1', 'Maria', 'mysql', '{}', 1, 5.0, 5.0)")
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES "
                                 "('ds-2', 'x', 'MYSQL', '{}', 1, 5.0, 5.0)")
