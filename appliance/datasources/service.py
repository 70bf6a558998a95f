"""Datasources: create, read, change and delete them (secrets sealed by the keyring), test them,
and hold one engine (connection pool) per datasource.

Owns the `datasources` table and the engine registry: an engine is created on first use,
replaced when the datasource's config or secrets change (here, or on another instance: `follow`),
closed on delete and at shutdown.
Secrets are sealed for the datasource's destination (`destination`): a change of destination
needs them entered again. Never returns or logs a secret: responses show `{"set": true}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.audit import AuditLog, Context
from appliance.datasources.config import (
    InvalidDatasource,
    check_config,
    check_kind,
    check_name,
    check_secrets,
    required_secret,
)
from appliance.datasources.destination import (
    SEALED_KIND,
    bind_legacy_secrets,
    binding,
    changed_keys,
    destination,
)
from appliance.datasources.engine import Engine, Target
from appliance.datasources.errors import DatasourceNotFound
from appliance.egress import Dialer
from appliance.errors import ApplianceError, Conflict
from appliance.keyring import BoundElsewhere, SecretVault
from appliance.kinds.registry import kind_named
from appliance.secret import Secret
from appliance.store import Store, Transaction
from appliance.timestamps import rfc3339

log = logging.getLogger("appliance.datasources")

TEST_TIMEOUT = 10.0


def make_engine(target: Target, dialer: Dialer, state_dir: Path | None = None) -> Engine:
    """The engine for a datasource, made by its registered kind (whose driver is imported only
    then). `state_dir`: a file datasource refuses, each time it opens its file, one in it."""
    kind = kind_named(target.kind)
    if kind is None:
        raise InvalidDatasource(f"unknown kind {target.kind!r}")
    return kind.make_engine(target, dialer, state_dir)


def _row_view(row: Mapping[str, Any], sealed: set[str]) -> dict[str, Any]:
    kind = str(row["kind"])
    found = kind_named(kind)
    takes = found.secret_names if found is not None else frozenset(sealed)
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": kind,
        "config": json.loads(row["config"]),
        "secrets": {field: {"set": field in sealed} for field in sorted(takes)},
        "version": row["version"],
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
    }


def _without_defaults(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config without the values that are its fields' defaults, for a PATCH to merge
    over: `check_config` puts each back, and a default need not pass the check a given value
    must (MongoDB's stored `user: ""` is "no user", while a user given must be a name)."""
    spec = kind_named(kind)
    defaults = {f.name: f.default for f in spec.fields} if spec is not None else {}
    return {k: v for k, v in config.items()
            if not (k in defaults and type(v) is type(defaults[k]) and v == defaults[k])}


class DatasourceService:
    def __init__(self, store: Store, vault: SecretVault, dialer: Dialer, audit: AuditLog, *,
                 state_dir: Path | None = None) -> None:
        self.store = store
        self.vault = vault
        self.dialer = dialer
        self.audit = audit
        self.state_dir = state_dir
        self._engines: dict[str, Engine] = {}
        self._starting: dict[str, asyncio.Task[Engine]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._changes = 0  # bumped by every retirement and check: an engine built meanwhile
        self._closed = False  # is kept only if its datasource's version is still current

    # --- records --------------------------------------------------------------------------

    async def _row(self, datasource_id: str, tx: Transaction | None = None) -> dict[str, Any]:
        reader: Any = tx if tx is not None else self.store
        row = await reader.fetch_one("SELECT * FROM datasources WHERE id = ?", (datasource_id,))
        if row is None:
            raise DatasourceNotFound("no such datasource")
        return dict(row)

    async def _sealed(self, datasource_id: str) -> set[str]:
        return await self.vault.fields(SEALED_KIND, datasource_id)

    async def list(self) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all("SELECT * FROM datasources ORDER BY name")
        return [_row_view(row, await self._sealed(str(row["id"]))) for row in rows]

    async def get(self, datasource_id: str) -> dict[str, Any]:
        row = await self._row(datasource_id)
        return _row_view(row, await self._sealed(datasource_id))

    async def kind_of(self, datasource_id: str, tx: Transaction | None = None) -> str:
        return str((await self._row(datasource_id, tx))["kind"])

    async def create(self, body: Mapping[str, Any], context: Context) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            datasource_id = await self.create_in(tx, body, context)
        return await self.get(datasource_id)

    def check_new(self, body: Mapping[str, Any], *, secrets_later: bool = False
                  ) -> tuple[str, str, dict[str, Any], dict[str, str | None]]:
        """A new datasource's name, kind, canonical config and secrets, checked as on save.
        `secrets_later` (an import): the secrets its config needs may be entered afterwards."""
        unknown = sorted(set(body) - {"name", "kind", "config", "secrets"})
        if unknown:
            raise InvalidDatasource(f"unknown field(s): {', '.join(k[:40] for k in unknown)}")
        name = check_name(body.get("name"))
        kind = check_kind(body.get("kind"))
        config = check_config(kind, body.get("config", {}), state_dir=self.state_dir)
        values = check_secrets(kind, config, body.get("secrets"), partial=False)
        if not secrets_later:
            self._check_auth_secret(kind, config, set(values))
        return name, kind, config, values

    async def create_in(self, tx: Transaction, body: Mapping[str, Any], context: Context, *,
                        datasource_id: str | None = None, via: str | None = None,
                        secrets_later: bool = False) -> str:
        """Create a datasource inside the caller's transaction `tx` (an import: with the id its
        file names, `via` in its audit entry, and its secrets entered later); its id."""
        name, kind, config, values = self.check_new(body, secrets_later=secrets_later)
        datasource_id = datasource_id or "ds_" + secrets.token_hex(8)
        now = time.time()
        await self._check_unique(tx, name, None)
        await tx.execute(
            "INSERT INTO datasources (id, name, kind, config, version, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, 1, ?, ?)",
            (datasource_id, name, kind, json.dumps(config, sort_keys=True), now, now))
        sealed_for = binding(kind, config)
        for field, value in values.items():
            assert value is not None
            await self.vault.put(tx, SEALED_KIND, datasource_id, field, value.encode(),
                                 binding=sealed_for)
        details: dict[str, Any] = {"name": name, "kind": kind,
                                   "destination": destination(kind, config),
                                   "fields": sorted(values)}
        if via is not None:
            details["via"] = via
        await self.audit.record(tx, action="datasource.create",
                                target=f"datasource:{datasource_id}", context=context,
                                details=details)
        return datasource_id

    async def update(self, datasource_id: str, body: Mapping[str, Any],
                     context: Context) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            await self.update_in(tx, datasource_id, body, context)
        self._retire(datasource_id)  # the next run opens a pool with the new config/secrets
        return await self.get(datasource_id)

    async def update_in(self, tx: Transaction, datasource_id: str, body: Mapping[str, Any],
                        context: Context, *, via: str | None = None,
                        secrets_later: bool = False) -> None:
        """Change a datasource inside the caller's transaction `tx` (the caller retires its
        engine after the commit: `follow`). A config key given as null is removed."""
        unknown = sorted(set(body) - {"name", "kind", "config", "secrets"})
        if unknown:
            raise InvalidDatasource(f"unknown field(s): {', '.join(k[:40] for k in unknown)}")
        row = await self._row(datasource_id, tx)
        kind = str(row["kind"])
        if "kind" in body and body["kind"] != kind:
            raise InvalidDatasource("'kind' cannot be changed: create a new datasource",
                                    field="kind")
        name = check_name(body["name"]) if "name" in body else str(row["name"])
        config = before = json.loads(row["config"])
        changed: list[str] = []
        if "config" in body:
            if not isinstance(body["config"], dict):
                raise InvalidDatasource("'config' must be an object", field="config")
            merged = {**_without_defaults(kind, config), **body["config"]}
            merged = {k: v for k, v in merged.items() if v is not None}
            new_config = check_config(kind, merged, state_dir=self.state_dir)
            changed += [f"config.{k}" for k in sorted(set(new_config) | set(config))
                        if new_config.get(k) != config.get(k)]
            config = new_config
        values = check_secrets(kind, config, body.get("secrets"), partial=True)
        sealed = await self.vault.fields(SEALED_KIND, datasource_id)
        moved = changed_keys(kind, before, config)
        if moved:
            self._check_secrets_entered_again(moved, sealed - set(values))
        after = (sealed | {k for k, v in values.items() if v is not None}) - {
            k for k, v in values.items() if v is None}
        if not secrets_later:
            self._check_auth_secret(kind, config, after)
        if name != row["name"]:
            await self._check_unique(tx, name, datasource_id)
            changed.append("name")
        sealed_for = binding(kind, config)
        for field, value in values.items():
            if value is None:
                await self.vault.delete(tx, SEALED_KIND, datasource_id, field)
            else:
                await self.vault.put(tx, SEALED_KIND, datasource_id, field, value.encode(),
                                     binding=sealed_for)
            changed.append(f"secrets.{field}")
        await tx.execute(
            "UPDATE datasources SET name = ?, config = ?, version = version + 1, "
            "updated_at = ? WHERE id = ?",
            (name, json.dumps(config, sort_keys=True), time.time(), datasource_id))
        details: dict[str, Any] = {"name": name, "fields": changed}
        if moved:
            details["destination"] = {"from": destination(kind, before),
                                      "to": destination(kind, config)}
        if via is not None:
            details["via"] = via
        await self.audit.record(tx, action="datasource.update",
                                target=f"datasource:{datasource_id}", context=context,
                                details=details)

    async def delete(self, datasource_id: str, context: Context) -> None:
        async with self.store.transaction() as tx:
            await self.delete_in(tx, datasource_id, context)
        self._retire(datasource_id)

    async def delete_in(self, tx: Transaction, datasource_id: str, context: Context, *,
                        via: str | None = None) -> None:
        row = await self._row(datasource_id, tx)
        used = await tx.fetch_one(
            "SELECT count(*) AS n FROM queries WHERE datasource_id = ?", (datasource_id,))
        if used is not None and int(used["n"]) > 0:
            raise Conflict(f"datasource '{row['name']}' is used by {used['n']} "
                           f"quer{'y' if int(used['n']) == 1 else 'ies'}; delete them first",
                           code="datasource_in_use")
        await self.vault.delete(tx, SEALED_KIND, datasource_id)
        await tx.execute("DELETE FROM datasources WHERE id = ?", (datasource_id,))
        details: dict[str, Any] = {"name": row["name"], "kind": row["kind"]}
        if via is not None:
            details["via"] = via
        await self.audit.record(tx, action="datasource.delete",
                                target=f"datasource:{datasource_id}", context=context,
                                details=details)

    @staticmethod
    def _check_secrets_entered_again(moved: Sequence[str], kept: set[str]) -> None:
        """A change of destination leaves no secret sealed for the old one: every secret set
        must be entered again (or cleared) in the same change. The error's field is the first
        of them (the message names them all)."""
        if kept:
            keys = ", ".join("config." + key for key in moved)
            fields = ", ".join("secrets." + field for field in sorted(kept))
            raise Conflict(
                f"changing {keys} changes where this datasource's secrets are sent: enter "
                f"{fields} again (or clear with null) in the same change; they are sealed for "
                "the current destination and will not be sent anywhere else",
                code="secrets_required", field="secrets." + min(kept))

    def _check_auth_secret(self, kind: str, config: Mapping[str, Any], present: set[str]) -> None:
        needed = required_secret(kind, config)
        if needed is not None and needed not in present:
            raise InvalidDatasource(f"auth '{config.get('auth')}' needs secrets.{needed}",
                                    field=f"secrets.{needed}")

    async def _check_unique(self, tx: Transaction, name: str, own_id: str | None) -> None:
        found = await tx.fetch_one("SELECT id FROM datasources WHERE name = ?", (name,))
        if found is not None and found["id"] != own_id:
            raise Conflict(f"a datasource named '{name}' exists", code="datasource_exists",
                           field="name")

    # --- engines --------------------------------------------------------------------------

    async def target(self, datasource_id: str) -> Target:
        """The datasource with its opened secrets (for an engine only)."""
        row = await self._row(datasource_id)
        kind, config = str(row["kind"]), json.loads(row["config"])
        sealed_for = binding(kind, config)
        opened: dict[str, Secret[str]] = {}
        for field in sorted(await self._sealed(datasource_id)):
            try:
                value = await self.vault.get(SEALED_KIND, datasource_id, field,
                                             binding=sealed_for)
            except BoundElsewhere:
                raise Conflict(f"datasource '{row['name']}': secrets.{field} was entered for "
                               "another destination and is not sent to this one; an admin or "
                               "developer must enter it again", code="secrets_required",
                               field=f"secrets.{field}") from None
            if value is not None:
                opened[field] = Secret(value.reveal().decode("utf-8"))
        return Target(id=str(row["id"]), name=str(row["name"]), kind=kind, config=config,
                      version=int(row["version"]), secrets=opened)

    async def bind_legacy_secrets(self) -> int:
        """Bind secrets sealed before destinations were bound (once, at start)."""
        return await bind_legacy_secrets(self.store, self.vault)

    def open_engines(self) -> Sequence[Engine]:
        """The engines created so far (for metrics: their pools)."""
        return tuple(self._engines.values())

    async def engine(self, datasource_id: str) -> Engine:
        """The datasource's engine, created on first use (one per datasource). The build is a
        task of its own that every run wanting the engine meanwhile waits for: a run that
        leaves (cancelled: its request's time limit, say) does not take the others with it."""
        found = self._engines.get(datasource_id)
        if found is not None:
            return found
        starting = self._starting.get(datasource_id)
        if starting is None:
            if self._closed:
                raise ApplianceError("the appliance is shutting down", code="shutting_down")
            starting = asyncio.get_running_loop().create_task(
                self._start(datasource_id), name=f"start-engine-{datasource_id}")
            starting.add_done_callback(_retrieved)
            self._starting[datasource_id] = starting
        return await asyncio.shield(starting)

    async def _start(self, datasource_id: str) -> Engine:
        """Build the datasource's engine and keep it (`_starting`'s task)."""
        starting = asyncio.current_task()
        try:
            engine = await self._build(datasource_id)
        finally:
            if self._starting.get(datasource_id) is starting:
                del self._starting[datasource_id]
        kept = self._engines.get(datasource_id)
        if kept is not None and kept.target.version >= engine.target.version:
            # Another build finished first (this one's start was retired meanwhile): keep one.
            self._keep_closing(engine)
            return kept
        if kept is not None:
            self._keep_closing(kept)
        self._engines[datasource_id] = engine
        return engine

    async def _build(self, datasource_id: str) -> Engine:
        """A new engine from the datasource as stored now. If the datasource changed while it
        was being built (a retirement or a check ran meanwhile and its version moved), the
        engine is closed unused and built again: a stale engine is never kept."""
        while True:
            mark = self._changes
            engine = make_engine(await self.target(datasource_id), self.dialer, self.state_dir)
            if mark == self._changes:
                return engine
            row = await self.store.fetch_one("SELECT version FROM datasources WHERE id = ?",
                                             (datasource_id,))
            if row is not None and int(row["version"]) == engine.target.version:
                return engine
            await self._close_engine(engine)

    async def versions(self, tx: Any = None) -> dict[str, int]:
        """Every datasource's id and version (an import's check that nothing moved since its
        plan was made)."""
        reader = tx if tx is not None else self.store
        rows = await reader.fetch_all("SELECT id, version FROM datasources")
        return {str(row["id"]): int(row["version"]) for row in rows}

    async def follow(self) -> None:
        """Drop the engines whose datasource another instance (or a CLI verb) changed or
        deleted, with one query: runs under way on them finish, the next run opens a new one."""
        self._changes += 1
        if not self._engines:
            return
        rows = await self.store.fetch_all("SELECT id, version FROM datasources")
        current = {str(row["id"]): int(row["version"]) for row in rows}
        for datasource_id, engine in list(self._engines.items()):
            if current.get(datasource_id) != engine.target.version:
                self._retire(datasource_id)

    def cached_version(self, datasource_id: str) -> int | None:
        """The version of the datasource the live engine was built from (tests, metrics)."""
        engine = self._engines.get(datasource_id)
        return engine.target.version if engine is not None else None

    def _retire(self, datasource_id: str) -> None:
        self._changes += 1
        engine = self._engines.pop(datasource_id, None)
        self._starting.pop(datasource_id, None)
        if engine is not None:
            self._keep_closing(engine)

    def _keep_closing(self, engine: Engine) -> None:
        """Close `engine` in the background (runs under way on it finish first)."""
        task = asyncio.get_running_loop().create_task(self._close_engine(engine),
                                                      name=f"close-engine-{engine.target.id}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_engine(self, engine: Engine) -> None:
        try:
            await engine.close()  # in-flight runs finish first (pools close gracefully)
        except Exception as exc:
            log.warning("closing a datasource pool failed",
                        extra={"datasource": engine.target.id,
                               "exception": type(exc).__qualname__})

    async def test(self, datasource_id: str, context: Context) -> dict[str, Any]:
        """Connect with a fresh engine (not the pool) and run a trivial command."""
        target = await self.target(datasource_id)
        engine = make_engine(target, self.dialer, self.state_dir)
        started = time.perf_counter()
        outcome, error = "ok", None
        try:
            await engine.test(TEST_TIMEOUT)
        except ApplianceError as exc:
            outcome, error = "failed", exc
        finally:
            await engine.close()
        duration = round((time.perf_counter() - started) * 1000, 2)
        async with self.store.transaction() as tx:
            await self.audit.record(tx, action="datasource.test",
                                    target=f"datasource:{datasource_id}", context=context,
                                    outcome=outcome,
                                    details={"error": error.code if error else None})
        if error is not None:
            raise error
        return {"ok": True, "datasource": target.name, "duration_ms": duration}

    async def close(self) -> None:
        """Close every engine, once the runs under way on it end; the builds under way are
        cancelled first (an engine built after this would be left open)."""
        self._closed = True
        starting = list(self._starting.values())
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        engines = list(self._engines.values())
        self._engines.clear()
        for engine in engines:
            await self._close_engine(engine)
        if self._retiring:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._retiring, return_exceptions=True)


def _retrieved(task: asyncio.Task[Engine]) -> None:
    """A build's failure is its callers'; retrieved here, so a build every caller left does
    not log "Task exception was never retrieved"."""
    if not task.cancelled():
        task.exception()
