"""Helpers for the keyring tests (no tests here): a state directory with a store and a vault,
sealed with cheap scrypt parameters passed explicitly (the default is never lowered), and an
installed systemd unit under a test root that loads the instance secret as a credential (what
`keys change-password --root` follows).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from appliance import bootstrap, settings, state_dir
from appliance.keyring import SecretVault, open_vault
from appliance.settings import Settings
from appliance.store import SQLiteStore, open_sqlite_store
from tests.support.costs import TEST_TUNING


def make_settings(state: Path, env: Mapping[str, str] | None = None) -> Settings:
    return settings.load(env=dict(env or {}), flags={"state_dir": str(state)})


async def init_state(state: Path) -> Settings:
    s = make_settings(state)
    await bootstrap.init_state(s)
    return s


async def open_all(s: Settings) -> tuple[SQLiteStore, SecretVault]:
    store = await open_sqlite_store(s.server.state_dir.absolute() / state_dir.STORE_FILE)
    try:
        return store, await open_vault(s, store, tuning=TEST_TUNING)
    except BaseException:
        await store.close()
        raise


def plaintexts(count: int) -> dict[tuple[str, str, str], bytes]:
    out = {}
    for i in range(count):
        out[("datasource", f"ds-{i:04d}", "password")] = f"PLAINTEXT-pw-{i:04d}-Zq9".encode()
        if i % 3 == 0:
            out[("datasource", f"ds-{i:04d}", "api_key")] = f"PLAINTEXT-key-{i:04d}-\u00e9".encode()
    return out


async def populate(s: Settings, secrets: dict[tuple[str, str, str], bytes]) -> None:
    store, vault = await open_all(s)
    try:
        async with store.transaction() as tx:
            for (kind, record_id, field), value in secrets.items():
                await vault.put(tx, kind, record_id, field, value)
    finally:
        await store.close()


async def check_all(s: Settings, secrets: dict[tuple[str, str, str], bytes]) -> SecretVault:
    """Every secret opens to its plaintext (raises otherwise)."""
    store, vault = await open_all(s)
    try:
        for (kind, record_id, field), value in secrets.items():
            got = await vault.get(kind, record_id, field)
            assert got is not None, (kind, record_id, field)
            assert got.reveal() == value, (kind, record_id, field)
        return vault
    finally:
        await store.close()


def raw_sql(state: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(state / state_dir.STORE_FILE)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def install_unit(root: Path, credential: Path, *, encrypted: bool = False) -> None:
    """`root`/etc/systemd/system/appliance.service, loading `credential` (a file under `root`)
    as the `encryption-key` credential (`LoadCredentialEncrypted` when `encrypted`)."""
    unit = root / "etc/systemd/system/appliance.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    key = "LoadCredentialEncrypted" if encrypted else "LoadCredential"
    unit.write_text(f"[Service]\n{key}=encryption-key:/{credential.relative_to(root)}\n")
