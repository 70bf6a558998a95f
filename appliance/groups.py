"""Group names and who may see a query that lists some, for every layer (like `roles`).

Owns the group-name rule (the user-name pattern, compared without case: kept lower-case) and the
visibility rule of a query: developers and admins see every query; a query with no groups is
every viewer's; one with groups is only for viewers in at least one of them. Never reads the
store (`auth/membership.py` owns who is in which group).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from appliance import roles
from appliance.errors import BadRequest
from appliance.roles import Principal

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_GROUPS = 50  # per user, and per query: a list to read, not a directory


def check_group(value: object, *, field: str = "groups") -> str:
    """A group name in its kept form (lower-case), or BadRequest naming `field`."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise BadRequest("a group name must be 1-64 letters, digits or . _ @ - (starting with "
                         "a letter or digit)", code="bad_group", field=field)
    return value.lower()


def check_groups(value: object, *, field: str = "groups") -> tuple[str, ...]:
    """A list of group names: kept form, duplicates (in any case) merged, sorted."""
    if not isinstance(value, list | tuple):
        raise BadRequest("'groups' must be a list of group names", code="bad_group",
                         field=field)
    names = sorted({check_group(item, field=field) for item in value})
    if len(names) > MAX_GROUPS:
        raise BadRequest(f"at most {MAX_GROUPS} groups", code="bad_group", field=field)
    return tuple(names)


def sees_every_query(principal: Principal) -> bool:
    """Developers and admins see (and edit) every query, whatever its groups."""
    return principal.at_least(roles.DEVELOPER)


def visible(query_groups: Iterable[str], member_of: Iterable[str]) -> bool:
    """For a viewer: a query with no groups is everyone's; else one shared group is needed."""
    wanted = frozenset(query_groups)
    return not wanted or not wanted.isdisjoint(member_of)
