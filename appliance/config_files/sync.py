"""Export and import of datasources and queries (queries as code): the store as files, and the
plan that makes the store match files, shown as a diff and applied in one transaction.

Owns matching objects by id, the plan (create, update, delete, unchanged per object), its refusals
and its application through the services' own save paths (every check a save makes applies to an
imported object, audited per object with `via: import`). Never reads or writes a secret value:
datasources carry the names of their secrets that are set; a datasource whose secrets are not
set here is created and reported as needing them.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance import __version__
from appliance.audit import AuditLog, Context
from appliance.config_files import layout
from appliance.config_files.directory import check_limits
from appliance.config_files.errors import ImportRefused, InvalidConfigFile
from appliance.config_files.layout import Bundle, DatasourceFile, QueryFile
from appliance.datasources import DatasourceService
from appliance.datasources.destination import changed_keys
from appliance.errors import ApplianceError
from appliance.groups import check_groups
from appliance.kinds.registry import kind_named
from appliance.queries.service import QueryService
from appliance.store import Store

VIA = "import"
Action = Literal["create", "update", "delete", "unchanged"]
ObjectType = Literal["datasource", "query"]


@dataclass(frozen=True)
class Current:
    """The store's datasources and queries as files would hold them, with their versions (an
    apply refuses if any moved since the plan was made) and each datasource's sealed secrets."""

    bundle: Bundle
    versions: Mapping[str, int]
    datasource_ids: Mapping[str, str]  # name (case-folded) → id


async def read_current(datasources: DatasourceService, queries: QueryService) -> Current:
    versions: dict[str, int] = {}
    ds_bundle: dict[str, DatasourceFile] = {}
    names_by_id: dict[str, str] = {}
    for view in await datasources.list():
        versions[view["id"]] = int(view["version"])
        names_by_id[view["id"]] = view["name"]
        ds_bundle[view["name"]] = DatasourceFile(
            id=view["id"], name=view["name"], kind=view["kind"], config=view["config"],
            secrets_set=tuple(sorted(k for k, v in view["secrets"].items() if v["set"])))
    q_bundle: dict[str, QueryFile] = {}
    for view in await queries.list(full=True):
        versions[view["id"]] = int(view["version"])
        ds_name = names_by_id.get(view["datasource_id"], view["datasource_id"])
        kind = ds_bundle[ds_name].kind if ds_name in ds_bundle else "sqlite"
        q_bundle[view["name"]] = QueryFile(
            id=view["id"], name=view["name"], datasource=ds_name, body=view["body"],
            parameters=view["parameters"], timeout_ms=view["timeout_ms"],
            max_rows=view["max_rows"], description=view["description"],
            body_language=layout.body_language(kind), groups=list(view["groups"]))
    return Current(bundle=Bundle(ds_bundle, q_bundle), versions=versions,
                   datasource_ids={name.casefold(): item.id for name, item in ds_bundle.items()})


async def export_files(datasources: DatasourceService, queries: QueryService, audit: AuditLog,
                       context: Context) -> dict[str, str]:
    """Every file of an export of the store (audited: `config.export`)."""
    current = await read_current(datasources, queries)
    files = layout.render(current.bundle, __version__)
    await audit.record(action="config.export", target="config", context=context,
                       details={"datasources": len(current.bundle.datasources),
                                "queries": len(current.bundle.queries)})
    return files


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    action: Action
    type: ObjectType
    id: str
    name: str
    before: Mapping[str, str] = field(default_factory=dict)  # its files now (path → text)
    after: Mapping[str, str] = field(default_factory=dict)  # its files once applied
    needs_secrets: tuple[str, ...] = ()
    item: DatasourceFile | QueryFile | None = None  # what to save (create, update)
    datasource_id: str = ""  # a query's datasource, once applied

    def diff(self) -> str:
        """A unified diff per changed file, like `git diff`: a renamed object's files pair by
        their kind of file (the datasource file, the meta file, the body)."""
        out: list[str] = []
        for old_path, new_path in _pairs(self.before, self.after):
            old = self.before.get(old_path, "") if old_path else ""
            new = self.after.get(new_path, "") if new_path else ""
            if old == new and old_path == new_path:
                continue
            out.extend(difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                fromfile=f"a/{old_path}" if old_path else "/dev/null",
                tofile=f"b/{new_path}" if new_path else "/dev/null"))
            if out and not out[-1].endswith("\n"):
                out[-1] += "\n\\ No newline at end of file\n"
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "type": self.type, "id": self.id,
                               "name": self.name}
        if self.needs_secrets:
            out["needs_secrets"] = list(self.needs_secrets)
        return out


def _role(path: str) -> str:
    if path.startswith(layout.DATASOURCES + "/"):
        return "datasource"
    return "meta" if path.endswith(layout.META_SUFFIX) else "body"


def _pairs(before: Mapping[str, str], after: Mapping[str, str]
           ) -> list[tuple[str | None, str | None]]:
    olds = {_role(path): path for path in before}
    news = {_role(path): path for path in after}
    return [(olds.get(role), news.get(role)) for role in ("datasource", "meta", "body")
            if role in olds or role in news]


@dataclass(frozen=True)
class Plan:
    changes: Sequence[Change]
    versions: Mapping[str, int]
    prune: bool

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action == action)

    @property
    def pending(self) -> list[Change]:
        return [change for change in self.changes if change.action != "unchanged"]

    def summary(self) -> str:
        return (f"{self.count('create')} to create, {self.count('update')} to update, "
                f"{self.count('delete')} to delete, {self.count('unchanged')} unchanged")

    def diff(self) -> str:
        return "".join(change.diff() for change in self.pending)

    def needs_secrets(self) -> dict[str, list[str]]:
        return {change.name: list(change.needs_secrets) for change in self.changes
                if change.type == "datasource" and change.needs_secrets}

    def to_json(self) -> dict[str, Any]:
        return {"summary": {action: self.count(action)
                            for action in ("create", "update", "delete", "unchanged")},
                "changes": [change.to_json() for change in self.pending],
                "needs_secrets": self.needs_secrets(),
                "diff": self.diff()}


def _place(files: Mapping[str, str], path: str, exc: ApplianceError,
           translate: Mapping[str, str] | None = None) -> InvalidConfigFile:
    """A service's refusal of what a file says, placed in that file: its `field` becomes the
    file's key (and line), a body's line and column stay."""
    name = exc.field or ""
    for api, key in (translate or {}).items():
        if name == api or name.startswith(api + ".") or name.startswith(api + "["):
            name = key + name[len(api):]
            break
    if path.endswith((".sql", ".json")) and not path.endswith(layout.META_SUFFIX) \
            and not path.startswith(layout.DATASOURCES + "/"):
        problem = getattr(exc, "problem", None) or exc.message
        suggestion = getattr(exc, "suggestion", None)
        if suggestion:
            problem = f"{problem} — {suggestion}"
        return InvalidConfigFile(path, problem, line=exc.line, column=exc.column)
    line, column = layout.locate(files[path], layout.field_path(name)) if name else (1, 1)
    message = exc.message
    return InvalidConfigFile(path, message, line=line, column=column, field=name or None)


def _as_sent(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as the API takes it: a key holding its field's default is left out (the
    canonical config stores MongoDB's `user` as "", which the API refuses when given)."""
    found = kind_named(kind)
    defaults = {spec.name: spec.default for spec in found.fields} if found is not None else {}
    return {key: value for key, value in config.items()
            if not (key in defaults and defaults[key] is not None
                    and type(value) is type(defaults[key]) and value == defaults[key])}


def _check_datasource(files: Mapping[str, str], item: DatasourceFile,
                      datasources: DatasourceService) -> DatasourceFile:
    """The datasource as it will be stored (canonical config), or InvalidConfigFile."""
    try:
        _, kind, config, _ = datasources.check_new(
            {"name": item.name, "kind": item.kind, "config": _as_sent(item.kind, item.config)},
            secrets_later=True)
    except ApplianceError as exc:
        if exc.field == "name":
            raise InvalidConfigFile(item.path, exc.message) from None
        raise _place(files, item.path, exc) from None
    found = kind_named(kind)
    assert found is not None
    unknown = sorted(set(item.secrets_set) - found.secret_names)
    if unknown:
        line, column = layout.locate(files[item.path], ("secrets_set",))
        names = ", ".join(sorted(found.secret_names)) or "none"
        raise InvalidConfigFile(item.path, f"{kind} datasources take these secrets: {names}",
                                line=line, column=column, field="secrets_set")
    return DatasourceFile(id=item.id, name=item.name, kind=kind, config=config,
                          secrets_set=item.secrets_set)


def _check_query(files: Mapping[str, str], item: QueryFile, kind: str, datasource_id: str,
                 queries: QueryService) -> QueryFile:
    language = layout.body_language(kind)
    if language != item.body_language:
        raise InvalidConfigFile(item.body_path, f"datasource '{item.datasource}' is of kind "
                                                f"{kind}, whose query bodies are "
                                                f"{language.upper()}: name the file "
                                                f"{item.name}{layout.BODY_SUFFIXES[language]}")
    merged = {"name": item.name, "datasource_id": datasource_id, "body": item.body,
              "parameters": item.parameters, "timeout_ms": item.timeout_ms,
              "max_rows": item.max_rows, "description": item.description,
              "groups": item.groups}
    try:
        _, template = queries.check(kind, merged)
    except ApplianceError as exc:
        if exc.field == "name":
            raise InvalidConfigFile(item.meta_path, exc.message) from None
        path = item.body_path if exc.field == "body" else item.meta_path
        raise _place(files, path, exc, {"datasource_id": "datasource"}) from None
    return QueryFile(id=item.id, name=item.name, datasource=item.datasource, body=item.body,
                     parameters=template.parameters.to_json(), timeout_ms=item.timeout_ms,
                     max_rows=item.max_rows, description=item.description,
                     body_language=language, groups=list(check_groups(item.groups)))


def _refuse_name_held(kind: str, path: str, name: str, other: str, own: str) -> ImportRefused:
    return ImportRefused(
        f"{path}: a {kind} named '{name}' exists here with id {other}, and the file says "
        f"{own}. Ids are kept from appliance to appliance, so a name held by another id is "
        f"refused rather than guessed: set \"id\" to {other} in the file to take that {kind} "
        f"over, or rename one of them", code="name_held_by_another_id")


async def plan_import(files: Mapping[str, str], datasources: DatasourceService,
                      queries: QueryService, *, prune: bool) -> Plan:
    """Check the files (InvalidConfigFile naming file, line, column, field) and compare them
    with the store (ImportRefused for what the store cannot take): the plan. Writes nothing."""
    check_limits(files)
    parsed = layout.parse(files)
    current = await read_current(datasources, queries)
    cur_ds = {item.id: item for item in current.bundle.datasources.values()}
    cur_q = {item.id: item for item in current.bundle.queries.values()}
    cur_ds_by_name = {item.name.casefold(): item for item in cur_ds.values()}
    cur_q_by_name = {item.name.casefold(): item for item in cur_q.values()}
    wanted_ids = {item.id for item in parsed.datasources.values()} | {
        item.id for item in parsed.queries.values()}
    changes: list[Change] = []

    desired_ds: dict[str, DatasourceFile] = {}  # by case-folded name
    for name in sorted(parsed.datasources):
        item = _check_datasource(files, parsed.datasources[name], datasources)
        if item.id in cur_q:
            raise ImportRefused(f"{item.path}: id {item.id} is a query's here",
                                code="name_held_by_another_id")
        before = cur_ds.get(item.id)
        holder = cur_ds_by_name.get(name.casefold())
        if holder is not None and holder.id != item.id and holder.id not in wanted_ids:
            raise _refuse_name_held("datasource", item.path, name, holder.id, item.id)
        sealed = set(before.secrets_set) if before is not None else set()
        if before is not None:
            if before.kind != item.kind:
                line, column = layout.locate(files[item.path], ("kind",))
                raise InvalidConfigFile(item.path, f"datasource {item.id} is of kind "
                                                   f"{before.kind} here, and a kind cannot "
                                                   "change: give the new one another id",
                                        line=line, column=column, field="kind")
            moved = changed_keys(item.kind, before.config, item.config)
            if moved and sealed:
                keys = ", ".join(f"config.{key}" for key in moved)
                raise ImportRefused(
                    f"{item.path}: changing {keys} changes where datasource '{before.name}' "
                    f"sends its secrets ({', '.join(sorted(sealed))}), which are sealed for "
                    "its current destination and are never sent elsewhere: clear them first "
                    "(PATCH /api/v1/datasources/{id} with null), import, then enter them "
                    "again", code="secrets_required")
        kind = kind_named(item.kind)
        assert kind is not None
        needed = (set(item.secrets_set) | set(kind.required_secrets(item.config))) - sealed
        shown = DatasourceFile(id=item.id, name=item.name, kind=item.kind, config=item.config,
                               secrets_set=tuple(sorted(sealed)))
        after = layout.datasource_files(shown)
        desired_ds[name.casefold()] = shown
        if before is None:
            changes.append(Change("create", "datasource", item.id, item.name, {}, after,
                                  tuple(sorted(needed)), shown))
        else:
            old = layout.datasource_files(before)
            action: Action = "unchanged" if old == after else "update"
            changes.append(Change(action, "datasource", item.id, item.name, old, after,
                                  tuple(sorted(needed)), shown))

    kept_queries: list[tuple[str, str]] = []  # (query name, its datasource's id) after import
    for name in sorted(parsed.queries):
        q = parsed.queries[name]
        ds = desired_ds.get(q.datasource.casefold()) or cur_ds_by_name.get(q.datasource.casefold())
        if ds is None:
            line, column = layout.locate(files[q.meta_path], ("datasource",))
            raise InvalidConfigFile(q.meta_path, f"no datasource named '{q.datasource}' in "
                                                 f"{layout.DATASOURCES}/ nor here",
                                    line=line, column=column, field="datasource")
        if q.id in cur_ds:
            raise ImportRefused(f"{q.meta_path}: id {q.id} is a datasource's here",
                                code="name_held_by_another_id")
        query = _check_query(files, QueryFile(
            id=q.id, name=q.name, datasource=ds.name, body=q.body, parameters=q.parameters,
            timeout_ms=q.timeout_ms, max_rows=q.max_rows, description=q.description,
            body_language=q.body_language, groups=q.groups), ds.kind, ds.id, queries)
        holder_q = cur_q_by_name.get(name.casefold())
        if holder_q is not None and holder_q.id != query.id and holder_q.id not in wanted_ids:
            raise _refuse_name_held("query", query.meta_path, name, holder_q.id, query.id)
        kept_queries.append((query.name, ds.id))
        before_q = cur_q.get(query.id)
        after = layout.query_files(query)
        if before_q is None:
            changes.append(Change("create", "query", query.id, query.name, {}, after, (), query,
                                  ds.id))
        else:
            old = layout.query_files(before_q)
            action = "unchanged" if old == after else "update"
            changes.append(Change(action, "query", query.id, query.name, old, after, (), query,
                                  ds.id))

    if prune:
        in_use = {ds_id: q_name for q_name, ds_id in kept_queries}
        for q_id, gone in sorted(cur_q.items(), key=lambda pair: pair[1].name):
            if q_id not in wanted_ids:
                changes.append(Change("delete", "query", q_id, gone.name,
                                      layout.query_files(gone), {}))
        for ds_id, gone_ds in sorted(cur_ds.items(), key=lambda pair: pair[1].name):
            if ds_id not in wanted_ids:
                if ds_id in in_use:
                    raise ImportRefused(f"--prune would delete datasource '{gone_ds.name}', "
                                        f"which query '{in_use[ds_id]}' of the files uses",
                                        code="datasource_in_use")
                changes.append(Change("delete", "datasource", ds_id, gone_ds.name,
                                      layout.datasource_files(gone_ds), {}))
    return Plan(changes=changes, versions=current.versions, prune=prune)


async def apply_plan(plan: Plan, store: Store, datasources: DatasourceService,
                     queries: QueryService, audit: AuditLog, context: Context) -> None:
    """Make the store match the plan in one transaction (nothing changes if any step fails):
    queries deleted first, then datasources created and changed, then queries changed and
    created, then datasources deleted; one audit entry per object and one for the import."""
    pending = plan.pending
    if not pending:
        return
    by = {(action, kind): [c for c in pending if c.action == action and c.type == kind]
          for action in ("create", "update", "delete") for kind in ("datasource", "query")}
    async with store.transaction() as tx:
        rows = await datasources.versions(tx) | await queries.versions(tx)
        if rows != dict(plan.versions):
            raise ImportRefused("the datasources or queries changed since the plan was made: "
                                "run the import again", code="changed_meanwhile")
        for change in by[("delete", "query")]:
            await queries.delete_in(tx, change.id, context, via=VIA)
        for change in by[("create", "datasource")] + by[("update", "datasource")]:
            item = change.item
            assert isinstance(item, DatasourceFile)
            sent = _as_sent(item.kind, item.config)
            body: dict[str, Any] = {"name": item.name, "kind": item.kind, "config": sent}
            if change.action == "create":
                await datasources.create_in(tx, body, context, datasource_id=item.id, via=VIA,
                                            secrets_later=True)
            else:
                # The update merges into the stored config: a key not sent is cleared (null),
                # and takes its default again if it has one.
                before = json.loads(change.before[next(iter(change.before))])["config"]
                sent.update({key: None for key in before if key not in sent})
                await datasources.update_in(tx, item.id, body, context, via=VIA,
                                            secrets_later=True)
        for change in by[("update", "query")] + by[("create", "query")]:
            q = change.item
            assert isinstance(q, QueryFile)
            q_body = {"name": q.name, "datasource_id": change.datasource_id, "body": q.body,
                      "parameters": q.parameters, "timeout_ms": q.timeout_ms,
                      "max_rows": q.max_rows, "description": q.description,
                      "groups": q.groups}
            try:
                if change.action == "create":
                    await queries.create_in(tx, q_body, context, query_id=q.id, via=VIA)
                else:
                    await queries.update_in(tx, q.id, q_body, context, via=VIA)
            except ApplianceError as exc:
                if exc.code == "secret_in_query":  # the scan at save (every save): name the file
                    where = q.body_path if (exc.field or "body") == "body" else q.meta_path
                    exc.message = f"{where}: {exc.message}"
                    exc.args = (exc.message,)
                raise
        for change in by[("delete", "datasource")]:
            await datasources.delete_in(tx, change.id, context, via=VIA)
        await audit.record(tx, action="config.import", target="config", context=context,
                           details={**plan.to_json()["summary"], "prune": plan.prune,
                                    "needs_secrets": plan.needs_secrets()})
    await datasources.follow()  # this process's engines and compiled queries, at once
    await queries.follow()

