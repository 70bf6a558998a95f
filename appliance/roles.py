"""Roles and the principal a request acts as: admin > developer > viewer.

Owns the role names and their order, for every layer (settings, auth, the HTTP layer, and the
console, which reads them from `GET /api/v1/roles`). Never decides which route needs which role
(that is http/access).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from appliance.errors import BadRequest

ADMIN = "admin"
DEVELOPER = "developer"
VIEWER = "viewer"
LOWEST_FIRST = (VIEWER, DEVELOPER, ADMIN)  # the order: each may what the ones before it may
ROLES = tuple(reversed(LOWEST_FIRST))  # as choices are offered (CLI, settings): highest first
_RANK = {role: place for place, role in enumerate(LOWEST_FIRST, start=1)}


def rank(role: str) -> int:
    return _RANK.get(role, 0)


def at_least(role: str, needed: str) -> bool:
    """True when `role` is `needed` or above it."""
    return _RANK.get(role, 0) >= _RANK.get(needed, 0) > 0


def lower(a: str, b: str) -> str:
    return a if rank(a) <= rank(b) else b


def describe() -> dict[str, list[str]]:
    """The roles as data, lowest first, for the API and the console."""
    return {"roles": list(LOWEST_FIRST)}


def check_role(value: object) -> str:
    if not isinstance(value, str) or value not in _RANK:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}", code="bad_role", field="role")
    return value


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. `role` is the effective role (a token's never exceeds its owner's)."""

    user_id: str
    username: str
    role: str
    via: str  # "session" or "token"
    credential_id: str  # the session's hash prefix or the token id: for audit, never the secret
    enrolment_required: bool = False
    password_change_required: bool = False  # a session after an administrator's reset

    @functools.cached_property  # read for every request's audit entry
    def actor(self) -> str:
        if self.via == "token":
            return f"{self.username} (token {self.credential_id})"
        return self.username

    def at_least(self, needed: str) -> bool:
        return _RANK.get(self.role, 0) >= _RANK.get(needed, 0) > 0  # `at_least`, inline
