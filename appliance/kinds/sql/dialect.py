"""What a SQL dialect is to the binding compiler: its lexical rules and how it binds, as data
(`SqlDialect`), and the two dialects this package has always served (`POSTGRES`, `SQLITE`).

Owns those tables and the value conversions they name. Never scans text or binds (that is
`scanner.py` and `binding.py`); a kind with a dialect of its own declares it in its own folder
(`kinds/mysql/binding.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

# How a pattern is written around a binding, in the advice for a binding inside a literal:
# BINDING stands for `{{ name }}`.
_CONCAT: Final = "'%' || BINDING || '%'"

# An array binding's place: (parameter name, the text before it, the text after it, up to the
# next binding) -> None when it may stand there, else (problem, suggestion).
ArrayRule = Callable[[str, str, str], tuple[str, str] | None]


@dataclass(frozen=True, slots=True, eq=False)
class SqlDialect:
    """One SQL dialect's rules. Every flag says what the server's lexer does, so that the
    compiler's view of where a literal, an identifier or a comment starts and ends is the
    server's; the rest says how bindings become placeholders and values."""

    name: str
    # --- literals and quoted identifiers ---
    # "…" is a quoted identifier (standard SQL) or a string literal (MySQL without ANSI_QUOTES;
    # it spans the same text either way).
    double_quotes: Literal["identifier", "string"]
    # Backslashes inside a string literal: "never" escape; "e-strings": only in E'…' (PostgreSQL);
    # "either": they may or may not, by a server mode (MySQL's NO_BACKSLASH_ESCAPES), so `\'`
    # (`\"`) inside a literal of that quote, which ends it in one mode and not the other, is
    # refused and every other `\x` is skipped as a pair (which ends it at the same place in both).
    backslashes: Literal["never", "e-strings", "either"]
    backticks: bool = False  # `…` identifiers
    brackets: bool = False  # […] identifiers
    dollar_quotes: bool = False  # $tag$…$tag$ strings; $1 placeholders refused
    # --- comments ---
    hash_comments: bool = False  # `# …` to the end of the line
    dash_comment_needs_space: bool = False  # `--` starts a comment only before a blank or the end
    nested_comments: bool = False  # /* /* */ */
    unterminated_comment: str = "close it with */"  # the advice for an unclosed /*
    executable_comments: bool = False  # /*! … */ and /*M! … */ run as SQL: refused anywhere
    # --- what else is refused ---
    nul: bool = False  # a NUL character is refused (the server's lexer may stop at one)
    question_marks: bool = False  # a `?` in the text is a placeholder: refused
    named_markers: str = ""  # `:name`, `@name`, `$name` placeholders: refused
    session_statements: frozenset[str] = frozenset()  # first words refused (PostgreSQL)
    sticky: str = "_$'\"`{}"  # besides letters and digits: what a binding may not touch
    # --- binding ---
    placeholder: Literal["numbered", "question"] = "question"  # $n (one per name) or ? (each)
    expand_arrays: bool = True  # an array as one ? per element, else as one value
    array_rule: ArrayRule | None = None
    identifier_quote: str = '"'
    concat: str = _CONCAT
    # Base type -> the driver's value, for the types this dialect's driver does not take as
    # validated (None stays None); every other type goes as it is.
    converters: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    keeps_final_semicolon: bool = True  # else a trailing ';' (and what follows) is not sent
    # Derived from the above: the characters that never start anything the scanner must see.
    plain: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        specials = "'\"-/;{}" + "".join(
            chars for on, chars in ((self.dollar_quotes, "$"), (self.backticks, "`"),
                                    (self.brackets, "["), (self.question_marks, "?"),
                                    (True, self.named_markers), (self.hash_comments, "#"),
                                    (self.nul, "\x00")) if on)
        object.__setattr__(self, "plain", re.compile(f"[^{re.escape(specials)}]+"))

    def quote_identifier(self, name: str) -> str:
        """An identifier in this dialect's quotes, embedded quotes doubled."""
        quote = self.identifier_quote
        return quote + name.replace(quote, quote + quote) + quote


def json_text(value: Any) -> str:
    """A json parameter's value as the JSON text a driver sends."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def boolean_as_integer(value: Any) -> int:
    """A boolean for a database without one: 1 or 0."""
    return 1 if value else 0


def _iso(value: Any) -> Any:
    return value.isoformat()


def refused_after(before: re.Pattern[str], problem: str, suggestion: str) -> ArrayRule:
    """An array rule: an array binding right after text that `before` finds at its end is
    refused (NAME in `problem` and BINDING in `suggestion` stand for the parameter)."""
    def rule(name: str, text_before: str, text_after: str) -> tuple[str, str] | None:
        if not before.search(text_before):
            return None
        return problem.replace("NAME", name), suggestion.replace("BINDING", f"{{{{ {name} }}}}")
    return rule


# Statements that create, run or drop prepared statements by name (or all of them, DISCARD ALL),
# and anonymous code blocks (DO), which can do the same through dynamic SQL: their effect would
# outlive the run on its pooled connection, where the appliance keeps its own prepared statements
# under names a run could take over.
POSTGRES: Final = SqlDialect(
    name="postgres", double_quotes="identifier", backslashes="e-strings", dollar_quotes=True,
    nested_comments=True, unterminated_comment="close it with */ (comments nest)",
    session_statements=frozenset({"PREPARE", "EXECUTE", "DEALLOCATE", "DISCARD", "DO"}),
    placeholder="numbered", expand_arrays=False,
    array_rule=refused_after(re.compile(r"\bIN\s*\(\s*$", re.IGNORECASE),
                             "array parameter 'NAME' inside IN (...)",
                             "in PostgreSQL an array binds as one value: write = ANY(BINDING) "
                             "instead of IN (BINDING)"),
    # asyncpg takes every validated value (dates, date-times, lists) except json, sent as text.
    converters={"json": json_text})

SQLITE: Final = SqlDialect(
    name="sqlite", double_quotes="identifier", backslashes="never", backticks=True,
    brackets=True, question_marks=True, named_markers=":@$",
    array_rule=refused_after(re.compile(r"\b(?:ANY|ALL|SOME)\s*\(\s*$", re.IGNORECASE),
                             "array parameter 'NAME' inside ANY(...)",
                             "SQLite has no arrays: write IN (BINDING), which expands to one "
                             "placeholder per element"),
    # sqlite3 has no date, boolean or JSON type: ISO-8601 text, 1/0, JSON text.
    converters={"date": _iso, "datetime": _iso, "boolean": boolean_as_integer, "json": json_text})

DIALECTS: Final = {dialect.name: dialect for dialect in (POSTGRES, SQLITE)}

__all__ = ["DIALECTS", "POSTGRES", "SQLITE", "ArrayRule", "SqlDialect", "boolean_as_integer",
           "json_text", "refused_after"]
