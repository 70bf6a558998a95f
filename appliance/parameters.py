"""Declared query parameters: checking declarations when a query is saved, and values when it runs.

Owns the parameter types, their limits and strict validation. Never coerces a value from one type to
another, never logs a value, and never puts a value in an error message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from appliance.errors import Unprocessable

# --- limits (constants, documented in docs/queries.md) ---------------------------------------

MAX_PARAMETERS: Final = 100
MAX_NAME_LENGTH: Final = 63
MAX_STRING_LENGTH: Final = 65_536  # characters, per string value (and per array element)
MAX_ARRAY_LENGTH: Final = 1_000
MAX_CHOICES: Final = 1_000
MAX_JSON_DEPTH: Final = 32
MAX_JSON_NODES: Final = 100_000
MAX_DESCRIPTION_LENGTH: Final = 1_000
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1

SCALAR_TYPES: Final = ("string", "integer", "number", "boolean", "date", "datetime")
TYPES: Final = (*SCALAR_TYPES, "json", "identifier")
ARRAY_ELEMENT_TYPES: Final = SCALAR_TYPES
CHOICE_TYPES: Final = frozenset({"string", "integer", "number", "identifier"})
DECLARATION_KEYS: Final = frozenset({"name", "type", "required", "default", "choices",
                                     "description"})

NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_ARRAY_RE: Final = re.compile(r"array<\s*([a-z]+)\s*>")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


class InvalidQuery(Unprocessable):
    """A query (its declarations or its body) cannot be saved. Raised at save time only.

    `line` and `column` (1-based) point into the body text when the problem has a place there
    (`field` is then "body"); `suggestion` says how to fix it; `field` names the input otherwise
    (`parameters[0].type`, `name`, ...; a body compiler's errors are "body", see
    `compile_query`).
    """

    code = "invalid_query"

    def __init__(self, problem: str, *, line: int | None = None, column: int | None = None,
                 suggestion: str | None = None, parameter: str | None = None,
                 field: str | None = None) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        message = f"{where}{problem}"
        if suggestion:
            message = f"{message} — {suggestion}"
        if field is None and line is not None:
            field = "body"
        super().__init__(message, field=field, line=line, column=column)
        self.problem = problem
        self.line = line
        self.column = column
        self.suggestion = suggestion
        self.parameter = parameter


class InvalidParameter(Unprocessable):
    """A run-time parameter value is missing, unknown or not of its declared type.

    The message names the parameter and never contains the value; so does `field`:
    `param.<name>`, or `params` (the run's values as a whole) when no one parameter is at fault.
    """

    code = "invalid_parameter"

    def __init__(self, parameter: str | None, problem: str) -> None:
        message = f"parameter '{parameter}' {problem}" if parameter else problem
        super().__init__(message, field=f"param.{parameter}" if parameter else "params")
        self.parameter = parameter
        self.problem = problem


class _Missing:
    """The absence of a default (distinct from a default of null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class _Bad(Exception):
    """Internal: a value failed validation; `problem` is phrased to follow the parameter name."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


# --- scalar validators: each returns the canonical Python value or raises _Bad ---------------


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON's "\\ud800"), which no encoder takes."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(value: Any) -> str:
    if type(value) is not str:
        raise _Bad(f"must be a string, not {_json_kind(value)}")
    if len(value) > MAX_STRING_LENGTH:
        raise _Bad(f"is longer than {MAX_STRING_LENGTH} characters")
    if not _is_unicode(value):
        raise _Bad("is not valid Unicode text")
    if "\x00" in value:
        raise _Bad("contains a NUL character")
    return value


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise _Bad(f"must be an integer, not {_json_kind(value)}")
    if not INT_MIN <= value <= INT_MAX:
        raise _Bad("is outside the 64-bit integer range")
    return value


def _number(value: Any) -> int | float:
    kind = type(value)  # exact types: a bool is not a number here
    if kind is float:
        number = float(value)
        if not math.isfinite(number):
            raise _Bad("must be a finite number")
        return number
    if kind is int:
        integer = int(value)
        if not INT_MIN <= integer <= INT_MAX:
            raise _Bad("is outside the 64-bit integer range")
        return integer
    raise _Bad(f"must be a number, not {_json_kind(value)}")


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _Bad(f"must be true or false, not {_json_kind(value)}")
    return value


def _date(value: Any) -> date:
    if type(value) is not str:
        raise _Bad(f"must be a date string (YYYY-MM-DD), not {_json_kind(value)}")
    if not _DATE_RE.fullmatch(value):
        raise _Bad("must be an ISO-8601 date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _Bad("is not a valid calendar date") from None


def _datetime(value: Any) -> datetime:
    if type(value) is not str:
        raise _Bad(f"must be a date-time string, not {_json_kind(value)}")
    if not _DATETIME_RE.fullmatch(value):
        raise _Bad("must be an ISO-8601 date-time with an offset "
                   "(YYYY-MM-DDTHH:MM[:SS[.ffffff]] then Z or +HH:MM)")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad("is not a valid date-time") from None
    offset = parsed.utcoffset()
    if offset is None or abs(offset.total_seconds()) >= 24 * 3600:
        raise _Bad("has an invalid offset")
    return parsed


def _json(value: Any) -> Any:
    _check_json(value, 0, [0])
    return value


def _check_json(value: Any, depth: int, nodes: list[int]) -> None:
    nodes[0] += 1
    if nodes[0] > MAX_JSON_NODES:
        raise _Bad(f"has more than {MAX_JSON_NODES} JSON values")
    if depth > MAX_JSON_DEPTH:
        raise _Bad(f"is nested deeper than {MAX_JSON_DEPTH} levels")
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _Bad("has a non-string object key")
            if len(key) > MAX_STRING_LENGTH:
                raise _Bad(f"has an object key longer than {MAX_STRING_LENGTH} characters")
            if not _is_unicode(key):
                raise _Bad("has an object key that is not valid Unicode text")
            _check_json(item, depth + 1, nodes)
    elif kind is list:
        for item in value:
            _check_json(item, depth + 1, nodes)
    elif kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise _Bad(f"has a string longer than {MAX_STRING_LENGTH} characters")
        if not _is_unicode(value):
            raise _Bad("has a string that is not valid Unicode text")
    elif kind is float:
        if not math.isfinite(value):
            raise _Bad("contains a number that is not finite")
    elif kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise _Bad("contains an integer outside the 64-bit range")
    elif value is not None and kind is not bool:
        raise _Bad("is not a JSON value")


_SCALAR_VALIDATORS: Final[dict[str, Callable[[Any], Any]]] = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "date": _date,
    "datetime": _datetime,
    "json": _json,
    "identifier": _string,
}


def _json_kind(value: Any) -> str:
    """The JSON name of a value's type, for messages (never the value itself)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return "a boolean"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is str:
        return "a string"
    if kind is list:
        return "an array"
    if kind is dict:
        return "an object"
    return "an unsupported value"


# --- declarations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parameter:
    """One declared parameter. `base` is the scalar type (the element type for arrays)."""

    name: str
    type: str
    base: str
    is_array: bool
    required: bool
    default: Any = MISSING
    choices: tuple[Any, ...] | None = None
    description: str | None = None
    _check: Callable[[Any], Any] = field(default=_string, repr=False, compare=False)

    def validate(self, value: Any) -> Any:
        """The canonical value for a present, non-null `value`, or InvalidParameter."""
        try:
            return self._check(value)
        except _Bad as bad:
            raise InvalidParameter(self.name, bad.problem) from None

    def to_json(self) -> dict[str, Any]:
        """The declaration in its canonical JSON shape."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if self.default is not MISSING:
            out["default"] = _to_json_value(self.default)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.description is not None:
            out["description"] = self.description
        return out


def _to_json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return [_to_json_value(v) for v in value]
    return value


def _make_check(base: str, is_array: bool, choices: tuple[Any, ...] | None
                ) -> Callable[[Any], Any]:
    scalar = _SCALAR_VALIDATORS[base]
    allowed = frozenset(choices) if choices is not None else None
    if allowed is not None:
        inner = scalar

        def scalar(value: Any) -> Any:
            checked = inner(value)
            if checked not in allowed:
                raise _Bad("is not one of the declared choices")
            return checked

    if not is_array:
        return scalar

    element = scalar

    def array(value: Any) -> list[Any]:
        if type(value) is not list:
            raise _Bad(f"must be an array, not {_json_kind(value)}")
        if len(value) > MAX_ARRAY_LENGTH:
            raise _Bad(f"has more than {MAX_ARRAY_LENGTH} elements")
        out = []
        for index, item in enumerate(value):
            if item is None:
                raise _Bad(f"element {index} is null (array elements cannot be null)")
            try:
                out.append(element(item))
            except _Bad as bad:
                raise _Bad(f"element {index} {bad.problem}") from None
        return out

    return array


def declaration_field(position: int, key: str | None = None) -> str:
    """The error field of a query's parameter declaration (0-based): `parameters[0]`, or one of
    its keys, `parameters[0].type`."""
    return f"parameters[{position}]" + (f".{key}" if key else "")


def parse_type(declared: Any, name: str, position: int = 0) -> tuple[str, bool]:
    """(base type, is_array) for a declared type string, or InvalidQuery."""
    where = declaration_field(position, "type")
    if not isinstance(declared, str):
        raise InvalidQuery(f"parameter '{name}': 'type' must be a string", parameter=name,
                           field=where)
    if declared in TYPES:
        return declared, False
    match = _ARRAY_RE.fullmatch(declared)
    if match:
        element = match.group(1)
        if element in ARRAY_ELEMENT_TYPES:
            return element, True
        raise InvalidQuery(
            f"parameter '{name}': arrays hold scalar types only, not '{element}'",
            suggestion=f"use one of {', '.join(f'array<{t}>' for t in ARRAY_ELEMENT_TYPES)}",
            parameter=name, field=where)
    raise InvalidQuery(f"parameter '{name}': unknown type",
                       suggestion=f"use one of {', '.join(TYPES)} or array<T>", parameter=name,
                       field=where)


def parse_parameter(raw: Any, position: int) -> Parameter:
    """Check one declaration; InvalidQuery names what is wrong with it."""
    if not isinstance(raw, dict):
        raise InvalidQuery(f"parameter {position + 1} must be an object",
                           field=declaration_field(position))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidQuery(
            f"parameter {position + 1} has an invalid name",
            suggestion="a name is 1 to 63 characters: a letter or _, then letters, digits or _",
            field=declaration_field(position, "name"))
    unknown = sorted(k for k in raw if k not in DECLARATION_KEYS)
    if unknown:
        keys = ", ".join(repr(k) for k in unknown if isinstance(k, str) and len(k) <= 40)
        raise InvalidQuery(f"parameter '{name}': unknown key(s) {keys}",
                           suggestion=f"allowed: {', '.join(sorted(DECLARATION_KEYS))}",
                           parameter=name, field=declaration_field(position))
    if "type" not in raw:
        raise InvalidQuery(f"parameter '{name}': 'type' is missing", parameter=name,
                           field=declaration_field(position, "type"))
    type_name = raw["type"]
    base, is_array = parse_type(type_name, name, position)
    canonical_type = f"array<{base}>" if is_array else base

    description = raw.get("description")
    if description is not None and (not isinstance(description, str)
                                    or len(description) > MAX_DESCRIPTION_LENGTH):
        raise InvalidQuery(f"parameter '{name}': 'description' must be a string of at most "
                           f"{MAX_DESCRIPTION_LENGTH} characters", parameter=name,
                           field=declaration_field(position, "description"))

    choices = _parse_choices(raw, name, base, is_array, position)
    check = _make_check(base, is_array, choices)

    has_default = "default" in raw
    required_raw = raw.get("required")
    if required_raw is not None and type(required_raw) is not bool:
        raise InvalidQuery(f"parameter '{name}': 'required' must be true or false",
                           parameter=name, field=declaration_field(position, "required"))
    if has_default and required_raw is True:
        raise InvalidQuery(f"parameter '{name}' is required and has a default",
                           suggestion="drop one: a default is used only when no value is sent",
                           parameter=name, field=declaration_field(position, "default"))
    required = (not has_default) if required_raw is None else required_raw

    default: Any = MISSING
    if has_default:
        default = raw["default"]
        if default is not None:
            try:
                default = check(default)
            except _Bad as bad:
                raise InvalidQuery(f"parameter '{name}': the default {bad.problem}",
                                   parameter=name,
                                   field=declaration_field(position, "default")) from None
    if base == "identifier" and not required and (default is MISSING or default is None):
        raise InvalidQuery(
            f"parameter '{name}': an identifier cannot be null",
            suggestion="make it required or give it a default from its choices",
            parameter=name, field=declaration_field(position, "default"))
    return Parameter(name=name, type=canonical_type, base=base, is_array=is_array,
                     required=required, default=default, choices=choices,
                     description=description, _check=check)


def _parse_choices(raw: dict[str, Any], name: str, base: str, is_array: bool, position: int
                   ) -> tuple[Any, ...] | None:
    where = declaration_field(position, "choices")
    if "choices" not in raw:
        if base == "identifier":
            raise InvalidQuery(
                f"parameter '{name}': an identifier needs a 'choices' list",
                suggestion='list every table or column name it may take, e.g. '
                           '"choices": ["orders", "invoices"]',
                parameter=name, field=where)
        return None
    if base not in CHOICE_TYPES:
        raise InvalidQuery(
            f"parameter '{name}': 'choices' is not allowed for type "
            f"{'array<' + base + '>' if is_array else base}",
            suggestion="choices apply to string, integer, number and identifier (and arrays of "
                       "the first three)",
            parameter=name, field=where)
    choices = raw["choices"]
    if not isinstance(choices, list) or not choices:
        raise InvalidQuery(f"parameter '{name}': 'choices' must be a non-empty list",
                           parameter=name, field=where)
    if len(choices) > MAX_CHOICES:
        raise InvalidQuery(f"parameter '{name}': more than {MAX_CHOICES} choices",
                           parameter=name, field=where)
    scalar = _SCALAR_VALIDATORS[base]
    out = []
    for index, choice in enumerate(choices):
        try:
            checked = scalar(choice)
        except _Bad as bad:
            raise InvalidQuery(f"parameter '{name}': choice {index} {bad.problem}",
                               parameter=name, field=where) from None
        if base == "identifier":
            _check_identifier_choice(checked, name, index, where)
        out.append(checked)
    if len(set(out)) != len(out):
        raise InvalidQuery(f"parameter '{name}': 'choices' has duplicates", parameter=name,
                           field=where)
    return tuple(out)


def _check_identifier_choice(choice: str, name: str, index: int, where: str) -> None:
    if not choice or len(choice) > MAX_NAME_LENGTH:
        raise InvalidQuery(
            f"parameter '{name}': choice {index} must be 1 to {MAX_NAME_LENGTH} characters",
            parameter=name, field=where)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in choice):
        raise InvalidQuery(f"parameter '{name}': choice {index} contains a control character",
                           parameter=name, field=where)


@dataclass(frozen=True, slots=True)
class ParameterSet:
    """The declared parameters of one query, in declaration order."""

    parameters: tuple[Parameter, ...]
    by_name: Mapping[str, Parameter]

    def __iter__(self) -> Any:
        return iter(self.parameters)

    def __len__(self) -> int:
        return len(self.parameters)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __getitem__(self, name: str) -> Parameter:
        return self.by_name[name]

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.parameters]

    def validate(self, values: Any) -> dict[str, Any]:
        """Every declared parameter's canonical value (None for null), or InvalidParameter.

        Unknown names are refused; a missing or null value takes the default, else null when
        optional, else is an error.
        """
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise InvalidParameter(None, "params must be a JSON object")
        by_name = self.by_name
        if not values.keys() <= by_name.keys():
            _refuse_unknown(values, by_name)
        out: dict[str, Any] = {}
        for parameter in self.parameters:
            value = values.get(parameter.name)
            if value is None:
                if parameter.default is not MISSING:
                    out[parameter.name] = parameter.default
                elif parameter.required:
                    raise InvalidParameter(parameter.name, "is required")
                else:
                    out[parameter.name] = None
            else:
                out[parameter.name] = parameter.validate(value)
        return out


def _refuse_unknown(values: Mapping[Any, Any], by_name: Mapping[str, Parameter]) -> None:
    unknown = [k for k in values if k not in by_name]
    shown = [k for k in unknown if isinstance(k, str) and NAME_RE.fullmatch(k)]
    if len(shown) == len(unknown):
        names = ", ".join(f"'{k}'" for k in sorted(shown)[:10])
        raise InvalidParameter(None, f"unknown parameter(s): {names}")
    raise InvalidParameter(None, f"{len(unknown)} unknown parameter(s)")


def parse_parameters(declarations: Any) -> ParameterSet:
    """Check a query's declarations (a list of objects); InvalidQuery on the first problem."""
    if declarations is None:
        declarations = []
    if not isinstance(declarations, list):
        raise InvalidQuery("'parameters' must be a list", field="parameters")
    if len(declarations) > MAX_PARAMETERS:
        raise InvalidQuery(f"more than {MAX_PARAMETERS} parameters", field="parameters")
    parsed: list[Parameter] = []
    by_name: dict[str, Parameter] = {}
    for position, raw in enumerate(declarations):
        parameter = parse_parameter(raw, position)
        if parameter.name in by_name:
            raise InvalidQuery(f"parameter '{parameter.name}' is declared twice",
                               parameter=parameter.name,
                               field=declaration_field(position, "name"))
        parsed.append(parameter)
        by_name[parameter.name] = parameter
    return ParameterSet(tuple(parsed), by_name)


def used_check(parameters: ParameterSet, used: Iterable[str]) -> None:
    """Refuse a declared parameter that the body never binds (usually a typo)."""
    seen = set(used)
    for position, parameter in enumerate(parameters):
        if parameter.name not in seen:
            raise InvalidQuery(
                f"parameter '{parameter.name}' is declared but never used",
                suggestion=f"bind it with {{{{ {parameter.name} }}}} or remove the declaration",
                parameter=parameter.name, field=declaration_field(position))


# --- the `{{ name }}` syntax in string templates (REST and MongoDB bodies) ----------------------

BINDING_RE: Final = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]{0,62})[ \t]*\}\}")


@dataclass(frozen=True, slots=True)
class Ref:
    """A binding occurrence in a string template."""

    name: str


def split_bindings(text: str, where: str, parameters: ParameterSet) -> tuple[str | Ref, ...]:
    """`text` as literal pieces and Refs; InvalidQuery for a malformed or undeclared binding.

    `where` names the place for messages (e.g. "path", "header 'Accept'").
    """
    if "{" not in text and "}" not in text:
        return (text,) if text else ()
    pieces: list[str | Ref] = []
    start = 0
    i = text.find("{{")
    while i != -1:
        m = BINDING_RE.match(text, i)
        if not m:
            raise InvalidQuery(f"{where}: malformed binding at character {i + 1}",
                               suggestion="write a binding as {{ name }}")
        name = m.group(1)
        if name not in parameters:
            raise InvalidQuery(f"{where}: binding '{name}' is not a declared parameter",
                               suggestion="declare it in \"parameters\" or fix the spelling",
                               parameter=name)
        if text[start:i]:
            pieces.append(text[start:i])
        pieces.append(Ref(name))
        start = m.end()
        i = text.find("{{", start)
    stray = text.find("}}", start)
    if stray != -1 or any(isinstance(p, str) and "}}" in p for p in pieces):
        raise InvalidQuery(f"{where}: '}}}}' without a matching '{{{{'",
                           suggestion="write a binding as {{ name }}")
    if text[start:]:
        pieces.append(text[start:])
    return tuple(pieces)
