"""API tokens for automation: shown once, stored as SHA-256, never above the owner's role.

Owns the `api_tokens` table and token scopes: an `api` token authenticates to the HTTP API, a
`metrics` token to `GET /metrics` and nothing else. A token's effective role is the lower of its
own and its owner's current role; a disabled owner's tokens fail at once (and disabling revokes
them, `users.Users.change`). Never stores or logs a token's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from appliance import roles
from appliance.audit import AuditLog, Context
from appliance.auth.users import User
from appliance.errors import BadRequest, Forbidden, NotFound
from appliance.roles import Principal
from appliance.secret import Secret
from appliance.store import Store
from appliance.timestamps import rfc3339

PREFIX = "apl_"
_TOKEN_RE = re.compile(r"apl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
MAX_EXPIRY_DAYS = 3650
API = "api"  # the HTTP API, with the token's role
METRICS = "metrics"  # GET /metrics only; owned by an admin
SCOPES = (API, METRICS)
_RECENT_MAX = 1024  # token rows kept between store changes (hashes and roles, no secret)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user_id: str
    username: str
    name: str
    role: str
    scope: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def public(self) -> dict[str, Any]:
        now = time.time()
        active = self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
        return {"id": self.id, "username": self.username, "name": self.name, "role": self.role,
                "scope": self.scope, "created_at": rfc3339(self.created_at),
                "expires_at": rfc3339(self.expires_at), "revoked_at": rfc3339(self.revoked_at),
                "last_used_at": rfc3339(self.last_used_at),
                "active": active}


def _info(row: dict[str, Any]) -> TokenInfo:
    return TokenInfo(id=row["id"], user_id=row["user_id"], username=row["username"],
                     name=row["name"], role=row["role"], scope=row["scope"],
                     created_at=row["created_at"],
                     expires_at=row["expires_at"], revoked_at=row["revoked_at"],
                     last_used_at=row["last_used_at"])


class Tokens:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit
        self._recent: dict[str, _Record] = {}  # token id: its kept record

    async def create(self, owner: User, *, name: str, role: str | None,
                     expires_days: float | None, context: Context,
                     scope: str = API,
                     without_2fa: bool = False) -> tuple[Secret[str], TokenInfo]:
        """A new token for `owner`; the raw token is returned here and never again. Whether the
        owner may hold one without the second factor their role requires is the caller's rule
        (`AuthService.create_token`); `without_2fa` records in the audit that it was waived."""
        if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
            raise BadRequest("token name must be 1-100 printable characters", code="bad_name",
                             field="name")
        if scope not in SCOPES:
            raise BadRequest(f"scope must be one of {', '.join(SCOPES)}", code="bad_scope",
                             field="scope")
        if scope == METRICS:
            if role not in (None, roles.ADMIN):
                raise BadRequest("a metrics token has no role to choose", code="bad_scope",
                                 field="role")
            if owner.role != roles.ADMIN:
                raise Forbidden("a metrics token must belong to an admin", code="forbidden_role")
        role = owner.role if role is None else roles.check_role(role)
        if not roles.at_least(owner.role, role):
            raise Forbidden(f"a token cannot have a role above its owner's ({owner.role})",
                            code="role_above_owner", field="role")
        if owner.disabled:
            raise Forbidden("the user is disabled", code="user_disabled")
        expires_at = None
        if expires_days is not None:
            if (isinstance(expires_days, bool) or not isinstance(expires_days, int | float)
                    or not 0 < expires_days <= MAX_EXPIRY_DAYS):
                raise BadRequest(f"expires_days must be a number of days, 1 to {MAX_EXPIRY_DAYS}",
                                 code="bad_expiry", field="expires_days")
            expires_at = time.time() + float(expires_days) * 86400
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO api_tokens (id, user_id, name, role, scope, secret_hash, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (token_id, owner.id, name, role, scope, _hash(secret), now, expires_at))
            await self.audit.record(tx, action="token.create", target=f"token:{token_id}",
                                    details={"owner": owner.username, "name": name, "role": role,
                                             "scope": scope, "expires_at": expires_at,
                                             **({"without_2fa": True} if without_2fa else {})},
                                    context=context)
        info = await self.get(token_id)
        assert info is not None
        return Secret(f"{PREFIX}{token_id}_{secret}"), info

    async def get(self, token_id: str) -> TokenInfo | None:
        row = await self.store.fetch_one(
            "SELECT t.*, u.username FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.id = ?", (token_id,))
        return _info(row) if row else None

    async def list(self, user_id: str | None = None) -> list[TokenInfo]:
        if user_id is None:
            rows = await self.store.fetch_all(
                "SELECT t.*, u.username FROM api_tokens t JOIN users u ON u.id = t.user_id"
                " ORDER BY t.created_at")
        else:
            rows = await self.store.fetch_all(
                "SELECT t.*, u.username FROM api_tokens t JOIN users u ON u.id = t.user_id"
                " WHERE t.user_id = ? ORDER BY t.created_at", (user_id,))
        return [_info(row) for row in rows]

    async def revoke(self, token_id: str, *, context: Context,
                     owner_id: str | None = None) -> TokenInfo:
        async with self.store.transaction() as tx:
            row = await tx.fetch_one("SELECT user_id, revoked_at FROM api_tokens WHERE id = ?",
                                     (token_id,))
            if row is None or (owner_id is not None and row["user_id"] != owner_id):
                raise NotFound("no such token", code="token_not_found")
            if row["revoked_at"] is None:
                await tx.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ?",
                                 (time.time(), token_id))
                await self.audit.record(tx, action="token.revoke", target=f"token:{token_id}",
                                        context=context)
        info = await self.get(token_id)
        assert info is not None
        return info

    # A token's record: what its check needs from its row joined with its owner's, and the
    # principal it acts as. Kept in memory (`_kept`, no await) until the store changes
    # (`Store.version`), then read again (`_read`): a revocation, a disabled owner or a lowered
    # role, from this process or the CLI, counts from the next request.

    def _kept(self, token_id: str) -> _Record | None:
        """The kept record, if the store has not changed since it was read."""
        kept = self._recent.get(token_id)
        if kept is not None and kept.version == self.store.version():
            return kept
        return None

    async def _read(self, token_id: str) -> _Record | None:
        version = self.store.version()
        row = await self.store.lookup(
            "SELECT t.secret_hash, t.role AS token_role, t.scope, t.expires_at, t.revoked_at,"
            " t.last_used_at, u.id AS user_id, u.username, u.role, u.disabled"
            " FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?", (token_id,))
        if row is None:
            return None
        found = Principal(user_id=row["user_id"], username=row["username"],
                          role=roles.lower(row["token_role"], row["role"]), via="token",
                          credential_id=token_id)
        if row["revoked_at"] is not None or row["disabled"]:
            usable_until = -math.inf
        elif row["expires_at"] is not None:
            usable_until = float(row["expires_at"])
        else:
            usable_until = math.inf
        record = _Record(version if version is not None else -1,
                         str(row["secret_hash"]).encode(), usable_until, row["last_used_at"],
                         str(row["scope"]), found)
        if version is not None:
            if len(self._recent) >= _RECENT_MAX:
                self._recent.clear()
            self._recent[token_id] = record
        return record

    async def authenticate(self, raw: str, scope: str = API) -> Principal | None:
        """The principal a bearer token acts as, or None (also for a token of another scope:
        a metrics token is no credential for the API, nor an API token for /metrics).
        Constant-time secret comparison."""
        match = _TOKEN_RE.fullmatch(raw.strip())
        if match is None:
            return None
        token_id, secret = match.groups()
        record = self._kept(token_id) or await self._read(token_id)
        offered = _hash(secret).encode()
        if record is None:
            hmac.compare_digest(_NO_SUCH_TOKEN, offered)  # the same work as for a known id
            return None
        if not hmac.compare_digest(record.secret_hash, offered) or record.scope != scope:
            return None
        now = time.time()
        if now >= record.usable_until:  # revoked, owner disabled, or expired
            return None
        if record.last_used_at is None or now - record.last_used_at >= 60:
            async with self.store.transaction() as tx:
                await tx.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
                                 (now, token_id))
        return record.principal


class _Record(NamedTuple):
    """A token's check, from its row and its owner's (`Tokens._read`)."""

    version: int  # the store's `data_version` when it was read
    secret_hash: bytes  # the SHA-256 of the secret, hex, as stored
    usable_until: float  # `expires_at`; +inf if it never expires; -inf if revoked or disabled
    last_used_at: float | None
    scope: str  # `API` or `METRICS`: where the token is a credential
    principal: Principal


_NO_SUCH_TOKEN = _hash("no-such-token").encode()
