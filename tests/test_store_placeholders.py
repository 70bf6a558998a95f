"""The `?` → `$n` translation of the store's SQL for PostgreSQL: only placeholders change."""

from __future__ import annotations

import pytest

from appliance.store.placeholders import PlaceholderError, to_numbered


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = $1 AND b = $2"),
    ("SELECT '?' , ?", "SELECT '?' , $1"),
    ("SELECT 'it''s ?' , ?", "SELECT 'it''s ?' , $1"),
    ('SELECT "odd?name" FROM t WHERE x = ?', 'SELECT "odd?name" FROM t WHERE x = $1'),
    ('SELECT "a""?" , ?', 'SELECT "a""?" , $1'),
    ("SELECT E'\\'?' , ?", "SELECT E'\\'?' , $1"),
    ("SELECT ? -- what? ?\n, ?", "SELECT $1 -- what? ?\n, $2"),
    ("SELECT /* ? /* nested ? */ ? */ ?", "SELECT /* ? /* nested ? */ ? */ $1"),
    ("SELECT $$ ? $$, $tag$ ?'\" $tag$, ?", "SELECT $$ ? $$, $tag$ ?'\" $tag$, $1"),
    ("SELECT a$b, ?", "SELECT a$b, $1"),
    ("SELECT 1", "SELECT 1"),
    ("VALUES (?,?,?)", "VALUES ($1,$2,$3)"),
    ("SELECT 'a\\' , ?", "SELECT 'a\\' , $1"),  # a plain string: the backslash is a character
])
def test_only_placeholders_are_numbered(sql: str, expected: str) -> None:
    assert to_numbered(sql) == expected


@pytest.mark.parametrize("sql", ["SELECT 'open ?", 'SELECT "open', "SELECT /* open",
                                 "SELECT $x$ open", "SELECT E'\\' ?"])
def test_unterminated_text_is_refused_not_guessed(sql: str) -> None:
    with pytest.raises(PlaceholderError):
        to_numbered(sql)


def test_translation_is_cached_per_text() -> None:
    sql = "SELECT ? AS cached_once"
    assert to_numbered(sql) is to_numbered(sql)
