"""The SQL dialects as data (appliance/kinds/sql/dialect.py, kinds/mysql/binding.py): each flag of
each dialect's table holds in what the one scanner and compiler do, and a dialect is nothing but
its table. Per-dialect behaviour in depth, against the real servers, is in test_sql_binding.py,
test_sql_binding_postgres.py and test_mysql_binding.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from appliance.kinds.mysql.binding import MYSQL
from appliance.kinds.sql.binding import compile_sql, is_dynamic
from appliance.kinds.sql.dialect import POSTGRES, SQLITE, SqlDialect
from appliance.parameters import InvalidQuery, parse_parameters

DIALECTS = [POSTGRES, SQLITE, MYSQL]
S = [{"name": "s", "type": "string"}]


def outcome(text: str, dialect: SqlDialect, params: list[dict[str, Any]] = S) -> str:
    """The bound statement's text (the value 'v' for each binding), or the refusal's message."""
    try:
        template = compile_sql(text, dialect, parse_parameters(params))
    except InvalidQuery as exc:
        return exc.message
    return template.bind({"s": "v"}).sql


# (text, what it shows, the expected outcome's fragment for a dialect)
PROBES: list[tuple[str, Callable[[SqlDialect], str]]] = [
    ("SELECT `{{ s }}`", lambda d: "inside a quoted identifier" if d.backticks else "touches"),
    ("SELECT [{{ s }}]", lambda d: "inside a quoted identifier" if d.brackets else "SELECT ["),
    ("SELECT \"{{ s }}\"", lambda d: "inside a quoted identifier"
     if d.double_quotes == "identifier" else "inside a string literal"),
    ("SELECT 1 # {{ s }}\n", lambda d: "inside a comment" if d.hash_comments else "SELECT 1 #"),
    ("SELECT 1 --{{ s }}\n", lambda d: "SELECT 1 --" if d.dash_comment_needs_space
     else "inside a comment"),
    ("SELECT 1 /* /* */ {{ s }} */", lambda d: "inside a comment" if d.nested_comments
     else "SELECT 1 /* /* */ "),
    ("SELECT 1 /* open", lambda d: d.unterminated_comment),
    ("SELECT 1 /*! 2 */, {{ s }}", lambda d: "executable comment" if d.executable_comments
     else "SELECT 1 /*! 2 */, "),
    ("SELECT 'a\\' , {{ s }}", lambda d: "\\' inside a '…' literal" if d.backslashes == "either"
     else "SELECT 'a\\' , "),
    ("SELECT E'a\\' {{ s }}'", lambda d: {"e-strings": "inside a string literal",
                                          "either": "\\' inside a '…' literal",
                                          "never": "touches"}[d.backslashes]),
    ("SELECT $$ {{ s }} $$", lambda d: "inside a dollar-quoted string" if d.dollar_quotes
     else "placeholder" if "$" in d.named_markers else "SELECT $$ "),
    ("SELECT $1, {{ s }}", lambda d: "placeholder" if d.dollar_quotes or "$" in d.named_markers
     else "SELECT $1, "),
    ("SELECT ? , {{ s }}", lambda d: "placeholder" if d.question_marks else "SELECT ? , "),
    ("SELECT :n , {{ s }}", lambda d: "placeholder" if ":" in d.named_markers
     else "SELECT :n , "),
    ("SELECT @n , {{ s }}", lambda d: "placeholder" if "@" in d.named_markers
     else "SELECT @n , "),
    ("SELECT {{ s }} \x00", lambda d: "NUL character" if d.nul else "SELECT "),
    ("SELECT @{{ s }}", lambda d: "touches" if "@" in d.sticky else "SELECT @"),
    ("PREPARE p AS SELECT {{ s }}", lambda d: "PREPARE is not allowed"
     if "PREPARE" in d.session_statements else "PREPARE p AS SELECT "),
    ("SELECT {{ s }};", lambda d: ";" if d.keeps_final_semicolon else "SELECT "),
    ("SELECT {{ s }}, {{ s }}", lambda d: "$1, $1" if d.placeholder == "numbered" else "?, ?"),
    ("SELECT '{{ s }}'", lambda d: "for a pattern write " + d.concat.replace("BINDING",
                                                                              "{{ s }}")),
]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
@pytest.mark.parametrize(("text", "expect"), PROBES, ids=[text for text, _ in PROBES])
def test_each_flag_holds(dialect: SqlDialect, text: str, expect: Callable[[SqlDialect], str]):
    got = outcome(text, dialect)
    assert expect(dialect) in got, got


def test_the_probes_tell_the_dialects_apart():
    """Every dialect differs from every other in some probe: a flag that did nothing would not."""
    seen = {d.name: tuple(outcome(text, d) for text, _ in PROBES) for d in DIALECTS}
    assert len(set(seen.values())) == len(DIALECTS)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_the_plain_fast_path_never_skips_a_rule(dialect: SqlDialect):
    """The scanner skips runs of `plain` characters unseen: none of them may start a construct
    the dialect has a rule for (a new flag whose character is left out would let a literal or
    a comment through unseen)."""
    starts = {"'": True, '"': True, "-": True, "/": True, ";": True, "{": True, "}": True,
              "$": dialect.dollar_quotes or "$" in dialect.named_markers,
              "`": dialect.backticks, "[": dialect.brackets, "#": dialect.hash_comments,
              "?": dialect.question_marks, ":": ":" in dialect.named_markers,
              "@": "@" in dialect.named_markers, "\x00": dialect.nul}
    for ch, has_rule in starts.items():
        assert bool(dialect.plain.match(ch)) is not has_rule, repr(ch)
    assert dialect.plain.fullmatch("SELECT a.b, 1 + 2 * 3 FROM t WHERE x <> 'y'"[:39])


VALUES: dict[str, tuple[Any, Any]] = {  # type: the value sent, as validated
    "string": ("x", "x"), "integer": (3, 3), "number": (2.5, 2.5), "boolean": (True, True),
    "date": ("2024-01-02", date(2024, 1, 2)),
    "datetime": ("2024-01-02T03:04:05+02:00",
                 datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))),
    "json": ({"k": ["ü"]}, {"k": ["ü"]}),
}


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
@pytest.mark.parametrize("type_", list(VALUES))
def test_values_are_converted_by_the_table_only(dialect: SqlDialect, type_: str):
    """A value goes to the driver as validated unless the dialect's table names a conversion
    for its type; None stays None."""
    params = [{"name": "p", "type": type_, "required": False}]
    template = compile_sql("SELECT {{ p }}", dialect, parse_parameters(params))
    sent, validated = VALUES[type_]
    convert = dialect.converters.get(type_)
    assert template.parameters.validate({"p": sent})["p"] == validated
    want = validated if convert is None else convert(validated)
    assert template.bind({"p": sent}).values == (want,)
    assert template.bind({}).values == (None,)
    assert template.as_is is (convert is None)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_identifiers_in_the_dialects_quotes(dialect: SqlDialect):
    choice = 'a"b`c'
    template = compile_sql("SELECT * FROM {{ t }}", dialect, parse_parameters(
        [{"name": "t", "type": "identifier", "choices": [choice]}]))
    q = dialect.identifier_quote
    assert template.bind({"t": choice}).sql == f"SELECT * FROM {q}{choice.replace(q, q * 2)}{q}"


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_arrays_expand_or_bind_as_one_value(dialect: SqlDialect):
    text = "SELECT 1 WHERE x = ANY({{ a }})" if not dialect.expand_arrays else \
        "SELECT 1 WHERE x IN ({{ a }})"
    template = compile_sql(text, dialect, parse_parameters([{"name": "a",
                                                             "type": "array<integer>"}]))
    assert is_dynamic(template) is dialect.expand_arrays
    bound = template.bind({"a": [1, 2]})
    assert bound.values == ((1, 2) if dialect.expand_arrays else ([1, 2],))


def test_a_new_dialect_is_only_its_table():
    """A dialect of a made-up server, declared as data in the test, compiles by its rules:
    `#` comments, `?` placeholders refused, backtick identifiers, no final ';' sent."""
    made_up = SqlDialect(name="made-up", double_quotes="string", backslashes="never",
                         backticks=True, hash_comments=True, question_marks=True,
                         identifier_quote="`", keeps_final_semicolon=False,
                         converters={"boolean": lambda v: "yes" if v else "no"})
    params = parse_parameters([{"name": "b", "type": "boolean"},
                               {"name": "t", "type": "identifier", "choices": ["x"]}])
    template = compile_sql("SELECT `a#` FROM {{ t }} # '\nWHERE f = {{ b }};", made_up, params)
    bound = template.bind({"b": True, "t": "x"})
    assert bound.sql == "SELECT `a#` FROM `x` # '\nWHERE f = ?"
    assert bound.values == ("yes",)
    with pytest.raises(InvalidQuery, match="placeholder"):
        compile_sql("SELECT ? , {{ b }}", made_up, parse_parameters([{"name": "b",
                                                                      "type": "boolean"}]))
    with pytest.raises(InvalidQuery, match="unknown SQL dialect"):
        compile_sql("SELECT 1", "made-up", parse_parameters([]))  # type: ignore[arg-type]  # an unknown dialect on purpose
