"""The binding compiler's MySQL/MariaDB dialect: `{{ name }}` in SQL text -> `?` placeholders for
server-side prepared statements (COM_STMT_PREPARE), and the values in order.

Owns MySQL's lexical rules as the stored-query compiler needs them and the per-run bind. Pure
code: no I/O, no logging, and no parameter value ever enters the SQL text (only identifiers taken
from their declared `choices`, quoted with backticks).

The lexer's view of where a literal, an identifier or a comment starts and ends must be the
server's, whatever the session's sql_mode: it refuses `\\'` inside '…' (and `\\"` inside "…"),
whose meaning depends on NO_BACKSLASH_ESCAPES, so that both modes end every literal at the same
place; "…" spans the same text whether ANSI_QUOTES makes it a string or an identifier. Executable
comments (`/*! … */`, MariaDB's `/*M! … */`), which the server runs as SQL, are refused anywhere
in the text, and so is a NUL character (the server's lexer may stop at one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final, Literal

from appliance.kinds.sql.binding import MAX_SQL_LENGTH, BoundStatement, bind_question_marks
from appliance.parameters import InvalidQuery, ParameterSet, used_check

_BINDING_RE: Final = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]{0,62})[ \t]*\}\}")
_NAME_INSIDE_RE: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)")
# Characters that never start anything the lexer must look at.
_PLAIN_RE: Final = re.compile(r"[^'\"`#\-/;{}?\x00]+")
_EXECUTABLE_COMMENT_RE: Final = re.compile(r"/\*[Mm]?!")
_LIST_OPEN_RE: Final = re.compile(r"\(\s*$")
_LIST_CLOSE_RE: Final = re.compile(r"\s*\)")


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


def _fail(text: str, offset: int, problem: str, suggestion: str,
          parameter: str | None = None) -> InvalidQuery:
    line, column = _line_col(text, offset)
    return InvalidQuery(problem, line=line, column=column, suggestion=suggestion,
                        parameter=parameter)


def quote_identifier(name: str) -> str:
    """A backtick-quoted MySQL identifier with embedded backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


# --- the compiled template -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slot:
    """One binding occurrence in the text."""

    name: str
    kind: Literal["value", "array", "identifier"]


@dataclass(frozen=True, slots=True)
class MysqlTemplate:
    """A query compiled at save time; `bind` runs per request and is cheap.

    The bound statement has `?` placeholders, one per value in `values`, in order: strings and
    integers as they are, numbers as int or float, booleans as 1/0 (MySQL's BOOLEAN is TINYINT),
    dates as `date`, date-times as naive `datetime` in UTC (DATETIME has no time zone: the
    engine runs its sessions in UTC), json as JSON text, an array as one placeholder per element
    (`NULL` when empty), an identifier as its backtick-quoted choice in the text.
    """

    parameters: ParameterSet
    source: str
    pieces: tuple[str | _Slot, ...]
    static_sql: str | None  # the whole statement, when no run-time value changes the text
    order: tuple[str, ...]  # parameter name per placeholder, for static statements
    quoted: Mapping[str, Mapping[str, str]]  # identifier parameter -> choice -> quoted

    def bind(self, params: Any) -> BoundStatement:
        """Validate the run-time values strictly, then build the statement and its values."""
        return self.bind_values(self.parameters.validate(params))

    def bind_values(self, values: Mapping[str, Any]) -> BoundStatement:
        """Bind already-validated values (from `parameters.validate`)."""
        types = self.parameters.by_name
        if self.static_sql is not None:
            return BoundStatement(self.static_sql,
                                  tuple(_to_mysql(values[name], types[name].base)
                                        for name in self.order))
        return bind_question_marks(self.pieces, self.quoted, values, types, _to_mysql)


def _to_mysql(value: Any, base: str) -> Any:
    if value is None:
        return None
    if base == "boolean":
        return 1 if value else 0
    if base == "datetime":
        return value.astimezone(UTC).replace(tzinfo=None)
    if base == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


# --- the lexer --------------------------------------------------------------------------------


class _Lexer:
    """One pass over MySQL text: splits it into plain text and bindings, or raises InvalidQuery."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pieces: list[str | tuple[str, int]] = []  # text, or (binding name, offset)
        self.semicolon: int | None = None
        self.significant = False

    def fail(self, offset: int, problem: str, suggestion: str) -> InvalidQuery:
        return _fail(self.text, offset, problem, suggestion)

    def token(self, offset: int) -> None:
        """A significant token starts at `offset`: refuse it if a statement already ended."""
        if self.semicolon is not None:
            raise self.fail(offset, "more than one statement",
                            "a stored query runs exactly one statement; save each as its own "
                            "query (one trailing ';' is allowed)")
        self.significant = True

    def run(self) -> list[str | tuple[str, int]]:
        text, n = self.text, len(self.text)
        start = 0  # start of the pending plain-text piece
        end_of_statement = n  # the text sent: up to a trailing ';' (which is left out)
        i = 0
        while i < n:
            m = _PLAIN_RE.match(text, i)
            if m:
                chunk = m.group()
                if not chunk.isspace():
                    self.token(i + len(chunk) - len(chunk.lstrip()))
                i = m.end()
                continue
            c = text[i]
            nxt = text[i + 1] if i + 1 < n else ""
            if c == "'" or c == '"':
                self.token(i)
                i = self._literal(i, c)
            elif c == "`":
                self.token(i)
                i = self._backticks(i)
            elif c == "#":
                i = self._line_comment(i)
            elif c == "-" and nxt == "-" and (i + 2 >= n or ord(text[i + 2]) <= 0x20):
                i = self._line_comment(i)  # `-- ` needs whitespace or a control character
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
                raise self.fail(i, "'}}' without a matching '{{'", "write a binding as {{ name }}")
            elif c == ";":
                if not self.significant:
                    raise self.fail(i, "';' before any statement", "remove it")
                self.token(i)
                self.semicolon = end_of_statement = i
                i += 1
            elif c == "?":
                raise self.fail(i, "a placeholder is already in the text",
                                "use {{ name }} bindings instead of ?")
            elif c == "\x00":
                raise self.fail(i, "a NUL character in the query", "remove it")
            else:
                self.token(i)
                i += 1
        if not self.significant:
            raise InvalidQuery("the query is empty", suggestion="write one SQL statement")
        self.pieces.append(text[start:end_of_statement])
        return self.pieces

    def _literal(self, i: int, quote: str) -> int:
        """Skip a '…' or "…" literal (backslash escapes, doubled quotes); the offset after it."""
        text, n = self.text, len(self.text)
        j = i + 1
        while j < n:
            ch = text[j]
            if ch == "\\":
                if j + 1 < n and text[j + 1] == quote:
                    raise self.fail(j, f"\\{quote} inside a {quote}…{quote} literal",
                                    f"write {quote}{quote} for a {quote} inside the literal: "
                                    f"the meaning of \\{quote} depends on the server's "
                                    "sql_mode (NO_BACKSLASH_ESCAPES)")
                j += 2
            elif ch == quote:
                if j + 1 < n and text[j + 1] == quote:
                    j += 2
                    continue
                self._no_binding(i, j, "string literal")
                return j + 1
            else:
                j += 1
        raise self.fail(i, "unterminated string literal", f"close it with {quote}")

    def _backticks(self, i: int) -> int:
        text = self.text
        j = i + 1
        while True:
            k = text.find("`", j)
            if k == -1:
                raise self.fail(i, "unterminated quoted identifier", "close it with `")
            if text.startswith("``", k):
                j = k + 2
                continue
            self._no_binding(i, k, "quoted identifier")
            return k + 1

    def _line_comment(self, i: int) -> int:
        end = self.text.find("\n", i)
        end = len(self.text) if end == -1 else end
        self._no_binding(i, end, "comment")
        return end

    def _block_comment(self, i: int) -> int:
        end = self.text.find("*/", i + 2)
        if end == -1:
            raise self.fail(i, "unterminated comment", "close it with */ (comments do not nest)")
        self._no_binding(i, end, "comment")
        return end + 2

    def _no_binding(self, start: int, end: int, what: str) -> None:
        at = self.text.find("{{", start, end)
        if at == -1:
            return
        m = _NAME_INSIDE_RE.match(self.text, at)
        name = m.group(1) if m else "name"
        suggestions = {
            "string literal": f"bindings are never substituted inside quotes: put {{{{ {name} }}}} "
                              f"where the whole literal was (for a pattern write "
                              f"CONCAT('%', {{{{ {name} }}}}, '%'))",
            "quoted identifier": f"declare '{name}' as type identifier with its choices and "
                                 f"write {{{{ {name} }}}} without backticks",
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
    return ch.isalnum() or ch in "_$@'\"`{}"


# --- the compiler -----------------------------------------------------------------------------


def compile_mysql(text: Any, parameters: ParameterSet) -> MysqlTemplate:
    """Compile MySQL text at save time; InvalidQuery with line, column and a suggestion."""
    if not isinstance(text, str):
        raise InvalidQuery("the body of a SQL query must be a string")
    if len(text) > MAX_SQL_LENGTH:
        raise InvalidQuery(f"the query is longer than {MAX_SQL_LENGTH} characters")
    executable = _EXECUTABLE_COMMENT_RE.search(text)
    if executable:
        raise _fail(text, executable.start(), "an executable comment (/*! … */) in the query",
                    "the server runs what such a comment holds as SQL: write it as plain SQL "
                    "(and no '/*!' anywhere, even inside a literal)")
    raw = _Lexer(text).run()

    pieces: list[str | _Slot] = []
    order: list[str] = []
    dynamic = False
    used: set[str] = set()
    for index, piece in enumerate(raw):
        if isinstance(piece, str):
            if piece:
                pieces.append(piece)
            continue
        name, offset = piece
        if name not in parameters:
            raise _fail(text, offset, f"binding '{name}' is not a declared parameter",
                        f'declare it in "parameters" (e.g. {{"name": "{name}", '
                        f'"type": "string"}}) or fix the spelling', parameter=name)
        used.add(name)
        parameter = parameters[name]
        if parameter.base == "identifier":
            pieces.append(_Slot(name, "identifier"))
            dynamic = True
        elif parameter.is_array:
            before = raw[index - 1] if index else ""
            after = raw[index + 1] if index + 1 < len(raw) else ""
            if not (isinstance(before, str) and _LIST_OPEN_RE.search(before)
                    and isinstance(after, str) and _LIST_CLOSE_RE.match(after)):
                raise _fail(text, offset, f"array parameter '{name}' outside a list of its own",
                            f"MySQL has no arrays: an array expands to one placeholder per "
                            f"element, so write it alone in parentheses, e.g. "
                            f"IN ({{{{ {name} }}}})", parameter=name)
            pieces.append(_Slot(name, "array"))
            dynamic = True
        else:
            pieces.append(_Slot(name, "value"))
            order.append(name)
    used_check(parameters, used)

    quoted = {p.name: {c: quote_identifier(c) for c in p.choices or ()}
              for p in parameters if p.base == "identifier"}
    static_sql = None
    if not dynamic:
        static_sql = "".join(p if isinstance(p, str) else "?" for p in pieces)
    return MysqlTemplate(parameters=parameters, source=text, pieces=tuple(pieces),
                         static_sql=static_sql, order=tuple(order), quoted=quoted)


__all__ = ["MysqlTemplate", "compile_mysql", "quote_identifier"]
