"""The application's SQL is written with SQLite's `?` placeholders; PostgreSQL numbers them
(`$1`, `$2`, …). One single-pass lexer turns the first into the second, once per statement text.

Owns the translation and its cache. Never touches a `?` inside a string literal ('…', E'…'), a
quoted identifier ("…"), a dollar-quoted body ($tag$…$tag$) or a comment (-- … and nested
/* … */); never changes anything else in the text. The store's SQL uses no PostgreSQL operator
spelled with `?` (jsonb's `?`, `?|`, `?&`): a `?` outside those is always a placeholder.
"""

from __future__ import annotations

import functools
import re

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


class PlaceholderError(ValueError):
    """The text cannot be translated safely (an unterminated literal or comment)."""


@functools.lru_cache(maxsize=1024)
def to_numbered(sql: str) -> str:
    """`sql` with each `?` placeholder replaced by `$1`, `$2`, … in order (cached per text)."""
    out: list[str] = []
    n = 0
    i, start, size = 0, 0, len(sql)
    while i < size:
        c = sql[i]
        if c == "?":
            n += 1
            out.append(sql[start:i])
            out.append(f"${n}")
            i += 1
            start = i
        elif c == "'":
            i = _end_of_quoted(sql, i, "'", backslashes=_escape_string(sql, i))
        elif c == '"':
            i = _end_of_quoted(sql, i, '"', backslashes=False)
        elif c == "-" and sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = size if newline < 0 else newline + 1
        elif c == "/" and sql.startswith("/*", i):
            i = _end_of_block_comment(sql, i)
        elif c == "$":
            i = _end_of_dollar_quoted(sql, i)
        else:
            i += 1
    out.append(sql[start:])
    return "".join(out)


def _escape_string(sql: str, quote: int) -> bool:
    """Whether the literal at `quote` is an E'…' string (where a backslash escapes the quote)."""
    if quote == 0 or sql[quote - 1] not in "eE":
        return False
    return quote < 2 or not (sql[quote - 2].isalnum() or sql[quote - 2] in "_$")


def _end_of_quoted(sql: str, i: int, quote: str, *, backslashes: bool) -> int:
    """The index after the literal or identifier opened at `i` ('' or "" inside is one quote;
    in an E'…' string a backslash escapes the next character)."""
    j, size = i + 1, len(sql)
    while j < size:
        c = sql[j]
        if backslashes and c == "\\":
            j += 2
        elif c == quote:
            if j + 1 < size and sql[j + 1] == quote:
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise PlaceholderError(f"unterminated {quote} at character {i + 1}")


def _end_of_block_comment(sql: str, i: int) -> int:
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise PlaceholderError(f"unterminated comment at character {i + 1}")


def _end_of_dollar_quoted(sql: str, i: int) -> int:
    """After a $tag$…$tag$ body opened at `i`; `$` followed by anything else (`$1`) is text."""
    if i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_"):
        return i + 1  # part of an identifier (`a$b`)
    match = _DOLLAR_TAG.match(sql, i)
    if match is None:
        return i + 1
    tag = match.group(0)
    end = sql.find(tag, match.end())
    if end < 0:
        raise PlaceholderError(f"unterminated {tag} body at character {i + 1}")
    return end + len(tag)
