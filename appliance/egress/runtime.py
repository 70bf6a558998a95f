"""Runtime egress settings: the admin's changes (`PUT /api/v1/egress`) stored over the file.

Owns the stored override (one JSON row in the store's `meta` table), its validation with the very
parsers the settings file uses, and the audited, all-or-nothing write. Never imports the HTTP layer.

Which wins: the settings file (and environment) is the base; a field changed through the API
overrides it, field by field, until it is reset (set to null, or `DELETE /api/v1/egress`). The
override is shared by every instance on the store: a change is merged into the stored row (not
this process's copy), and each instance applies another's change when the store reports it
(`follow`). A change that would deny the PostgreSQL store's own destination is refused
(`StoreCutOff`, 409): stored, it would cut every instance off its store; so is a reloaded
settings file (SIGHUP, `rebase`) that would deny it here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from appliance.audit import AuditLog, Context
from appliance.egress.dialer import Dialer
from appliance.egress.policy import EgressPolicy
from appliance.errors import BadRequest, Conflict
from appliance.settings import SCHEMA, EgressSettings
from appliance.store import Store, Transaction

log = logging.getLogger("appliance.egress")

FIELDS = ("source_address", "mode", "allow", "deny", "allow_private")
READ_ONLY = ("addresses_to_allow", "overridden")
META_KEY = "egress.runtime"
MAX_ENTRIES = 1000  # per list: a policy is checked on every connection


class InvalidEgressSetting(BadRequest):
    """A value in an egress change is not valid; the message names the field."""

    code = "invalid_setting"


class StoreCutOff(Conflict):
    """The change would deny the store's own destination (409); nothing was stored."""

    code = "egress_denies_store"


def parse_changes(body: Mapping[str, Any]) -> dict[str, Any]:
    """`{field: typed value, or None to reset}` from a request body; `InvalidEgressSetting` naming
    the first bad field. Each value goes through the settings file's parser for `egress.<field>`."""
    unknown = sorted(set(body) - set(FIELDS) - set(READ_ONLY))
    if unknown:
        raise InvalidEgressSetting(f"unknown field {unknown[0]!r}; the fields are "
                                   f"{', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name not in body:
            continue
        raw = body[name]
        if raw is None:
            out[name] = None
            continue
        if isinstance(raw, list) and len(raw) > MAX_ENTRIES:
            raise InvalidEgressSetting(f"{name}: at most {MAX_ENTRIES} entries", field=name)
        try:
            out[name] = SCHEMA["egress"][name].parse(raw)
        except ValueError as exc:
            raise InvalidEgressSetting(f"{name}: {exc}", field=name) from None
    return out


def merge(base: EgressSettings, override: Mapping[str, Any]) -> EgressSettings:
    """The effective settings: `base` with every overridden field replaced."""
    return dataclasses.replace(base, **{k: v for k, v in override.items() if k in FIELDS})


def as_json(settings: EgressSettings) -> dict[str, Any]:
    return {
        "source_address": list(settings.source_address),
        "mode": settings.mode,
        "allow": list(settings.allow),
        "deny": list(settings.deny),
        "allow_private": settings.allow_private,
    }


def _decode(text: str) -> dict[str, Any]:
    """A stored override, re-validated (a hand-edited or older row never installs a bad policy)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the stored egress override is not an object")
    parsed = parse_changes(data)
    return {k: v for k, v in parsed.items() if v is not None}


async def load_override(store: Store | Transaction) -> dict[str, Any]:
    row = await store.fetch_one("SELECT value FROM meta WHERE key = ?", (META_KEY,))
    if row is None:
        return {}
    return _decode(str(row["value"]))


class RuntimeEgress:
    """The process's egress settings: the file's base, the stored override, the live policy.
    `store_at`: the PostgreSQL store's host and port (None for SQLite), which no change may
    deny."""

    def __init__(self, base: EgressSettings, dialer: Dialer, *,
                 store_at: tuple[str, int] | None = None) -> None:
        self.base = base
        self.dialer = dialer
        self.holder = dialer.policy
        self.store_at = store_at
        self.override: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    @property
    def effective(self) -> EgressSettings:
        return merge(self.base, self.override)

    async def open(self, store: Store) -> None:
        """Apply the stored override at start. A bad stored row is logged and ignored (the file's
        settings apply), never half-applied."""
        try:
            override = await load_override(store)
            self.holder.update(merge(self.base, override))
        except (ValueError, BadRequest) as exc:
            log.error("stored egress settings ignored: invalid",
                      extra={"error": getattr(exc, "message", str(exc))})
            return
        self.override = override

    async def follow(self, store: Store) -> bool:
        """Apply the stored override if another instance changed it; True if it did. A bad
        stored row is logged and ignored (the current policy stays), never half-applied."""
        async with self._lock:
            try:
                override = await load_override(store)
                if override == self.override:
                    return False
                self.holder.update(merge(self.base, override))
            except (ValueError, BadRequest) as exc:
                log.error("stored egress settings ignored: invalid",
                          extra={"error": getattr(exc, "message", str(exc))})
                return False
            self.override = override
            log.info("egress settings changed by another instance",
                     extra={"overridden": sorted(override)})
            return True

    async def rebase(self, base: EgressSettings) -> EgressSettings:
        """A new base from a reloaded settings file (SIGHUP); the override still wins. Raises,
        keeping the old policy, `InvalidEgressSetting` if the result is invalid and
        `StoreCutOff` if it would deny the store's own destination."""
        async with self._lock:
            await self._check_store_allowed(self.override, base=base,
                                            what="the reloaded settings")
            effective = merge(base, self.override)
            self.holder.update(effective)
            self.base = base
            return effective

    async def change(self, store: Store, audit: AuditLog, changes: Mapping[str, Any], *,
                     context: Context, action: str = "egress.update") -> EgressSettings:
        """Merge the changes into the stored override and store it with its audit entry in one
        transaction, then apply it.

        Nothing is stored, applied or recorded if the result is not a valid policy or would deny
        the store's own destination (`StoreCutOff`), and nothing is applied if the audit entry
        cannot be written (fail-closed)."""
        async with self._lock:
            await self._check_store_allowed(self._apply(self.override, changes))
            async with store.transaction() as tx:
                current = await self._stored(tx)  # another instance's change counts too
                override = self._apply(current, changes)
                before, after = merge(self.base, current), merge(self.base, override)
                if current != self.override:  # moved by another instance: check the merge
                    await self._check_store_allowed(override)
                stored = json.dumps({k: _jsonable(v) for k, v in sorted(override.items())})
                old, new = as_json(before), as_json(after)
                changed = {k: {"from": old[k], "to": new[k]} for k in FIELDS if old[k] != new[k]}
                await tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (META_KEY, stored))
                await audit.record(tx, action=action, target="egress", context=context,
                                   details={"changed": changed,
                                            "overridden": sorted(override)})
            self.holder.update(after)
            self.override = override
            log.info("egress settings changed", extra={"changed": sorted(changed),
                                                       "actor": context.actor})
            return after

    @staticmethod
    def _apply(override: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(override)
        for name, value in changes.items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        return out

    async def _stored(self, tx: Transaction) -> dict[str, Any]:
        """The stored override (inside the change's transaction); a bad row counts as none, as
        at start: the change replaces it."""
        try:
            return await load_override(tx)
        except (ValueError, BadRequest):
            return {}

    async def _check_store_allowed(self, override: Mapping[str, Any], *,
                                   base: EgressSettings | None = None,
                                   what: str = "this change") -> None:
        """`InvalidEgressSetting` if the result (over `base`, else this one's) is no valid
        policy; `StoreCutOff` if it would deny the store's destination (resolving its name
        once, as a connection would)."""
        try:
            policy = EgressPolicy(merge(base or self.base, override))
        except ValueError as exc:
            raise InvalidEgressSetting(str(exc)) from None
        if self.store_at is None:
            return
        host, port = self.store_at
        decision = await self.dialer.decide_under(policy, host, port)
        if not decision.allowed:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise StoreCutOff(
                f"{what} would deny the store's own destination {where} (rule "
                f"'{decision.rule}'), cutting every instance off its store; nothing was changed. "
                f"Allow {where} in the same change (e.g. add it to 'allow').")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
