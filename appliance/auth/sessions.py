"""Browser sessions: a 256-bit random id in a cookie, stored only as its SHA-256.

Owns the `sessions` table, idle and absolute timeouts. Never stores, logs or audits a session id;
the audit sees at most a prefix of its hash.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from appliance import roles
from appliance.roles import Principal
from appliance.secret import Secret
from appliance.settings import AuthSettings
from appliance.store import Store, Transaction

COOKIE_NAME = "__Host-appliance-session"
_ID_BYTES = 32
# last_seen is written at most this often per session (seconds), to keep reads cheap.
_TOUCH_EVERY = 15.0


def hash_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def label(id_hash: str) -> str:
    """What the audit may show of a session: a short prefix of the id's hash."""
    return "s:" + id_hash[:12]


class Sessions:
    def __init__(self, store: Store, settings: AuthSettings) -> None:
        self.store = store
        self.settings = settings

    async def create(self, tx: Transaction, *, user_id: str, role: str,
                     mfa_state: str) -> tuple[Secret[str], str]:
        """A new session; returns (the raw id for the cookie, its hash)."""
        raw = secrets.token_urlsafe(_ID_BYTES)
        id_hash = hash_id(raw)
        now = time.time()
        await tx.execute(
            "INSERT INTO sessions (id_hash, user_id, role, mfa_state, created_at, last_seen,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (id_hash, user_id, role, mfa_state, now, now,
             now + self.settings.session_absolute_timeout))
        return Secret(raw), id_hash

    async def lookup(self, raw: str) -> Principal | None:
        """The principal of a live session, or None (unknown, expired, or user disabled)."""
        if not raw or len(raw) > 256:
            return None
        id_hash = hash_id(raw)
        row = await self.store.lookup(
            "SELECT s.id_hash, s.role AS session_role, s.last_seen, s.expires_at,"
            " u.id AS user_id, u.username, u.role, u.disabled, u.totp_enabled,"
            " u.must_change_password"
            " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?",
            (id_hash,))
        if row is None:
            return None
        now = time.time()
        expired = (now >= row["expires_at"]
                   or now - row["last_seen"] >= self.settings.session_idle_timeout)
        if expired or row["disabled"] or row["session_role"] != row["role"]:
            async with self.store.transaction() as tx:
                await tx.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
            return None
        if now - row["last_seen"] >= _TOUCH_EVERY:
            async with self.store.transaction() as tx:
                await tx.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?",
                                 (now, id_hash))
        enrol = row["role"] in self.settings.require_2fa and not row["totp_enabled"]
        return Principal(user_id=row["user_id"], username=row["username"], role=row["role"],
                         via="session", credential_id=label(id_hash),
                         enrolment_required=enrol,
                         password_change_required=bool(row["must_change_password"]))

    async def delete(self, tx: Transaction, raw: str) -> bool:
        return await tx.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_id(raw),)) > 0

    async def delete_by_hash(self, tx: Transaction, id_hash: str) -> None:
        await tx.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    async def delete_for_user(self, tx: Transaction, user_id: str) -> int:
        return await tx.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    def mfa_state(self, role: str, totp_enabled: bool) -> str:
        if totp_enabled:
            return "done"
        return "enrol" if role in self.settings.require_2fa else "not_required"

    @staticmethod
    def role_ok(role: str) -> bool:
        return role in roles.ROLES
