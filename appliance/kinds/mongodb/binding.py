"""The MongoDB binding: a JSON command template whose "{{ name }}" strings become typed values.

Owns the save-time checks (operations, collection names, refused operators) and the per-run bind.
Pure code: no I/O, no logging; a client value is only ever a value, never an operator or a key.
A run-time error names the parameter and the rule, never the collection, operation or an argument.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from appliance.parameters import (
    InvalidParameter,
    InvalidQuery,
    Parameter,
    ParameterSet,
    Ref,
    split_bindings,
    used_check,
)

# What each operation takes: argument -> shape. "object"/"array" arguments may also be one binding
# of a json parameter (checked for shape at run time).
_FILTER: Final = {"filter": "object"}
OPERATIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "find": {**_FILTER, "projection": "object", "sort": "object", "skip": "count",
             "limit": "count"},
    "aggregate": {"pipeline": "array"},
    "count": {**_FILTER, "skip": "count", "limit": "count"},
    "insert_one": {"document": "object"},
    "insert_many": {"documents": "array"},
    "update_one": {**_FILTER, "update": "update", "upsert": "boolean"},
    "update_many": {**_FILTER, "update": "update", "upsert": "boolean"},
    "delete_one": {**_FILTER},
    "delete_many": {**_FILTER},
}
REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "aggregate": ("pipeline",),
    "insert_one": ("document",),
    "insert_many": ("documents",),
    "update_one": ("filter", "update"),
    "update_many": ("filter", "update"),
    "delete_one": ("filter",),
    "delete_many": ("filter",),
}
# Operators that run code on the server: refused in templates and in values, at any depth.
CODE_OPERATORS: Final = frozenset({"$where", "$function", "$accumulator"})
MAX_TEMPLATE_DEPTH: Final = 64
_COLLECTION_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,119}")
_OBJECT_ID_RE: Final = re.compile(r"[0-9a-fA-F]{24}")


@dataclass(frozen=True, slots=True)
class MongoCommand:
    """One operation to run: `arguments` holds the bound filter, pipeline, document(s), update,
    projection, sort, skip, limit or upsert, as the operation takes them."""

    collection: str
    operation: str
    arguments: dict[str, Any]


# --- compiled template nodes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slot:
    """A JSON string that is exactly one binding. `expression`: it sits where MongoDB reads a
    string starting with '$' as a field path (pipelines, $expr, projections)."""

    name: str
    expression: bool


@dataclass(frozen=True, slots=True)
class _ObjectId:
    """{"$oid": "<24 hex digits>" or "{{ name }}"}: becomes a bson ObjectId."""

    literal: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class _Container:
    items: tuple[tuple[Any, Any], ...]
    is_object: bool


@dataclass(frozen=True, slots=True)
class MongoTemplate:
    """A MongoDB query compiled at save time; `bind` runs per request and copies every container,
    so nothing a driver mutates (insert adds `_id`) leaks into the next run."""

    parameters: ParameterSet
    collection: str | None
    collection_parameter: str | None
    operation: str
    arguments: tuple[tuple[str, Any], ...]

    def bind(self, params: Any) -> MongoCommand:
        """Validate the run-time values strictly, then build the command."""
        return self.bind_values(self.parameters.validate(params))

    def bind_values(self, values: Mapping[str, Any]) -> MongoCommand:
        types = self.parameters.by_name
        collection = self.collection
        if collection is None:
            assert self.collection_parameter is not None
            collection = values[self.collection_parameter]
        arguments: dict[str, Any] = {}
        shapes = OPERATIONS[self.operation]
        for key, node in self.arguments:
            value = _bind(node, values, types)
            if type(node) is _Slot:
                _check_shape(shapes[key], value, node.name)
            arguments[key] = value
        return MongoCommand(collection, self.operation, arguments)


# --- binding ------------------------------------------------------------------------------------


def _bind(node: Any, values: Mapping[str, Any], types: Mapping[str, Parameter]) -> Any:
    kind = type(node)
    if kind is _Container:
        if node.is_object:
            return {key: _bind(child, values, types) for key, child in node.items}
        return [_bind(child, values, types) for _, child in node.items]
    if kind is _Slot:
        value = values[node.name]
        if value is None:
            return None
        parameter = types[node.name]
        if parameter.base == "json":
            _check_client_json(value, node.name, node.expression, 0)
            return value
        if node.expression:
            _check_no_field_path(value, node.name)
        return _mongo_value(value, parameter)
    if kind is _ObjectId:
        text = node.literal if node.name is None else values[node.name]
        if text is None:
            return None
        if not _OBJECT_ID_RE.fullmatch(text):
            raise InvalidParameter(node.name, "is not an ObjectId (24 hexadecimal digits)")
        from bson import ObjectId  # PyMongo's; imported only by queries that use $oid

        return ObjectId(text)
    return node


def _mongo_value(value: Any, parameter: Parameter) -> Any:
    base = parameter.base
    if base == "date":
        if parameter.is_array:
            return [datetime(v.year, v.month, v.day, tzinfo=UTC) for v in value]
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if parameter.is_array:
        return list(value)
    return value


def _check_no_field_path(value: Any, name: str) -> None:
    items = value if isinstance(value, list) else (value,)
    for item in items:
        if isinstance(item, str) and item.startswith("$"):
            raise InvalidParameter(name, "starts with '$', which MongoDB would read as a field "
                                         "path or variable here")


def _check_client_json(value: Any, name: str, expression: bool, depth: int) -> None:
    """A json parameter's value: no '$' keys (so no operators, $where included), no NUL in keys,
    and in expression positions no string that MongoDB would read as a field path."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$"):
                raise InvalidParameter(name, "has an object key starting with '$' (operators "
                                             "cannot come from a parameter)")
            if "\x00" in key:
                raise InvalidParameter(name, "has an object key containing NUL")
            _check_client_json(item, name, expression, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_client_json(item, name, expression, depth + 1)
    elif expression and isinstance(value, str) and value.startswith("$"):
        raise InvalidParameter(name, "contains a string starting with '$', which MongoDB would "
                                     "read as a field path or variable here")


def _check_shape(shape: str, value: Any, name: str) -> None:
    """The value of a binding that is a whole argument. The messages never name the argument
    (filter, limit …): a viewer learns the rule, not the shape of the query."""
    if value is None:
        raise InvalidParameter(name, "has no value, but this query needs one")
    if shape == "object" and not isinstance(value, dict):
        raise InvalidParameter(name, "must be a JSON object")
    if shape == "array" and not (isinstance(value, list)
                                 and all(isinstance(v, dict) for v in value)):
        raise InvalidParameter(name, "must be an array of JSON objects")
    if shape == "update" and not isinstance(value, dict | list):
        raise InvalidParameter(name, "must be a JSON object or an array of JSON objects")
    if shape == "count" and (type(value) is not int or value < 0):
        raise InvalidParameter(name, "must be a non-negative integer")


# --- compiling ----------------------------------------------------------------------------------


def check_collection_name(name: Any) -> str:
    """A collection name MongoDB accepts and that names no system collection."""
    if (not isinstance(name, str) or not _COLLECTION_RE.fullmatch(name)
            or name.startswith("system.") or ".." in name or name.endswith(".")):
        raise InvalidQuery(
            "collection must be a name of 1 to 120 letters, digits, '_', '-' or '.', starting "
            "with a letter or '_' (not system.*)",
            suggestion='e.g. "orders", or "{{ coll }}" with an identifier parameter')
    return name


def compile_mongo(body: Any, parameters: ParameterSet) -> MongoTemplate:
    """Check a MongoDB body at save time and compile it; InvalidQuery names the place."""
    if not isinstance(body, dict):
        raise InvalidQuery('the body of a MongoDB query must be an object with "collection", '
                           '"operation" and its arguments')
    operation = body.get("operation")
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise InvalidQuery("operation must be one of " + ", ".join(OPERATIONS))
    shapes = OPERATIONS[operation]
    allowed = {"collection", "operation", *shapes}
    unknown = sorted(str(k)[:40] for k in body if k not in allowed)
    if unknown:
        raise InvalidQuery(f"{operation}: unknown key(s) {', '.join(unknown)}",
                           suggestion=f"{operation} takes {', '.join(shapes)}")
    for key in REQUIRED.get(operation, ()):
        if key not in body:
            raise InvalidQuery(f"{operation} needs \"{key}\"")

    used: set[str] = set()
    collection, collection_parameter = _collection(body.get("collection"), parameters, used)
    arguments = []
    for key, shape in shapes.items():
        if key not in body:
            continue
        expression = key == "pipeline" or key == "projection" or (
            key == "update" and isinstance(body[key], list))
        node = _compile(body[key], parameters, used, key, 0, expression)
        _check_template_shape(key, shape, body[key], node, parameters)
        arguments.append((key, node))
    used_check(parameters, used)
    return MongoTemplate(parameters=parameters, collection=collection,
                         collection_parameter=collection_parameter, operation=operation,
                         arguments=tuple(arguments))


def _collection(raw: Any, parameters: ParameterSet, used: set[str]
                ) -> tuple[str | None, str | None]:
    if isinstance(raw, str) and "{{" in raw:
        pieces = split_bindings(raw, "collection", parameters)
        if len(pieces) != 1 or not isinstance(pieces[0], Ref):
            raise InvalidQuery("collection: a binding must be the whole name")
        name = pieces[0].name
        parameter = parameters[name]
        if parameter.base != "identifier" or parameter.is_array:
            raise InvalidQuery(f"collection: '{name}' must be an identifier parameter",
                               suggestion="declare it with type identifier and the collection "
                                          "names as choices", parameter=name)
        for choice in parameter.choices or ():
            check_collection_name(choice)
        used.add(name)
        return None, name
    return check_collection_name(raw), None


def _check_template_shape(key: str, shape: str, raw: Any, node: Any,
                          parameters: ParameterSet) -> None:
    if type(node) is _Slot:
        parameter = parameters[node.name]
        wanted = {"object": "json", "array": "json", "update": "json", "count": "integer",
                  "boolean": "boolean"}[shape]
        if parameter.base != wanted or parameter.is_array:
            raise InvalidQuery(f"{key}: '{node.name}' must be a {wanted} parameter to be bound "
                               f"as the whole {key}", parameter=node.name)
        return
    ok = {
        "object": isinstance(raw, dict),
        "array": isinstance(raw, list) and all(isinstance(v, dict) for v in raw),
        "update": isinstance(raw, dict) or (isinstance(raw, list)
                                            and all(isinstance(v, dict) for v in raw)),
        "count": type(raw) is int and raw >= 0,
        "boolean": type(raw) is bool,
    }[shape]
    if not ok:
        described = {"object": "an object", "array": "an array of objects",
                     "update": "an object (or a pipeline array)",
                     "count": "a non-negative integer", "boolean": "true or false"}[shape]
        raise InvalidQuery(f"{key} must be {described}")


def _compile(node: Any, parameters: ParameterSet, used: set[str], where: str, depth: int,
             expression: bool) -> Any:
    if depth > MAX_TEMPLATE_DEPTH:
        raise InvalidQuery(f"{where}: nested deeper than {MAX_TEMPLATE_DEPTH} levels")
    if isinstance(node, str):
        if "{{" not in node and "}}" not in node:
            return node
        pieces = split_bindings(node, where, parameters)
        if len(pieces) != 1 or not isinstance(pieces[0], Ref):
            raise InvalidQuery(f"{where}: a binding must be the whole string",
                               suggestion='write "{{ name }}" alone; to build text, use $concat '
                                          "in an aggregation")
        used.add(pieces[0].name)
        return _Slot(pieces[0].name, expression)
    if isinstance(node, dict):
        if len(node) == 1 and "$oid" in node:
            return _object_id(node["$oid"], parameters, used, where)
        items = []
        for key, value in node.items():
            if "{{" in key or "}}" in key:
                raise InvalidQuery(f"{where}: a binding in an object key",
                                   suggestion="bind values, never keys")
            if key in CODE_OPERATORS:
                raise InvalidQuery(f"{where}: {key} is refused (it runs code on the server)",
                                   suggestion="express it with query or aggregation operators")
            if key == "$oid":
                raise InvalidQuery(f"{where}: $oid must be alone in its object")
            child_expression = expression or key == "$expr"
            items.append((key, _compile(value, parameters, used, f"{where}.{key[:40]}",
                                        depth + 1, child_expression)))
        return _Container(tuple(items), True)
    if isinstance(node, list):
        return _Container(tuple(
            (index, _compile(value, parameters, used, f"{where}[{index}]", depth + 1, expression))
            for index, value in enumerate(node)), False)
    if node is None or isinstance(node, bool | int | float):
        return node
    raise InvalidQuery(f"{where}: not a JSON value")


def _object_id(raw: Any, parameters: ParameterSet, used: set[str], where: str) -> _ObjectId:
    if isinstance(raw, str) and ("{{" in raw or "}}" in raw):
        pieces = split_bindings(raw, where, parameters)
        if len(pieces) != 1 or not isinstance(pieces[0], Ref):
            raise InvalidQuery(f"{where}: a binding must be the whole $oid string")
        name = pieces[0].name
        parameter = parameters[name]
        if parameter.base != "string" or parameter.is_array:
            raise InvalidQuery(f"{where}: '{name}' must be a string parameter to be an $oid",
                               parameter=name)
        used.add(name)
        return _ObjectId(None, name)
    if not isinstance(raw, str) or not _OBJECT_ID_RE.fullmatch(raw):
        raise InvalidQuery(f"{where}: $oid must be 24 hexadecimal digits or one binding")
    return _ObjectId(raw, None)
