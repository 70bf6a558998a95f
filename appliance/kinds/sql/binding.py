"""The SQL binding compiler: `{{ name }}` in SQL text -> positional placeholders and typed values,
for every SQL dialect (a `SqlDialect`: PostgreSQL and SQLite here, MySQL in `kinds/mysql`).

Owns the compiled template, the save-time checks of where each binding may stand (after the
scanner's lexical ones) and the per-run bind. Pure code: no I/O, no logging, and no parameter
value ever enters the SQL text (only identifiers taken from their declared `choices`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from appliance.kinds.sql.dialect import DIALECTS, POSTGRES, SqlDialect
from appliance.kinds.sql.scanner import refusal, scan
from appliance.parameters import InvalidQuery, ParameterSet, used_check

# The dialects asked for by name (a kind with a dialect of its own passes the `SqlDialect`).
Dialect = Literal["postgres", "sqlite"]
MAX_SQL_LENGTH: Final = 1_000_000  # characters


@dataclass(frozen=True, slots=True)
class BoundStatement:
    """What the engine sends: one statement with positional placeholders, and its values in order.

    `$n` placeholders (PostgreSQL): `values[n-1]` for `$n`. `?` placeholders (SQLite, MySQL):
    one value each, in order. Each value as its dialect's driver takes it (`SqlDialect.converters`:
    e.g. json as JSON text, a SQLite date as ISO-8601 text). `identifiers`: the identifier values
    put in the text, which an engine leaves out of its error messages.
    """

    sql: str
    values: tuple[Any, ...]
    identifiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Slot:
    """One binding occurrence in the text."""

    name: str
    kind: Literal["value", "array", "identifier"]
    number: int  # the $n placeholder's number (numbered dialects; else 0)


@dataclass(frozen=True, slots=True)
class SqlTemplate:
    """A query compiled at save time; `bind` runs per request and is cheap."""

    dialect: SqlDialect
    parameters: ParameterSet
    source: str
    pieces: tuple[str | _Slot, ...]
    static_sql: str | None  # the whole statement, when no run-time value changes the text
    order: tuple[str, ...]  # parameter name per value, for static statements
    quoted: Mapping[str, Mapping[str, str]]  # identifier parameter -> choice -> quoted
    converts: Mapping[str, Callable[[Any], Any]]  # parameter -> its values' conversion, if any
    as_is: bool  # every value in `order` goes to the driver as validated

    def bind(self, params: Any) -> BoundStatement:
        """Validate the run-time values strictly, then build the statement and its values."""
        return self.bind_values(self.parameters.validate(params))

    def bind_values(self, values: Mapping[str, Any]) -> BoundStatement:
        """Bind already-validated values (from `parameters.validate`)."""
        if self.static_sql is not None:
            if self.as_is:
                return BoundStatement(self.static_sql, tuple(map(values.__getitem__, self.order)))
            return BoundStatement(self.static_sql,
                                  tuple(_convert(values[name], self.converts.get(name))
                                        for name in self.order))
        numbered = self.dialect.placeholder == "numbered"
        out: list[str] = []
        bound: list[Any] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif piece.kind == "identifier":
                out.append(self.quoted[piece.name][values[piece.name]])
            elif numbered:
                out.append(f"${piece.number}")
            elif piece.kind == "array":
                items = values[piece.name]
                if not items:
                    out.append("NULL")
                else:
                    out.append(", ".join("?" * len(items)))
                    convert = self.converts.get(piece.name)
                    bound.extend(_convert(item, convert) for item in items)
            else:
                out.append("?")
                bound.append(_convert(values[piece.name], self.converts.get(piece.name)))
        if numbered:
            bound = [_convert(values[name], self.converts.get(name)) for name in self.order]
        identifiers = tuple(str(values[name]) for name in self.quoted
                            if values.get(name) is not None)
        return BoundStatement("".join(out), tuple(bound), identifiers)


def _convert(value: Any, convert: Callable[[Any], Any] | None) -> Any:
    return value if convert is None or value is None else convert(value)


def quote_identifier(name: str) -> str:
    """A double-quoted SQL identifier with embedded double quotes doubled."""
    return POSTGRES.quote_identifier(name)


def compile_sql(text: Any, dialect: Dialect | SqlDialect, parameters: ParameterSet
                ) -> SqlTemplate:
    """Compile SQL text at save time; InvalidQuery with line, column and a suggestion."""
    if not isinstance(dialect, SqlDialect):
        if dialect not in DIALECTS:
            raise InvalidQuery(f"unknown SQL dialect; use one of {', '.join(DIALECTS)}")
        dialect = DIALECTS[dialect]
    if not isinstance(text, str):
        raise InvalidQuery("the body of a SQL query must be a string")
    if len(text) > MAX_SQL_LENGTH:
        raise InvalidQuery(f"the query is longer than {MAX_SQL_LENGTH} characters")
    texts, bindings = scan(text, dialect)

    numbered = dialect.placeholder == "numbered"
    pieces: list[str | _Slot] = []
    numbers: dict[str, int] = {}
    order: list[str] = []
    dynamic = False
    used: set[str] = set()
    for index, (name, offset) in enumerate(bindings):
        if texts[index]:
            pieces.append(texts[index])
        if name not in parameters:
            raise refusal(text, offset, f"binding '{name}' is not a declared parameter",
                          f'declare it in "parameters" (e.g. {{"name": "{name}", '
                          f'"type": "string"}}) or fix the spelling', parameter=name)
        used.add(name)
        parameter = parameters[name]
        if parameter.base == "identifier":
            pieces.append(_Slot(name, "identifier", 0))
            dynamic = True
            continue
        if parameter.is_array and dialect.array_rule is not None:
            problem = dialect.array_rule(name, texts[index], texts[index + 1])
            if problem is not None:
                raise refusal(text, offset, *problem, parameter=name)
        if parameter.is_array and dialect.expand_arrays:
            pieces.append(_Slot(name, "array", 0))
            dynamic = True
        elif numbered:
            if name not in numbers:
                numbers[name] = len(numbers) + 1
                order.append(name)
            pieces.append(_Slot(name, "array" if parameter.is_array else "value", numbers[name]))
        else:
            pieces.append(_Slot(name, "value", 0))
            order.append(name)
    if texts[-1]:
        pieces.append(texts[-1])
    used_check(parameters, used)

    quoted = {p.name: {c: dialect.quote_identifier(c) for c in p.choices or ()}
              for p in parameters if p.base == "identifier"}
    converters = dialect.converters
    converts = {p.name: converters[p.base] for p in parameters if p.base in converters}
    static_sql = None
    if not dynamic:
        static_sql = "".join(
            p if isinstance(p, str) else (f"${p.number}" if numbered else "?") for p in pieces)
    return SqlTemplate(dialect=dialect, parameters=parameters, source=text,
                       pieces=tuple(pieces), static_sql=static_sql, order=tuple(order),
                       quoted=quoted, converts=converts,
                       as_is=converts.keys().isdisjoint(order))


def is_dynamic(template: SqlTemplate) -> bool:
    """Whether the statement text depends on run-time values (identifiers, expanded arrays)."""
    return template.static_sql is None


__all__ = ["MAX_SQL_LENGTH", "BoundStatement", "Dialect", "SqlDialect", "SqlTemplate",
           "compile_sql", "is_dynamic", "quote_identifier"]
