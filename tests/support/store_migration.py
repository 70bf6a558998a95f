"""Helpers for the store migration tests (tests/test_store_migration_*.py; no tests here): both
stores as a fixture, a store opened by an appliance whose schema ended at an older version (as a
release of that time did), and the catalogue rows (datasources and the queries on them) written
at version 10 that later migrations must keep intact.

Owns those stores' opening and closing. Never changes the migrations themselves: an older
version is only `MIGRATIONS` and `LATEST` patched for the duration of the opening.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance import settings
from appliance.egress import Dialer, PolicyHolder
from appliance.store import open_store
from appliance.store.migrations import MIGRATIONS

DATASOURCES = [
    ("ds-1", "Orders", "postgres", '{"host": "db"}', 3, 1.5, 2.5),
    ("ds-2", "files", "sqlite", '{"path": "/x"}', 1, 3.0, 3.0),
    ("ds-3", "Shop API", "rest", "{}", 2, 4.0, 4.25),
]
QUERIES = [
    ("q-1", "by id", "ds-1", "SELECT 1", "[]", 1000, 50, 1, 1.0, 1.0),
    ("q-2", "all", "ds-1", "SELECT 2", '[{"name": "x"}]', None, None, 4, 2.0, 2.5),
    ("q-3", "files", "ds-2", "SELECT 3", "[]", 5, None, 1, 3.0, 3.0),
]
DS_COLUMNS = "id, name, kind, config, version, created_at, updated_at"
Q_COLUMNS = ("id, name, datasource_id, body, parameters, timeout_ms, max_rows, version, "
             "created_at, updated_at")


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], Any]:
    """The store kind, the environment that selects it, and the PostgreSQL database (None for
    SQLite, whose file is in the test's state directory)."""
    if request.param == "postgres":
        database = request.getfixturevalue("store_database")
        return "postgres", database.env(), database
    return "sqlite", {}, None


def new_state(tmp_path: Path) -> Path:
    """An empty state directory (0700, as `init` makes it) for the store under test."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return state


def at_version(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """Make the stores believe the schema ends at `version` (as a release of that time did)."""
    older = tuple(m for m in MIGRATIONS if m.version <= version)
    for module in ("appliance.store.sqlite", "appliance.store.postgres"):
        monkeypatch.setattr(f"{module}.MIGRATIONS", older)
        monkeypatch.setattr(f"{module}.LATEST", version)


async def open_at(env: dict[str, str], state: Path) -> Any:
    """The store of `state` (or of the PostgreSQL database `env` names), migrated to the
    newest version the stores know of."""
    s = settings.load(env=env, flags={"state_dir": str(state)})
    return await open_store(s, Dialer(PolicyHolder(s.egress)))


@contextlib.asynccontextmanager
async def opened(env: dict[str, str], state: Path,
                 version: int | None = None) -> AsyncIterator[Any]:
    """`open_at`, as an appliance whose schema ends at `version` (every migration when None)
    would open it, kept at that version while open; closed afterwards."""
    with pytest.MonkeyPatch.context() as patched:
        if version is not None:
            at_version(patched, version)
        store = await open_at(env, state)
        try:
            yield store
        finally:
            await store.close()


async def insert_catalogue(tx: Any) -> None:
    """DATASOURCES and QUERIES, in the columns version 10 had."""
    for row in DATASOURCES:
        await tx.execute(f"INSERT INTO datasources ({DS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         row)
    for row in QUERIES:
        await tx.execute(f"INSERT INTO queries ({Q_COLUMNS}) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)


async def catalogue(store: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every datasource and query row, in those columns, by id."""
    return (await store.fetch_all(f"SELECT {DS_COLUMNS} FROM datasources ORDER BY id"),
            await store.fetch_all(f"SELECT {Q_COLUMNS} FROM queries ORDER BY id"))
