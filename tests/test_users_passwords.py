"""Passwords: Argon2id, the length policy, and rehashing at login when the parameters change."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type

from appliance.audit import AuditLog, Context, FixedMacKeys
from appliance.auth import AuthService, Passwords
from appliance.errors import Unprocessable
from appliance.secret import Secret
from appliance.settings import AuthSettings
from appliance.store import open_sqlite_store

CHEAP = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)


async def test_policy() -> None:
    passwords = Passwords(CHEAP)
    for bad in ("", "short", "eleven-char"):
        with pytest.raises(Unprocessable):
            await passwords.hash(Secret(bad))
    with pytest.raises(Unprocessable):
        await passwords.hash(Secret("x" * 1025))
    stored = await passwords.hash(Secret("twelve-chars"))
    assert stored.startswith("$argon2id$")
    assert await passwords.verify(stored, Secret("twelve-chars"))
    assert not await passwords.verify(stored, Secret("twelve-charS"))
    assert not await passwords.verify(None, Secret("twelve-chars"))
    assert not await passwords.verify("not a hash", Secret("twelve-chars"))


async def test_login_rehashes_when_parameters_change(tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path / "a.db")
    audit = AuditLog(store, keys=FixedMacKeys.generate())
    settings = AuthSettings(require_2fa=())
    try:
        old = AuthService(store, audit, settings, passwords=Passwords(CHEAP))
        await old.users.create(username="pat", role="viewer",
                               password=Secret("pat-password-0123"),
                               must_change_password=False, context=Context())
        before = (await old.users.require("pat")).password_hash
        assert "m=8192,t=1,p=1" in before
        new = AuthService(store, audit, settings)  # the default (stronger) parameters
        assert new.passwords.needs_rehash(before)
        await new.login("pat", Secret("pat-password-0123"), None,
                        context=Context(client="127.0.0.1"))
        after = (await new.users.require("pat")).password_hash
        assert after != before and not new.passwords.needs_rehash(after)
        assert "m=65536,t=3,p=4" in after
        # A failed login changes nothing.
        again = (await new.users.require("pat")).password_hash
        with pytest.raises(Exception, match="invalid"):
            await new.login("pat", Secret("wrong-password-00"), None, context=Context())
        assert (await new.users.require("pat")).password_hash == again
    finally:
        await audit.close()
        await store.close()
