"""Helpers for tests of several instances on one store (no tests here): the store kinds those
tests run on, a new store of each kind (bare, or initialised with its keyring and vault open),
one store opened twice as two instances would open it (one after the other, or a PostgreSQL
test database by two instances starting at once), and the state directories of instances that
share one.

SQLite: several processes (or connections) on one file; SQLite serialises their writers as the
PostgreSQL store does with its advisory lock, and every instance serves from one state directory.
PostgreSQL: a fresh database per test on the session's cluster (tests/conftest.py's
`postgres_server`: one cluster for the whole run); each instance has a state directory of its
own holding the same instance secret, as a real deployment on several machines would.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from appliance import bootstrap, settings, state_dir
from appliance.egress import Dialer, PolicyHolder
from appliance.keyring import SecretVault, open_vault
from appliance.settings import Settings
from appliance.store import Store, open_store
from appliance.store.postgres import PostgresStore
from tests.support.keyring import TEST_TUNING

if TYPE_CHECKING:
    from tests.conftest import StoreDatabase

SHARED_STORE_KINDS = ("sqlite", "postgresql")


@contextlib.contextmanager
def new_store(kind: str, request: pytest.FixtureRequest, where: Path) -> Iterator[dict[str, str]]:
    """The settings (APPLIANCE_STORE_* variables) of a new, empty store of `kind`; SQLite: the
    file `where/state/appliance.db` (where the first instance's state directory keeps it)."""
    if kind == "sqlite":
        yield {"APPLIANCE_STORE_URL": f"sqlite://{(where / 'state' / state_dir.STORE_FILE).absolute()}"}
        return
    if kind != "postgresql":
        raise AssertionError(f"no shared store of kind {kind!r} in the tests")
    from tests.conftest import new_store_database

    server = request.getfixturevalue("postgres_server")
    database = new_store_database(server, where)
    try:
        yield database.env()
    finally:
        server.sql(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)", database="postgres")


@contextlib.asynccontextmanager
async def open_twice(kind: str, where: Path, request: pytest.FixtureRequest
                     ) -> AsyncIterator[tuple[Store, Store]]:
    """Two independent handles on one new store of `kind` (own connections each), migrated."""
    with new_store(kind, request, where) as env:
        s = settings.load(env=env, flags={"state_dir": str(state_dir.ensure(where / "state"))})
        first = await open_store(s, Dialer(PolicyHolder(s.egress)))
        try:
            second = await open_store(s, Dialer(PolicyHolder(s.egress)))
            try:
                yield first, second
            finally:
                await second.close()
        finally:
            await first.close()


def store_settings(database: StoreDatabase, state: Path, **env: str) -> settings.Settings:
    """The settings of an instance on the PostgreSQL test database `database`, state in `state`."""
    return settings.load(env=database.env(**env), flags={"state_dir": str(state)})


async def open_pg(database: StoreDatabase, state: Path) -> PostgresStore:
    """The PostgreSQL test database `database`, opened (and migrated) as an instance opens it."""
    s = store_settings(database, state)
    store = await open_store(s, Dialer(PolicyHolder(s.egress)))
    assert isinstance(store, PostgresStore)
    return store


@contextlib.asynccontextmanager
async def two_instances(database: StoreDatabase, tmp_path: Path
                        ) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """`database` opened by two instances at once (each migrating it if no one has yet)."""
    a, b = await asyncio.gather(open_pg(database, tmp_path), open_pg(database, tmp_path))
    try:
        yield a, b
    finally:
        await asyncio.gather(a.close(), b.close())


@contextlib.asynccontextmanager
async def keyed_store(kind: str, where: Path, request: pytest.FixtureRequest
                      ) -> AsyncIterator[tuple[Settings, Store, SecretVault]]:
    """A new store of `kind` with its state directory, instance secret and keyring (cheap
    scrypt), and the vault over it."""
    with new_store(kind, request, where) as env:
        s = settings.load(env=env, flags={"state_dir": str(where / "state")})
        await bootstrap.init_state(s)
        store = await open_store(s, Dialer(PolicyHolder(s.egress)))
        try:
            yield s, store, await open_vault(s, store, tuning=TEST_TUNING)
        finally:
            await store.close()


def instance_state(kind: str, first: Path, name: str) -> Path:
    """The state directory of one more instance of the store `first` (an initialised state
    directory) serves: SQLite, `first` itself (the store is its file); PostgreSQL, a new one
    beside it holding only the same instance secret."""
    if kind == "sqlite":
        return first
    state = first.parent / f"state-{name}"
    state_dir.ensure(state)
    key = state / state_dir.INSTANCE_SECRET_FILE
    shutil.copyfile(first / state_dir.INSTANCE_SECRET_FILE, key)
    key.chmod(state_dir.FILE_MODE)
    return state
