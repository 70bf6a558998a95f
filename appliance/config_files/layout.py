"""The files of an export (queries as code): which paths exist, what each JSON file holds, how
they are written byte for byte, and how they are read back with every problem placed at its file,
line, column and field.

Owns the format (docs/queries-as-code.md): `manifest.json`, `datasources/<name>.json`,
`queries/<name>.meta.json` and the body beside it (`<name>.sql`, or `<name>.json` for a kind whose
body is JSON). Pure: no I/O, no store. Never holds a secret value: a datasource file names the
secrets that are set (`secrets_set`), never what they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.config_files.errors import InvalidConfigFile
from appliance.datasources.config import NAME_RE
from appliance.kinds.registry import kind_named

FORMAT: Final = 1
MANIFEST: Final = "manifest.json"
DATASOURCES: Final = "datasources"
QUERIES: Final = "queries"
META_SUFFIX: Final = ".meta.json"
BODY_SUFFIXES: Final = {"sql": ".sql", "json": ".json"}  # a kind's body language → its file

QUERY_ID_RE: Final = re.compile(r"q_[0-9a-f]{16}")
DATASOURCE_ID_RE: Final = re.compile(r"ds_[0-9a-f]{16}")


# --- the objects the files describe -----------------------------------------------------------


@dataclass(frozen=True)
class DatasourceFile:
    id: str
    name: str
    kind: str
    config: Mapping[str, Any]
    secrets_set: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{DATASOURCES}/{self.name}.json"


@dataclass(frozen=True)
class QueryFile:
    id: str
    name: str
    datasource: str  # by name: ids of datasources differ less often than their names, but a
    body: Any        # reviewer reads names
    parameters: list[Any] = field(default_factory=list)
    timeout_ms: int | None = None
    max_rows: int | None = None
    description: str | None = None
    body_language: str = "sql"
    groups: list[str] = field(default_factory=list)  # who may run it: [] = every viewer

    @property
    def meta_path(self) -> str:
        return f"{QUERIES}/{self.name}{META_SUFFIX}"

    @property
    def body_path(self) -> str:
        return f"{QUERIES}/{self.name}{BODY_SUFFIXES[self.body_language]}"


@dataclass(frozen=True)
class Bundle:
    """Every datasource and query of an export, each by name."""

    datasources: Mapping[str, DatasourceFile]
    queries: Mapping[str, QueryFile]


# --- writing -----------------------------------------------------------------------------------


def dump_json(value: Any) -> str:
    """The one JSON style of every file: sorted keys, 2-space indent, UTF-8 as is, LF, one
    trailing newline."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def datasource_json(item: DatasourceFile) -> dict[str, Any]:
    return {"id": item.id, "kind": item.kind, "config": dict(item.config),
            "secrets_set": sorted(item.secrets_set)}


def meta_json(item: QueryFile) -> dict[str, Any]:
    return {"id": item.id, "datasource": item.datasource, "parameters": item.parameters,
            "timeout_ms": item.timeout_ms, "max_rows": item.max_rows,
            "description": item.description, "groups": item.groups}


def body_text(item: QueryFile) -> str:
    """A body file's text: SQL as stored plus exactly one newline, or the JSON body."""
    if item.body_language == "sql":
        return str(item.body) + "\n"
    return dump_json(item.body)


def datasource_files(item: DatasourceFile) -> dict[str, str]:
    return {item.path: dump_json(datasource_json(item))}


def query_files(item: QueryFile) -> dict[str, str]:
    return {item.meta_path: dump_json(meta_json(item)), item.body_path: body_text(item)}


def manifest(version: str) -> dict[str, str]:
    """The manifest: the format and the appliance version that wrote it, and no time, so that
    exports of an unchanged appliance are byte-identical."""
    return {MANIFEST: dump_json({"format": FORMAT, "appliance": version})}


def render(bundle: Bundle, version: str) -> dict[str, str]:
    """Every file of `bundle`, path → text, sorted by path. InvalidConfigFile if two paths
    differ only in case (a checkout on macOS or Windows would lose one)."""
    files = manifest(version)
    parts = [datasource_files(bundle.datasources[name]) for name in sorted(bundle.datasources)]
    parts += [query_files(bundle.queries[name]) for name in sorted(bundle.queries)]
    for part in parts:
        for path, text in part.items():
            if path.casefold() in {known.casefold() for known in files}:
                raise InvalidConfigFile(path, "two objects would write this file (a query "
                                              "named '<x>.meta' beside one named '<x>', or "
                                              "names that differ only in case): rename one")
            files[path] = text
    return dict(sorted(files.items()))


def check_no_case_collisions(paths: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    for path in sorted(paths):
        other = seen.setdefault(path.casefold(), path)
        if other != path:
            raise InvalidConfigFile(path, f"its name differs from {other} only in case: rename "
                                          "one (file systems that ignore case keep only one)")


# --- reading: JSON with places ------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant,
                                   object_pairs_hook=_no_duplicates)


def load_json(path: str, text: str) -> Any:
    """`text` as JSON, or InvalidConfigFile at the line and column of the problem."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidConfigFile(path, f"not valid JSON: {exc.msg}", line=exc.lineno,
                                column=exc.colno) from None
    except _Duplicate as exc:
        line, column = locate(text, (exc.key,))
        raise InvalidConfigFile(path, "the key appears twice", line=line, column=column,
                                field=_shown(exc.key)) from None
    except (ValueError, RecursionError) as exc:
        problem = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise InvalidConfigFile(path, f"not valid JSON: {problem}") from None


def _shown(key: str) -> str:
    return key[:40] if key.isprintable() else repr(key[:40])


def _ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _positions(text: str) -> dict[tuple[str | int, ...], int]:
    """The offset of every key (objects) and element (arrays) of valid JSON `text`, by path;
    a key seen twice keeps its last place."""
    out: dict[tuple[str | int, ...], int] = {}

    def walk(i: int, path: tuple[str | int, ...]) -> int:
        i = _ws(text, i)
        if text[i] == "{":
            i = _ws(text, i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                i = _ws(text, i)
                start = i
                key, i = _PLAIN.raw_decode(text, i)
                out[(*path, key)] = start
                i = _ws(text, i) + 1  # ':'
                i = _ws(text, walk(i, (*path, key)))
                if text[i] == ",":
                    i += 1
                    continue
                return i + 1
        if text[i] == "[":
            i = _ws(text, i + 1)
            if text[i] == "]":
                return i + 1
            index = 0
            while True:
                i = _ws(text, i)
                out[(*path, index)] = i
                i = _ws(text, walk(i, (*path, index)))
                index += 1
                if text[i] == ",":
                    i += 1
                    continue
                return i + 1
        _, end = _PLAIN.raw_decode(text, i)
        return int(end)

    walk(0, ())
    return out


_PLAIN: Final = json.JSONDecoder()
_FIELD_PART: Final = re.compile(r"([^.\[\]]+)|\[([0-9]+)\]")


def field_path(field_name: str) -> tuple[str | int, ...]:
    """`parameters[0].type` → ("parameters", 0, "type")."""
    return tuple(int(m.group(2)) if m.group(2) is not None else m.group(1)
                 for m in _FIELD_PART.finditer(field_name))


def locate(text: str, path: tuple[str | int, ...]) -> tuple[int, int]:
    """The line and column (1-based) of the deepest part of `path` found in JSON `text` (the
    start of the file if none is)."""
    try:
        positions = _positions(text)
    except (ValueError, IndexError):
        return 1, 1
    offset = 0
    for depth in range(len(path), 0, -1):
        found = positions.get(path[:depth])
        if found is not None:
            offset = found
            break
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


# --- reading: the shape of each file ------------------------------------------------------------


Check = Callable[[Any], str | None]  # a problem with a value's type, or None


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _optional_string(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "must be a string or null"


def _optional_int(value: Any) -> str | None:
    return None if value is None or type(value) is int else "must be an integer or null"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be an object"


def _list(value: Any) -> str | None:
    return None if isinstance(value, list) else "must be a list"


def _string_list(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


def _pattern(regex: re.Pattern[str], example: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and regex.fullmatch(value):
            return None
        return f"must look like {example}"
    return check


def _format(value: Any) -> str | None:
    return None if value == FORMAT else f"must be {FORMAT} (this appliance reads format {FORMAT})"


@dataclass(frozen=True)
class Key:
    """One key a JSON file may have: its check, and its value when absent (`required` if none)."""

    check: Check
    default: Any = None
    required: bool = False


# The keys of each file. A new key (issue 25's query `groups`) is one line here and one in
# `meta_json`; a key not listed is refused, naming the file, line and key.
MANIFEST_KEYS: Final[Mapping[str, Key]] = {
    "format": Key(_format, required=True),
    "appliance": Key(_string, required=True),
}
DATASOURCE_KEYS: Final[Mapping[str, Key]] = {
    "id": Key(_pattern(DATASOURCE_ID_RE, "ds_ and 16 hex digits (ds_0123456789abcdef)"),
              required=True),
    "kind": Key(_string, required=True),
    "config": Key(_object, default={}),
    "secrets_set": Key(_string_list, default=[]),
}
META_KEYS: Final[Mapping[str, Key]] = {
    "id": Key(_pattern(QUERY_ID_RE, "q_ and 16 hex digits (q_0123456789abcdef)"), required=True),
    "datasource": Key(_string, required=True),
    "parameters": Key(_list, default=[]),
    "timeout_ms": Key(_optional_int),
    "max_rows": Key(_optional_int),
    "description": Key(_optional_string),
    "groups": Key(_list, default=[]),
}


def read_object(path: str, text: str, keys: Mapping[str, Key]) -> dict[str, Any]:
    """A JSON object file with exactly the `keys` it may have, each of the right type; absent
    ones take their default."""
    data = load_json(path, text)
    if not isinstance(data, dict):
        raise InvalidConfigFile(path, "must hold a JSON object", line=1, column=1)
    for key in data:
        if key not in keys:
            line, column = locate(text, (key,))
            raise InvalidConfigFile(path, f"unknown key; the keys are {', '.join(keys)}",
                                    line=line, column=column, field=_shown(key))
    out: dict[str, Any] = {}
    for key, spec in keys.items():
        if key not in data:
            if spec.required:
                raise InvalidConfigFile(path, "is missing", line=1, column=1, field=key)
            out[key] = spec.default
            continue
        problem = spec.check(data[key])
        if problem is not None:
            line, column = locate(text, (key,))
            raise InvalidConfigFile(path, problem, line=line, column=column, field=key)
        out[key] = data[key]
    return out


def _name_of(path: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidConfigFile(path, "the file name is not a valid name: 1 to 100 letters, "
                                      "digits, spaces, '_', '.', '-', starting with a letter or "
                                      "digit, then the suffix")
    return name


def check_path(path: str) -> None:
    """Refuse a path that could leave the directory or is not one of the format's."""
    parts = path.split("/")
    if (not path or "\\" in path or "\x00" in path or path.startswith("/")
            or any(part in ("", ".", "..") for part in parts)):
        raise InvalidConfigFile(_shown(path), "not a path inside the directory (no '..', no "
                                              "absolute path, no backslash)")
    if path == MANIFEST:
        return
    if len(parts) != 2 or parts[0] not in (DATASOURCES, QUERIES):
        raise InvalidConfigFile(_shown(path), f"not a file of an export: the files are "
                                              f"{MANIFEST}, {DATASOURCES}/<name>.json and "
                                              f"{QUERIES}/<name>.meta.json with its body")


def _split(files: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """(folder, file name, path) for each path, checked."""
    for path in sorted(files):
        check_path(path)
        if path != MANIFEST:
            folder, name = path.split("/")
            yield folder, name, path


def parse(files: Mapping[str, str]) -> Bundle:
    """The bundle the files describe, or InvalidConfigFile for the first problem (in path
    order). Checks shapes and types only; what the services check on save is checked later,
    and placed in these files by `place`."""
    check_no_case_collisions(files)
    if MANIFEST not in files:
        raise InvalidConfigFile(MANIFEST, "is missing: is this the directory of an export?")
    read_object(MANIFEST, files[MANIFEST], MANIFEST_KEYS)
    datasources: dict[str, DatasourceFile] = {}
    metas: dict[str, str] = {}
    bodies: dict[str, str] = {}
    for folder, name, path in _split(files):
        if folder == DATASOURCES:
            if not name.endswith(".json"):
                raise InvalidConfigFile(path, "a datasource's file is <name>.json")
            ds_name = _name_of(path, name[:-len(".json")])
            data = read_object(path, files[path], DATASOURCE_KEYS)
            secrets_set = data["secrets_set"]
            if sorted(set(secrets_set)) != secrets_set:
                line, column = locate(files[path], ("secrets_set",))
                raise InvalidConfigFile(path, "must be sorted, each name once", line=line,
                                        column=column, field="secrets_set")
            datasources[ds_name] = DatasourceFile(id=data["id"], name=ds_name,
                                                  kind=data["kind"], config=data["config"],
                                                  secrets_set=tuple(secrets_set))
        elif name.endswith(META_SUFFIX):
            metas[_name_of(path, name[:-len(META_SUFFIX)])] = path
        else:
            bodies[path] = name
    queries: dict[str, QueryFile] = {}
    meta_paths = set(metas.values())
    for q_name, path in metas.items():
        found = [f"{QUERIES}/{q_name}{suffix}" for suffix in BODY_SUFFIXES.values()
                 if f"{QUERIES}/{q_name}{suffix}" in files
                 and f"{QUERIES}/{q_name}{suffix}" not in meta_paths]
        if not found:
            raise InvalidConfigFile(path, f"its body is missing: {QUERIES}/{q_name}.sql (SQL) "
                                          f"or {QUERIES}/{q_name}.json (a JSON body)")
        if len(found) > 1:
            raise InvalidConfigFile(found[1], f"a second body for query '{q_name}' "
                                              f"(beside {found[0]}): keep one")
        body_path = found[0]
        bodies.pop(body_path, None)
        data = read_object(path, files[path], META_KEYS)
        language = "sql" if body_path.endswith(".sql") else "json"
        text = files[body_path]
        body: Any = text[:-1] if text.endswith("\n") else text
        if language == "json":
            body = load_json(body_path, text)
        queries[q_name] = QueryFile(
            id=data["id"], name=q_name, datasource=data["datasource"], body=body,
            parameters=data["parameters"], timeout_ms=data["timeout_ms"],
            max_rows=data["max_rows"], description=data["description"],
            body_language=language, groups=data["groups"])
    for path in sorted(bodies):
        raise InvalidConfigFile(path, "belongs to no query: a query is <name>.meta.json with "
                                      "its body <name>.sql or <name>.json beside it")
    _check_ids_unique(datasources.values(), queries.values())
    return Bundle(datasources=datasources, queries=queries)


def _check_ids_unique(datasources: Any, queries: Any) -> None:
    seen: dict[str, str] = {}
    for item in [*datasources, *queries]:
        path = item.path if isinstance(item, DatasourceFile) else item.meta_path
        other = seen.setdefault(item.id, path)
        if other != path:
            raise InvalidConfigFile(path, f"the same id as {other}: each object keeps its own "
                                          "id", field="id")


def body_language(kind: str) -> str:
    found = kind_named(kind)
    return found.body if found is not None else "sql"
