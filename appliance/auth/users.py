"""User accounts: create, list, change role, groups, disable, change or reset a password.

Owns the `users` table (its `must_change_password` flag: set when an administrator chose the
password, at creation or a reset; cleared by the user's own change). Never returns or logs a
password hash outside this package; every change is audited in the same transaction
(fail-closed) and a privilege change ends the user's sessions. Disabling a user also revokes
their API tokens for good: enabling them again brings none back.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance import roles
from appliance.audit import AuditLog, Context
from appliance.auth.membership import Membership
from appliance.auth.passwords import Passwords
from appliance.errors import BadRequest, Conflict, NotFound
from appliance.groups import check_groups
from appliance.secret import Secret
from appliance.store import Store, Transaction
from appliance.timestamps import rfc3339

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
RESERVED_NAMES = frozenset({"me"})


@dataclass(frozen=True)
class User:
    id: str
    username: str
    role: str
    disabled: bool
    totp_enabled: bool
    totp_last_step: int
    created_at: float
    password_hash: str
    must_change_password: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> User:
        return cls(id=row["id"], username=row["username"], role=row["role"],
                   disabled=bool(row["disabled"]), totp_enabled=bool(row["totp_enabled"]),
                   totp_last_step=int(row["totp_last_step"]), created_at=row["created_at"],
                   password_hash=row["password_hash"],
                   must_change_password=bool(row["must_change_password"]))

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "role": self.role,
                "disabled": self.disabled, "totp_enabled": self.totp_enabled,
                "must_change_password": self.must_change_password,
                "created_at": rfc3339(self.created_at)}

    def __repr__(self) -> str:
        return f"<User {self.username} {self.role}>"


@dataclass(frozen=True)
class Change:
    """What `Users.change` did: the user as it is now, and the API tokens it revoked."""

    user: User
    revoked_tokens: tuple[str, ...]


def check_username(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise BadRequest("username must be 1-64 letters, digits or . _ @ - (starting with a "
                         "letter or digit)", code="bad_username", field="username")
    if value.lower() in RESERVED_NAMES:
        raise BadRequest(f"the username {value!r} is reserved", code="bad_username",
                         field="username")
    return value


class Users:
    def __init__(self, store: Store, audit: AuditLog, passwords: Passwords) -> None:
        self.store = store
        self.audit = audit
        self.passwords = passwords
        self.groups = Membership(store)

    async def get(self, username: str, tx: Transaction | None = None) -> User | None:
        sql, params = "SELECT * FROM users WHERE username = ?", (username,)
        row = await (tx.fetch_one(sql, params) if tx else self.store.fetch_one(sql, params))
        return User.from_row(row) if row else None

    async def get_by_id(self, user_id: str, tx: Transaction | None = None) -> User | None:
        sql, params = "SELECT * FROM users WHERE id = ?", (user_id,)
        row = await (tx.fetch_one(sql, params) if tx else self.store.fetch_one(sql, params))
        return User.from_row(row) if row else None

    async def require(self, username: str, tx: Transaction | None = None) -> User:
        user = await self.get(username, tx)
        if user is None:
            raise NotFound(f"no user named {username!r}", code="user_not_found")
        return user

    async def list(self) -> list[User]:
        rows = await self.store.fetch_all("SELECT * FROM users ORDER BY username")
        return [User.from_row(row) for row in rows]

    async def count(self) -> int:
        row = await self.store.fetch_one("SELECT COUNT(*) AS n FROM users")
        return int(row["n"]) if row else 0

    async def create(self, *, username: str, role: str, password: Secret[str],
                     must_change_password: bool, context: Context,
                     groups: Sequence[str] = ()) -> User:
        """A new user. `must_change_password`: the password is someone else's choice (an
        administrator's), so the user's sessions reach nothing but choosing their own until
        they do; every caller says (only `init`'s first admin and an operator's explicit
        automation account keep theirs)."""
        check_username(username)
        roles.check_role(role)
        member_of = check_groups(list(groups))
        password_hash = await self.passwords.hash(password)
        now = time.time()
        user_id = "u_" + secrets.token_hex(8)
        async with self.store.transaction() as tx:
            if await self.get(username, tx) is not None:
                raise Conflict(f"a user named {username!r} already exists", code="user_exists")
            await tx.execute(
                "INSERT INTO users (id, username, role, password_hash, must_change_password,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, username, role, password_hash, int(must_change_password), now, now))
            await self.groups.replace(tx, user_id, member_of)
            await self.audit.record(tx, action="user.create", target=f"user:{username}",
                                    details={"role": role,
                                             "change_at_first_login": must_change_password,
                                             **({"groups": list(member_of)} if member_of
                                                else {})},
                                    context=context)
            user = await self.require(username, tx)
        return user

    async def update(self, username: str, *, context: Context, role: str | None = None,
                     disabled: bool | None = None,
                     password: Secret[str] | None = None,
                     must_change_password: bool | None = None) -> User:
        """Change role, disabled flag or password; a change ends the user's sessions."""
        return (await self.change(username, context=context, role=role, disabled=disabled,
                                  password=password,
                                  must_change_password=must_change_password)).user

    async def change(self, username: str, *, context: Context, role: str | None = None,
                     disabled: bool | None = None,
                     password: Secret[str] | None = None,
                     must_change_password: bool | None = None,
                     groups: Sequence[str] | None = None) -> Change:
        """`update`, also saying which API tokens the change revoked: disabling revokes every
        live token of the user, and so does enabling (a token left live by a disable from before
        this rule must not come back with its owner). `groups`: the user's groups, all of them
        (a change of groups alone keeps the sessions: it counts from the next request anyway).
        `must_change_password`: set with an administrator's new password, cleared with the
        user's own."""
        if role is not None:
            roles.check_role(role)
        member_of = check_groups(list(groups)) if groups is not None else None
        new_hash = await self.passwords.hash(password) if password is not None else None
        async with self.store.transaction() as tx:
            user = await self.require(username, tx)
            changed: dict[str, Any] = {}
            if role is not None and role != user.role:
                changed["role"] = {"from": user.role, "to": role}
            if disabled is not None and disabled != user.disabled:
                changed["disabled"] = disabled
            if new_hash is not None:
                changed["password_changed"] = True
            if (must_change_password is not None
                    and must_change_password != user.must_change_password):
                changed["must_change_password"] = must_change_password
            if member_of is not None:
                moved = await self.groups.replace(tx, user.id, member_of)
                if moved["added"] or moved["removed"]:
                    changed["groups"] = {k: v for k, v in moved.items() if v}
            if not changed:
                return Change(user, ())
            if user.role == roles.ADMIN and ("role" in changed or changed.get("disabled")):
                await self._keep_one_admin(tx, user)
            await tx.execute(
                "UPDATE users SET role = ?, disabled = ?, password_hash = ?,"
                " must_change_password = ?, updated_at = ? WHERE id = ?",
                (role or user.role, int(user.disabled if disabled is None else disabled),
                 new_hash or user.password_hash,
                 int(user.must_change_password if must_change_password is None
                     else must_change_password), time.time(), user.id))
            if set(changed) - {"groups"}:
                # Any privilege change (or a new password) ends every session of the user.
                await tx.execute("DELETE FROM sessions WHERE user_id = ?", (user.id,))
            revoked: tuple[str, ...] = ()
            if "disabled" in changed:
                revoked = await self.revoke_tokens(tx, user.id)
            action = "user.disable" if changed.get("disabled") is True else "user.update"
            await self.audit.record(tx, action=action, target=f"user:{user.username}",
                                    details={"changed": sorted(changed), **{
                                        k: v for k, v in changed.items()
                                        if k in ("role", "disabled", "groups")},
                                        # Not under its column's name: the audit redacts any
                                        # key that says "password".
                                        **({"change_at_next_login":
                                            changed["must_change_password"]}
                                           if "must_change_password" in changed else {}),
                                        **({"revoked": list(revoked)} if revoked else {})},
                                    context=context)
            return Change(await self.require(username, tx), revoked)

    @staticmethod
    async def revoke_tokens(tx: Transaction, user_id: str) -> tuple[str, ...]:
        """Revoke the user's live API tokens (the `api_tokens` row's `revoked_at`, as
        `Tokens.revoke` sets it); their ids."""
        rows = await tx.fetch_all(
            "SELECT id FROM api_tokens WHERE user_id = ? AND revoked_at IS NULL ORDER BY id",
            (user_id,))
        ids = tuple(str(row["id"]) for row in rows)
        if ids:
            await tx.execute("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ?"
                             " AND revoked_at IS NULL", (time.time(), user_id))
        return ids

    async def _keep_one_admin(self, tx: Transaction, user: User) -> None:
        row = await tx.fetch_one(
            "SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled = 0 AND id != ?",
            (user.id,))
        if not row or int(row["n"]) == 0:
            raise Conflict("this is the last enabled admin; create another admin first",
                           code="last_admin")

    async def set_password_hash(self, tx: Transaction, user_id: str, password_hash: str) -> None:
        await tx.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
                         (password_hash, time.time(), user_id))

    async def reset_password(self, username: str, password: Secret[str], *,
                             context: Context) -> Reset:
        """An administrator's reset (a lost password): the new password, to be changed at the
        next login (`must_change_password`), every session of the user ended and every live API
        token revoked, audited as `user.password.reset`, all in one transaction."""
        self.passwords.check_policy(password)
        new_hash = await self.passwords.hash(password)
        async with self.store.transaction() as tx:
            user = await self.require(username, tx)
            await tx.execute("UPDATE users SET password_hash = ?, must_change_password = 1,"
                             " updated_at = ? WHERE id = ?", (new_hash, time.time(), user.id))
            sessions = await tx.execute("DELETE FROM sessions WHERE user_id = ?", (user.id,))
            revoked = await self.revoke_tokens(tx, user.id)
            await self.audit.record(tx, action="user.password.reset",
                                    target=f"user:{user.username}",
                                    details={"sessions_ended": sessions,
                                             **({"revoked": list(revoked)} if revoked else {})},
                                    context=context)
        return Reset(sessions, revoked)


@dataclass(frozen=True)
class Reset:
    """What `Users.reset_password` ended: how many sessions, which API tokens."""

    sessions_ended: int
    revoked_tokens: tuple[str, ...]
