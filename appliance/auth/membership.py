"""Who is in which group: the `user_groups` table, and the check a viewer's request makes.

Owns the `user_groups` table (names in `appliance.groups`' kept form). Never caches a membership:
each check reads the store (one indexed point read), so a change counts from the next request on
every instance.
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.errors import BadRequest
from appliance.groups import MAX_GROUPS, sees_every_query
from appliance.roles import Principal
from appliance.store import Store, Transaction


class Membership:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def of(self, user_id: str, tx: Transaction | None = None) -> tuple[str, ...]:
        """The user's groups, sorted."""
        sql, params = "SELECT name FROM user_groups WHERE user_id = ? ORDER BY name", (user_id,)
        rows = await (tx.fetch_all(sql, params) if tx else self.store.fetch_all(sql, params))
        return tuple(str(row["name"]) for row in rows)

    async def may_see(self, principal: Principal, query_groups: tuple[str, ...]) -> bool:
        """Whether `principal` may see (and run) a query with these groups: no store read for a
        developer, an admin or a query for every viewer; else one indexed point read."""
        if not query_groups or sees_every_query(principal):
            return True
        marks = ", ".join("?" * len(query_groups))
        row = await self.store.lookup(
            f"SELECT 1 AS member FROM user_groups WHERE user_id = ? AND name IN ({marks})"
            " LIMIT 1", (principal.user_id, *query_groups))
        return row is not None

    async def replace(self, tx: Transaction, user_id: str, groups: Iterable[str]
                      ) -> dict[str, list[str]]:
        """Make the user's groups exactly `groups` (stored form); what was added and removed."""
        before = set(await self.of(user_id, tx))
        after = set(groups)
        if len(after) > MAX_GROUPS:
            raise BadRequest(f"at most {MAX_GROUPS} groups per user", code="bad_group",
                             field="groups")
        added, removed = sorted(after - before), sorted(before - after)
        for name in removed:
            await tx.execute("DELETE FROM user_groups WHERE user_id = ? AND name = ?",
                             (user_id, name))
        for name in added:
            await tx.execute("INSERT INTO user_groups (user_id, name) VALUES (?, ?)",
                             (user_id, name))
        return {"added": added, "removed": removed}
