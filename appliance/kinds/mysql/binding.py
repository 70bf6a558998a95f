"""The binding compiler's MySQL/MariaDB dialect: `{{ name }}` in SQL text -> `?` placeholders for
server-side prepared statements (COM_STMT_PREPARE), and the values in order.

Owns what MySQL's rules are (`MYSQL`, a `SqlDialect` that the shared scanner and compiler of
`kinds/sql` follow), its values and where an array may stand. Pure code: no I/O, no logging, and
no parameter value ever enters the SQL text (only identifiers taken from their declared
`choices`, quoted with backticks).

The scanner's view of where a literal, an identifier or a comment starts and ends must be the
server's, whatever the session's sql_mode: it refuses `\\'` inside '…' (and `\\"` inside "…"),
whose meaning depends on NO_BACKSLASH_ESCAPES, so that both modes end every literal at the same
place; "…" spans the same text whether ANSI_QUOTES makes it a string or an identifier. Executable
comments (`/*! … */`, MariaDB's `/*M! … */`), which the server runs as SQL, are refused anywhere
in the text, and so is a NUL character (the server's lexer may stop at one).
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any, Final

from appliance.kinds.sql.binding import SqlTemplate, compile_sql
from appliance.kinds.sql.dialect import SqlDialect, boolean_as_integer, json_text
from appliance.parameters import ParameterSet

_LIST_OPEN_RE: Final = re.compile(r"\(\s*$")
_LIST_CLOSE_RE: Final = re.compile(r"\s*\)")


def _utc_naive(value: Any) -> Any:
    """DATETIME has no time zone: the instant in UTC, naive (the engine's sessions run in UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None)


def _own_list(name: str, before: str, after: str) -> tuple[str, str] | None:
    """MySQL has no arrays: an array expands to one placeholder per element, so it stands alone
    in parentheses."""
    if _LIST_OPEN_RE.search(before) and _LIST_CLOSE_RE.match(after):
        return None
    return (f"array parameter '{name}' outside a list of its own",
            f"MySQL has no arrays: an array expands to one placeholder per element, so write it "
            f"alone in parentheses, e.g. IN ({{{{ {name} }}}})")


MYSQL: Final = SqlDialect(
    name="mysql", double_quotes="string", backslashes="either", backticks=True,
    hash_comments=True, dash_comment_needs_space=True,
    unterminated_comment="close it with */ (comments do not nest)", executable_comments=True,
    nul=True, question_marks=True, sticky="_$@'\"`{}", array_rule=_own_list,
    identifier_quote="`", concat="CONCAT('%', BINDING, '%')",
    # Strings, integers and numbers as they are; BOOLEAN is TINYINT.
    converters={"boolean": boolean_as_integer, "datetime": _utc_naive, "json": json_text},
    keeps_final_semicolon=False)

# A MySQL template: `?` placeholders, one per value in `values`, in order; an array as one per
# element (`NULL` when empty); an identifier as its backtick-quoted choice in the text.
MysqlTemplate = SqlTemplate


def compile_mysql(text: Any, parameters: ParameterSet) -> SqlTemplate:
    """Compile MySQL text at save time; InvalidQuery with line, column and a suggestion."""
    return compile_sql(text, MYSQL, parameters)


def quote_identifier(name: str) -> str:
    """A backtick-quoted MySQL identifier with embedded backticks doubled."""
    return MYSQL.quote_identifier(name)


__all__ = ["MYSQL", "MysqlTemplate", "compile_mysql", "quote_identifier"]
