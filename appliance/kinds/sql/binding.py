"""The SQL binding compiler: `{{ name }}` in SQL text -> positional placeholders and typed values.

Owns the SQL lexer, the save-time checks and the per-run bind. Pure code: no I/O, no logging, and no
parameter value ever enters the SQL text (only identifiers taken from their declared `choices`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from appliance.parameters import (
    InvalidQuery,
    Parameter,
    ParameterSet,
    used_check,
)

Dialect = Literal["postgres", "sqlite"]
DIALECTS: Final = ("postgres", "sqlite")
MAX_SQL_LENGTH: Final = 1_000_000  # characters

_BINDING_RE: Final = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]{0,62})[ \t]*\}\}")
_NAME_INSIDE_RE: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)")
_DOLLAR_TAG_RE: Final = re.compile(
    r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
# Characters that never start anything the lexer must look at.
_PLAIN_RE: Final = {
    "postgres": re.compile(r"[^'\"\-/$;{}]+"),
    "sqlite": re.compile(r"[^'\"\-/$;{}`\[?:@]+"),
}
_IN_BEFORE_RE: Final = re.compile(r"\bIN\s*\(\s*$", re.IGNORECASE)
_ANY_BEFORE_RE: Final = re.compile(r"\b(?:ANY|ALL|SOME)\s*\(\s*$", re.IGNORECASE)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$"


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


# --- the compiled template -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoundStatement:
    """What the engine sends: one statement with positional placeholders, and its values in order.

    postgres: `$n` placeholders, `values[n-1]` for `$n`; dates and date-times as `date`/`datetime`,
    arrays as lists, json as JSON text. sqlite: `?` placeholders in order; dates and date-times as
    ISO-8601 text, booleans as 1/0, json as JSON text. `identifiers`: the identifier values put
    in the text, which an engine leaves out of its error messages.
    """

    sql: str
    values: tuple[Any, ...]
    identifiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Slot:
    """One binding occurrence in the text."""

    name: str
    kind: Literal["value", "array", "identifier"]
    number: int  # postgres placeholder number (0 for identifiers)


@dataclass(frozen=True, slots=True)
class SqlTemplate:
    """A query compiled at save time; `bind` runs per request and is cheap."""

    dialect: Dialect
    parameters: ParameterSet
    source: str
    pieces: tuple[str | _Slot, ...]
    static_sql: str | None  # the whole statement, when no run-time value changes the text
    order: tuple[str, ...]  # parameter name per value, for static statements
    quoted: Mapping[str, Mapping[str, str]]  # identifier parameter -> choice -> quoted
    as_is: bool = False  # the values go to the driver unconverted (see `compile_sql`)

    def bind(self, params: Any) -> BoundStatement:
        """Validate the run-time values strictly, then build the statement and its values."""
        return self.bind_values(self.parameters.validate(params))

    def bind_values(self, values: Mapping[str, Any]) -> BoundStatement:
        """Bind already-validated values (from `parameters.validate`)."""
        if self.static_sql is not None and self.as_is:
            return BoundStatement(self.static_sql, tuple(map(values.__getitem__, self.order)))
        convert = _to_postgres if self.dialect == "postgres" else _to_sqlite
        types = self.parameters.by_name
        if self.static_sql is not None:
            return BoundStatement(
                self.static_sql,
                tuple(convert(values[name], types[name]) for name in self.order))
        if self.dialect == "postgres":
            return self._bind_postgres(values, types)
        return bind_question_marks(self.pieces, self.quoted, values, types, _sqlite_value)

    def _bind_postgres(self, values: Mapping[str, Any], types: Mapping[str, Parameter]
                       ) -> BoundStatement:
        out: list[str] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif piece.kind == "identifier":
                out.append(self.quoted[piece.name][values[piece.name]])
            else:
                out.append(f"${piece.number}")
        return BoundStatement(
            "".join(out), tuple(_to_postgres(values[name], types[name]) for name in self.order),
            self._identifiers(values))

    def _identifiers(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(values[name]) for name in self.quoted if values.get(name) is not None)



def quote_identifier(name: str) -> str:
    """A double-quoted SQL identifier with embedded double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


# --- value conversion per dialect ------------------------------------------------------------


def _to_postgres(value: Any, parameter: Parameter) -> Any:
    if value is None:
        return None
    if parameter.base == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _sqlite_scalar(value: Any, base: str) -> Any:
    if base == "date" or base == "datetime":
        return value.isoformat()
    if base == "boolean":
        return 1 if value else 0
    if base == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _sqlite_value(value: Any, base: str) -> Any:
    return None if value is None else _sqlite_scalar(value, base)


def _to_sqlite(value: Any, parameter: Parameter) -> Any:
    return _sqlite_value(value, parameter.base)


class Slot(Protocol):
    """Where a binding stands in a compiled statement: its parameter and how it is bound."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...


def bind_question_marks(pieces: Sequence[str | Slot], quoted: Mapping[str, Mapping[str, str]],
                        values: Mapping[str, Any], types: Mapping[str, Parameter],
                        convert: Callable[[Any, str], Any]) -> BoundStatement:
    """A statement with `?` placeholders (SQLite's and MySQL's): one per value, in order; an
    array as one per element (`NULL` when empty); an identifier as its quoted choice in the
    text. `convert(value, base type)` makes each value the driver's."""
    out: list[str] = []
    bound: list[Any] = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
        elif piece.kind == "identifier":
            out.append(quoted[piece.name][values[piece.name]])
        elif piece.kind == "array":
            items = values[piece.name]
            if not items:
                out.append("NULL")
            else:
                out.append(", ".join("?" * len(items)))
                base = types[piece.name].base
                bound.extend(convert(item, base) for item in items)
        else:
            out.append("?")
            bound.append(convert(values[piece.name], types[piece.name].base))
    identifiers = tuple(str(values[name]) for name in quoted if values.get(name) is not None)
    return BoundStatement("".join(out), tuple(bound), identifiers)


# --- the lexer and compiler -----------------------------------------------------------------


# Statements that create, run or drop prepared statements by name (or all of them, DISCARD ALL),
# and anonymous code blocks (DO), which can do the same through dynamic SQL: their effect would
# outlive the run on its pooled connection, where the appliance keeps its own prepared statements
# under names a run could take over. Refused as a stored query's statement in PostgreSQL.
_SESSION_STATEMENTS = frozenset({"PREPARE", "EXECUTE", "DEALLOCATE", "DISCARD", "DO"})
_WORD_RE = re.compile(r"[A-Za-z_]+")


class _Lexer:
    """One pass over SQL text: splits it into plain text and bindings, or raises InvalidQuery."""

    def __init__(self, text: str, dialect: Dialect) -> None:
        self.text = text
        self.dialect = dialect
        self.pieces: list[str | tuple[str, int]] = []  # text, or (binding name, offset)
        self.semicolon: int | None = None
        self.significant = False
        self.first: int | None = None  # where the statement's first token starts

    def fail(self, offset: int, problem: str, suggestion: str | None = None) -> InvalidQuery:
        line, column = _line_col(self.text, offset)
        return InvalidQuery(problem, line=line, column=column, suggestion=suggestion)

    def token(self, offset: int) -> None:
        """A significant token starts at `offset`: refuse it if a statement already ended."""
        if self.semicolon is not None:
            raise self.fail(offset, "more than one statement",
                            "a stored query runs exactly one statement; save each as its own "
                            "query (one trailing ';' is allowed)")
        if self.first is None:
            self.first = offset
        self.significant = True

    def statement_end(self, offset: int) -> None:
        """A ';' at `offset`: only one, and only after a statement."""
        if not self.significant:
            raise self.fail(offset, "';' before any statement", "remove it")
        self.token(offset)
        self.semicolon = offset

    def run(self) -> list[str | tuple[str, int]]:
        text, n = self.text, len(self.text)
        postgres = self.dialect == "postgres"
        plain = _PLAIN_RE[self.dialect]
        start = 0  # start of the pending plain-text piece
        i = 0
        while i < n:
            m = plain.match(text, i)
            if m:
                chunk = m.group()
                if not chunk.isspace():
                    self.token(i + len(chunk) - len(chunk.lstrip()))
                i = m.end()
                continue
            c = text[i]
            nxt = text[i + 1] if i + 1 < n else ""
            if c == "'":
                self.token(i)
                escapes = postgres and i > 0 and text[i - 1] in "eE" and (
                    i < 2 or not _is_word(text[i - 2]))
                i = self._quoted(i, "'", "string literal", backslash=escapes)
            elif c == '"':
                self.token(i)
                i = self._quoted(i, '"', "quoted identifier")
            elif c == "-" and nxt == "-":
                end = text.find("\n", i)
                end = n if end == -1 else end
                self._no_binding(i, end, "comment")
                i = end
            elif c == "/" and nxt == "*":
                i = self._block_comment(i)
            elif c == "{" and nxt == "{":
                m = _BINDING_RE.match(text, i)
                if not m:
                    raise self.fail(i, "malformed binding",
                                    "write a binding as {{ name }}, where name is a declared "
                                    "parameter")
                self.token(i)
                self._check_adjacent(i, m.end())
                self.pieces.append(text[start:i])
                self.pieces.append((m.group(1), i))
                i = start = m.end()
            elif c == "}" and nxt == "}":
                raise self.fail(i, "'}}' without a matching '{{'",
                                "write a binding as {{ name }}")
            elif c == ";":
                self.statement_end(i)
                i += 1
            elif postgres and c == "$":
                i = self._dollar(i)
            elif not postgres and c == "`":
                self.token(i)
                i = self._quoted(i, "`", "quoted identifier")
            elif not postgres and c == "[":
                self.token(i)
                end = text.find("]", i + 1)
                if end == -1:
                    raise self.fail(i, "unterminated quoted identifier", "close it with ]")
                self._no_binding(i, end, "quoted identifier")
                i = end + 1
            elif not postgres and c in "?:@$":
                if c == "?" or (nxt and _is_word(nxt)):
                    raise self.fail(i, "a placeholder is already in the text",
                                    "use {{ name }} bindings instead of ?, :name, @name or $name")
                self.token(i)
                i += 1
            else:
                if not c.isspace():
                    self.token(i)
                i += 1
        self.pieces.append(text[start:])
        if not self.significant:
            raise InvalidQuery("the query is empty", suggestion="write one SQL statement")
        if postgres and self.first is not None:
            word = _WORD_RE.match(text, self.first)
            if word and word.group().upper() in _SESSION_STATEMENTS:
                raise self.fail(self.first, f"{word.group().upper()} is not allowed in a stored "
                                            "query",
                                "the appliance prepares every stored query itself: write the "
                                "statement with {{ name }} bindings instead of PREPARE and "
                                "EXECUTE, and a DO block as a function (a statement prepared or "
                                "dropped by one run would be seen by later runs on the same "
                                "connection)")
        return self.pieces

    def _quoted(self, i: int, quote: str, what: str, *, backslash: bool = False) -> int:
        """Skip a quoted literal starting at i (doubled quotes escape); return the offset after."""
        text, n = self.text, len(self.text)
        j = i + 1
        while True:
            k = _find_escaped(text, quote, j) if backslash else text.find(quote, j)
            if k == -1:
                raise self.fail(i, f"unterminated {what}", f"close it with {quote}")
            if k + 1 < n and text[k + 1] == quote:
                j = k + 2
                continue
            self._no_binding(i, k, what)
            return k + 1

    def _block_comment(self, i: int) -> int:
        text = self.text
        if self.dialect == "sqlite":
            end = text.find("*/", i + 2)
            if end == -1:
                raise self.fail(i, "unterminated comment", "close it with */")
            self._no_binding(i, end, "comment")
            return end + 2
        depth, j = 1, i + 2
        while depth:
            close = text.find("*/", j)
            if close == -1:
                raise self.fail(i, "unterminated comment", "close it with */ (comments nest)")
            opening = text.find("/*", j, close)
            if opening != -1:
                depth, j = depth + 1, opening + 2
            else:
                depth, j = depth - 1, close + 2
        self._no_binding(i, j, "comment")
        return j

    def _dollar(self, i: int) -> int:
        text = self.text
        if i > 0 and _is_word(text[i - 1]):
            return i + 1  # part of an identifier such as a$b
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt.isdigit():
            raise self.fail(i, "a positional placeholder is already in the text",
                            "use {{ name }} bindings instead of $1, $2, ...")
        m = _DOLLAR_TAG_RE.match(text, i)
        if not m:
            self.token(i)
            return i + 1
        self.token(i)
        tag = m.group()
        end = text.find(tag, m.end())
        if end == -1:
            raise self.fail(i, "unterminated dollar-quoted string", f"close it with {tag}")
        self._no_binding(i, end, "dollar-quoted string")
        return end + len(tag)

    def _no_binding(self, start: int, end: int, what: str) -> None:
        at = self.text.find("{{", start, end)
        if at == -1:
            return
        m = _NAME_INSIDE_RE.match(self.text, at)
        name = m.group(1) if m else "name"
        suggestions = {
            "string literal": f"bindings are never substituted inside quotes: put {{{{ {name} }}}} "
                              f"where the whole literal was (for a pattern write "
                              f"'%' || {{{{ {name} }}}} || '%')",
            "quoted identifier": f"declare '{name}' as type identifier with its choices and "
                                 f"write {{{{ {name} }}}} without quotes",
            "dollar-quoted string": "a dollar-quoted body cannot take bindings; pass the value "
                                    f"as an argument, e.g. f({{{{ {name} }}}})",
            "comment": "remove the binding from the comment (or remove the comment)",
        }
        raise self.fail(at, f"a binding inside a {what}", suggestions[what])

    def _check_adjacent(self, start: int, end: int) -> None:
        """Refuse a binding glued to something its placeholder could merge with."""
        text = self.text
        if (start > 0 and _sticky(text[start - 1])) or (end < len(text) and _sticky(text[end])):
            raise self.fail(start, "a binding touches a word, number, quote or another binding",
                            "separate it with a space or an operator")


def _sticky(ch: str) -> bool:
    return ch.isalnum() or ch in "_$'\"`{}"


def _find_escaped(text: str, quote: str, j: int) -> int:
    """The offset of the next `quote` not escaped by a backslash, or -1."""
    n = len(text)
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2
        elif ch == quote:
            return j
        else:
            j += 1
    return -1


def compile_sql(text: Any, dialect: Dialect, parameters: ParameterSet) -> SqlTemplate:
    """Compile SQL text at save time; InvalidQuery with line, column and a suggestion."""
    if dialect not in DIALECTS:
        raise InvalidQuery(f"unknown SQL dialect; use one of {', '.join(DIALECTS)}")
    if not isinstance(text, str):
        raise InvalidQuery("the body of a SQL query must be a string")
    if len(text) > MAX_SQL_LENGTH:
        raise InvalidQuery(f"the query is longer than {MAX_SQL_LENGTH} characters")
    raw = _Lexer(text, dialect).run()

    pieces: list[str | _Slot] = []
    numbers: dict[str, int] = {}
    order: list[str] = []
    dynamic = False
    used: set[str] = set()
    for piece in raw:
        if isinstance(piece, str):
            if piece:
                pieces.append(piece)
            continue
        name, offset = piece
        if name not in parameters:
            line, column = _line_col(text, offset)
            raise InvalidQuery(f"binding '{name}' is not a declared parameter", line=line,
                               column=column,
                               suggestion=f'declare it in "parameters" (e.g. {{"name": "{name}", '
                                          f'"type": "string"}}) or fix the spelling',
                               parameter=name)
        used.add(name)
        parameter = parameters[name]
        before = pieces[-1] if pieces and isinstance(pieces[-1], str) else ""
        if parameter.base == "identifier":
            pieces.append(_Slot(name, "identifier", 0))
            dynamic = True
            continue
        if parameter.is_array:
            _check_array_context(text, offset, name, before, dialect)
            if dialect == "sqlite":
                pieces.append(_Slot(name, "array", 0))
                dynamic = True
                continue
        if dialect == "postgres":
            if name not in numbers:
                numbers[name] = len(numbers) + 1
                order.append(name)
            pieces.append(_Slot(name, "array" if parameter.is_array else "value", numbers[name]))
        else:
            pieces.append(_Slot(name, "value", 0))
            order.append(name)
    used_check(parameters, used)

    quoted = {p.name: {c: quote_identifier(c) for c in p.choices or ()}
              for p in parameters if p.base == "identifier"}
    static_sql = None
    if not dynamic:
        static_sql = "".join(
            p if isinstance(p, str) else (f"${p.number}" if dialect == "postgres" else "?")
            for p in pieces)
    # PostgreSQL takes every value as validated, except json (sent as text).
    as_is = dialect == "postgres" and all(parameters[name].base != "json" for name in order)
    return SqlTemplate(dialect=dialect, parameters=parameters, source=text,
                       pieces=tuple(pieces), static_sql=static_sql, order=tuple(order),
                       quoted=quoted, as_is=as_is)


def _check_array_context(text: str, offset: int, name: str, before: str,
                         dialect: Dialect) -> None:
    line, column = _line_col(text, offset)
    if dialect == "postgres" and _IN_BEFORE_RE.search(before):
        raise InvalidQuery(
            f"array parameter '{name}' inside IN (...)", line=line, column=column,
            suggestion=f"in PostgreSQL an array binds as one value: write "
                       f"= ANY({{{{ {name} }}}}) instead of IN ({{{{ {name} }}}})",
            parameter=name)
    if dialect == "sqlite" and _ANY_BEFORE_RE.search(before):
        raise InvalidQuery(
            f"array parameter '{name}' inside ANY(...)", line=line, column=column,
            suggestion=f"SQLite has no arrays: write IN ({{{{ {name} }}}}), which expands "
                       f"to one placeholder per element",
            parameter=name)


def is_dynamic(template: SqlTemplate) -> bool:
    """Whether the statement text depends on run-time values (identifiers, SQLite arrays)."""
    return template.static_sql is None


__all__ = ["DIALECTS", "MAX_SQL_LENGTH", "BoundStatement", "Dialect", "SqlTemplate",
           "compile_sql", "is_dynamic", "quote_identifier"]
