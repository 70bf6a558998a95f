"""Helpers for tests of several instances on one store (no tests here): the store kinds those
tests run on, and one store opened twice, as two instances would open it.

Today only SQLite (several processes, or connections, on one file: SQLite serialises their writers
as a shared PostgreSQL store does with its advisory lock). When the PostgreSQL store lands, add
"postgresql" to `SHARED_STORE_KINDS` and a branch to `open_twice` (a cluster from the fixtures in
tests/conftest.py), and every test parametrised on it runs there too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from appliance.store import Store, open_sqlite_store

SHARED_STORE_KINDS = ("sqlite",)


@contextlib.asynccontextmanager
async def open_twice(kind: str, where: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two independent handles on one new store (own connections each), migrated."""
    if kind != "sqlite":
        raise AssertionError(f"no shared store of kind {kind!r} in the tests yet")
    path = where / "shared.db"
    first = await open_sqlite_store(path)
    try:
        second = await open_sqlite_store(path)
        try:
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()
