"""Which store the settings name (`[store] url`), and opening it: the one way every part of the
appliance (the core, `doctor`, the TLS diagnosis, backups) gets its store.

Owns the choice between SQLite and PostgreSQL, the unmigrated look a diagnosis takes
(`inspected_store`), and where the PostgreSQL password comes from
(`store.password_file`, else the systemd credential `store-password`). Never logs or prints the
password, and never imports the PostgreSQL driver unless the URL names PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import state_dir
from appliance.errors import StoreError, StoreUnavailable
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.store.base import Store
from appliance.store.sqlite import open_sqlite_store

if TYPE_CHECKING:
    from appliance.egress import Dialer
    from appliance.store.postgres import PostgresTarget

CREDENTIAL_NAME = "store-password"


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file the settings name (None: the store is PostgreSQL)."""
    url = settings.store.url
    if url.scheme != "sqlite":
        return None
    return url.path or settings.server.state_dir.absolute() / state_dir.STORE_FILE


def describe(settings: Settings) -> str:
    """The store as one may name it in a message (never with a password)."""
    path = sqlite_path(settings)
    return str(path) if path is not None else str(settings.store.url)


@contextlib.asynccontextmanager
async def inspected_store(settings: Settings) -> AsyncIterator[Store]:
    """The store as it is, for a diagnosis (`doctor`, `tls` checks): never migrated nor created,
    connected under the settings' own egress policy (the dialer a core would start from), closed
    on the way out. `StoreError` when it does not open."""
    from appliance.egress import Dialer, PolicyHolder

    store = await open_store(settings, Dialer(PolicyHolder(settings.egress)), migrate=False)
    try:
        yield store
    finally:
        await store.close()


async def open_store(settings: Settings, dialer: Dialer, *, migrate: bool = True,
                     must_exist: bool = False) -> Store:
    """The store the settings name, its schema brought to the latest version with `migrate`.
    `must_exist`: refuse to create one (SQLite: the file; PostgreSQL: the schema)."""
    path = sqlite_path(settings)
    if path is not None:
        if must_exist and not path.exists():
            state = settings.server.state_dir.absolute()
            raise StoreError(f"no store at {path}; run `appliance init --state-dir {state}`")
        return await open_sqlite_store(path, migrate=migrate)
    from appliance.store.postgres import open_postgres_store

    return await open_postgres_store(postgres_target(settings), dialer, migrate=migrate,
                                     must_exist=must_exist)


def postgres_target(settings: Settings) -> PostgresTarget:
    from appliance.store.postgres import PostgresTarget

    store, url = settings.store, settings.store.url
    return PostgresTarget(host=url.host, port=url.port, user=url.user, database=url.database,
                          tls=store.tls, ca_file=store.ca_file, password=password(settings))


def password(settings: Settings) -> Secret[str] | None:
    """`store.password_file` when set, else the systemd credential `store-password` when
    present, else None (a server that needs no password: a client certificate, trust)."""
    if settings.store.password_file is not None:
        return _read(settings.store.password_file, "store.password_file")
    directory = settings.environment.credentials_directory
    if directory is not None and (directory / CREDENTIAL_NAME).exists():
        return _read(directory / CREDENTIAL_NAME, f"systemd credential {CREDENTIAL_NAME}")
    return None


def _read(path: Path, what: str) -> Secret[str]:
    try:
        data = state_dir.read_private(path, others_may_read=what.startswith("systemd"))
    except ValueError as exc:
        raise StoreUnavailable(f"{what}: {exc}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise StoreUnavailable(f"{what}: {path} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text or "\n" in text or "\x00" in text:
        raise StoreUnavailable(f"{what}: {path} must hold the password on one line")
    return Secret(text)
