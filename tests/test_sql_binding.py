"""The SQL binding compiler: lexing, save-time refusals, binding, injection payloads on SQLite."""

from __future__ import annotations

import os
import re
import sqlite3
from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.kinds.sql.binding import compile_sql, quote_identifier
from appliance.parameters import InvalidParameter, InvalidQuery
from appliance.queries.compile import compile_query

EXAMPLES = int(os.environ.get("APPLIANCE_TEST_HYPOTHESIS_EXAMPLES", "150"))

S = {"name": "s", "type": "string"}


def sql(text: str, params: list[dict] | None = None, dialect: str = "postgres"):
    return compile_query(dialect, text, params if params is not None else [S])


def refused(text: str, params: list[dict] | None = None, dialect: str = "postgres"
            ) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as info:
        sql(text, params, dialect)
    return info.value


# --- basic binding ----------------------------------------------------------------------------


def test_postgres_numbers_reuse_and_order():
    t = sql("SELECT {{ b }}, {{a}}, {{ b }}", [{"name": "a", "type": "integer"},
                                                {"name": "b", "type": "string"}])
    bound = t.bind({"a": 1, "b": "0001"})
    assert bound.sql == "SELECT $1, $2, $1"
    assert bound.values == ("0001", 1)


def test_sqlite_repeats_values():
    t = sql("SELECT {{ b }}, {{a}}, {{ b }}", [{"name": "a", "type": "integer"},
                                                {"name": "b", "type": "string"}], "sqlite")
    bound = t.bind({"a": 1, "b": "0001"})
    assert bound.sql == "SELECT ?, ?, ?"
    assert bound.values == ("0001", 1, "0001")


def test_typed_values_per_dialect():
    params = [{"name": "d", "type": "date"}, {"name": "t", "type": "datetime"},
              {"name": "b", "type": "boolean"}, {"name": "j", "type": "json"},
              {"name": "n", "type": "number"}, {"name": "o", "type": "string", "required": False}]
    text = "SELECT {{d}}, {{t}}, {{b}}, {{j}}, {{n}}, {{o}}"
    values = {"d": "2024-01-02", "t": "2024-01-02T03:04:05Z", "b": True,
              "j": {"k": ["ü", 1]}, "n": 2.5}
    pg = sql(text, params).bind(values)
    assert pg.values == (date(2024, 1, 2), datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                         True, '{"k":["ü",1]}', 2.5, None)
    lite = sql(text, params, "sqlite").bind(values)
    assert lite.values == ("2024-01-02", "2024-01-02T03:04:05+00:00", 1, '{"k":["ü",1]}', 2.5,
                           None)


def test_arrays():
    params = [{"name": "ids", "type": "array<integer>"}]
    pg = sql("SELECT * FROM t WHERE id = ANY({{ ids }})", params)
    assert pg.bind({"ids": [3, 1]}).sql == "SELECT * FROM t WHERE id = ANY($1)"
    assert pg.bind({"ids": [3, 1]}).values == ([3, 1],)
    assert pg.bind({"ids": []}).values == ([],)
    lite = sql("SELECT * FROM t WHERE id IN ({{ ids }}) AND 1", params, "sqlite")
    assert lite.bind({"ids": [3, 1, 2]}).sql == "SELECT * FROM t WHERE id IN (?, ?, ?) AND 1"
    assert lite.bind({"ids": [3, 1, 2]}).values == (3, 1, 2)
    assert lite.bind({"ids": []}).sql == "SELECT * FROM t WHERE id IN (NULL) AND 1"
    assert lite.bind({"ids": []}).values == ()
    dates = sql("SELECT 1 WHERE x IN ({{ d }})", [{"name": "d", "type": "array<date>"}],
                "sqlite")
    assert dates.bind({"d": ["2024-01-01"]}).values == ("2024-01-01",)


def test_array_context_suggestions():
    e = refused("SELECT 1 FROM t WHERE id IN ( {{ ids }} )",
                [{"name": "ids", "type": "array<integer>"}])
    assert "= ANY({{ ids }})" in e.message and e.line == 1 and e.column == 31
    e = refused("SELECT 1 FROM t WHERE id = any({{ ids }})",
                [{"name": "ids", "type": "array<integer>"}], "sqlite")
    assert "IN ({{ ids }})" in e.message


def test_identifiers_only_from_choices_and_quoted():
    params = [{"name": "t", "type": "identifier", "choices": ["orders", 'we"ird', "Mixed Case"]},
              {"name": "s", "type": "string"}]
    for dialect in ("postgres", "sqlite"):
        tpl = sql("SELECT * FROM {{ t }} WHERE a = {{ s }}", params, dialect)
        mark = "$1" if dialect == "postgres" else "?"
        assert tpl.bind({"t": "orders", "s": "x"}).sql == f'SELECT * FROM "orders" WHERE a = {mark}'
        assert tpl.bind({"t": 'we"ird', "s": "x"}).sql.startswith('SELECT * FROM "we""ird" ')
        assert tpl.bind({"t": "Mixed Case", "s": "x"}).values == ("x",)
        for bad in ["users", "orders; DROP TABLE x", '"orders"', "ORDERS", 1, ["orders"]]:
            with pytest.raises(InvalidParameter):
                tpl.bind({"t": bad, "s": "x"})
    assert quote_identifier('a"b""c') == '"a""b""""c"'


def test_schema_qualified_identifiers():
    params = [{"name": "sc", "type": "identifier", "choices": ["public"]},
              {"name": "tb", "type": "identifier", "choices": ["t"]}]
    assert sql("SELECT * FROM {{ sc }}.{{ tb }}", params).bind(
        {"sc": "public", "tb": "t"}).sql == 'SELECT * FROM "public"."t"'


def test_static_statement_is_precomputed():
    t = sql("SELECT {{ s }}")
    assert t.static_sql == "SELECT $1"
    assert sql("SELECT 1 WHERE a IN ({{ s }})", [{"name": "s", "type": "array<string>"}],
               "sqlite").static_sql is None


# --- the lexer: what is allowed -------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "SELECT 'it''s {' || {{ s }}",
    "SELECT E'\\'' || {{ s }} || E'\\\\'",
    "SELECT $$ it's $$ || {{ s }}",
    "SELECT $fn$ $$ ' \" $fn$ || {{ s }}",
    'SELECT "we""ird" FROM t WHERE a = {{ s }}',
    "SELECT 1 /* outer /* inner */ still comment ' */ WHERE a = {{ s }}",
    "SELECT 1 -- comment ' \" $$\nWHERE a = {{ s }}",
    "SELECT a$b FROM t WHERE x = {{ s }}",
    "SELECT data ? 'key', data ?| ARRAY['a'] FROM t WHERE a = {{ s }}",
    "SELECT {{ s }}::text, x::int FROM t",
    "SELECT {{ s }};",
    "SELECT {{ s }} ; -- done\n",
    "SELECT {{s}}",
    "SELECT {{\ts\t}}",
    "SELECT '}' || '{' || {{ s }}",
    "SELECT U&'d\\0061t' || {{ s }}",
    "select 'a' 'b', (x) from t where y = -{{ s }}",
])
def test_postgres_accepts(text):
    bound = sql(text).bind({"s": "v"})
    assert "$1" in bound.sql and bound.values == ("v",)


@pytest.mark.parametrize("text", [
    "SELECT 'it''s' || {{ s }}",
    "SELECT `we``ird`, [br]acket FROM t WHERE a = {{ s }}",
    "SELECT 'a\\' || {{ s }}",
    "SELECT 1 /* a /* b */ WHERE a = {{ s }}",
    "SELECT {{ s }};",
])
def test_sqlite_accepts(text):
    bound = sql(text, dialect="sqlite").bind({"s": "v"})
    assert "?" in bound.sql and bound.values == ("v",)


# --- the lexer: what is refused, where, and with what advice -------------------------------


@pytest.mark.parametrize("text, line, column, fragment", [
    ("SELECT '{{ s }}'", 1, 9, "inside a string literal"),
    ("SELECT 'a' ||\n  '%{{ s }}%'", 2, 5, "'%' || {{ s }} || '%'"),
    ("SELECT E'\\' {{ s }}'", 1, 13, "inside a string literal"),
    ('SELECT "{{ s }}" FROM t', 1, 9, "type identifier"),
    ("SELECT $$ {{ s }} $$", 1, 11, "inside a dollar-quoted string"),
    ("SELECT $q$ $$ {{ s }} $q$", 1, 15, "inside a dollar-quoted string"),
    ("SELECT 1 -- {{ s }}\n", 1, 13, "inside a comment"),
    ("SELECT 1 /* /* */ {{ s }} */", 1, 19, "inside a comment"),
    ("SELECT 'abc", 1, 8, "unterminated string literal"),
    ("SELECT E'abc\\'", 1, 9, "unterminated string literal"),
    ('SELECT "abc', 1, 8, "unterminated quoted identifier"),
    ("SELECT $$ abc", 1, 8, "unterminated dollar-quoted string"),
    ("SELECT 1 /* /* */", 1, 10, "unterminated comment"),
    ("SELECT 1;\nSELECT {{ s }}", 2, 1, "more than one statement"),
    ("SELECT {{ s }};;", 1, 16, "more than one statement"),
    ("SELECT $1, {{ s }}", 1, 8, "placeholder is already in the text"),
    ("SELECT {{ s }", 1, 8, "malformed binding"),
    ("SELECT {{ 1s }}", 1, 8, "malformed binding"),
    ("SELECT {{ s }} }}", 1, 16, "without a matching"),
    ("SELECT x{{ s }}", 1, 9, "touches"),
    ("SELECT {{ s }}1", 1, 8, "touches"),
    ("SELECT {{ s }}{{ s }}", 1, 8, "touches"),
    ("SELECT E{{ s }}", 1, 9, "touches"),
    ("SELECT 'a'{{ s }}", 1, 11, "touches"),
    ("SELECT {{ nope }}, {{ s }}", 1, 8, "not a declared parameter"),
    (";", 1, 1, "before any statement"),
    ("PREPARE p(text) AS SELECT {{ s }}", 1, 1, "PREPARE is not allowed"),
    ("  -- a comment\n  execute p({{ s }})", 2, 3, "EXECUTE is not allowed"),
    ("/* x */ Deallocate {{ s }}", 1, 9, "DEALLOCATE is not allowed"),
    ("DISCARD {{ s }}", 1, 1, "DISCARD is not allowed"),
    ("do {{ s }}", 1, 1, "DO is not allowed"),
])
def test_postgres_refuses(text, line, column, fragment):
    e = refused(text)
    assert (e.line, e.column) == (line, column), e.message
    assert fragment in e.message
    assert e.suggestion
    assert e.message.startswith(f"line {line}, column {column}: ")


@pytest.mark.parametrize("text, fragment", [
    ("SELECT ? , {{ s }}", "placeholder"),
    ("SELECT ?1 , {{ s }}", "placeholder"),
    ("SELECT :name , {{ s }}", "placeholder"),
    ("SELECT @name , {{ s }}", "placeholder"),
    ("SELECT $name , {{ s }}", "placeholder"),
    ("SELECT [{{ s }}] FROM t", "inside a quoted identifier"),
    ("SELECT `{{ s }}` FROM t", "inside a quoted identifier"),
    ("SELECT 1 /* {{ s }} */", "inside a comment"),
    ("SELECT '{{ s }}'", "inside a string literal"),
    ("SELECT [abc", "unterminated"),
    ("SELECT {{ s }}; DELETE FROM t", "more than one statement"),
])
def test_sqlite_refuses(text, fragment):
    e = refused(text, dialect="sqlite")
    assert fragment in e.message


def test_session_statements_are_words_not_substrings():
    """Only a statement that is PREPARE, EXECUTE, DEALLOCATE, DISCARD or DO is refused (it could
    act on the pooled connection's prepared statements); the words elsewhere are fine, and
    SQLite has no such statements."""
    for text in ("SELECT {{ s }} AS prepare", "SELECT 'EXECUTE' || {{ s }}",
                 "WITH discard AS (SELECT {{ s }} AS x) SELECT x FROM discard",
                 "SELECT {{ s }}::text AS executed", "PREPARED_THING {{ s }}",
                 "DOMAIN_CHECK {{ s }}", "SELECT {{ s }} AS do"):
        assert sql(text).source == text  # compiles
    assert "PREPARE is not allowed" in refused("prepare p AS SELECT {{ s }}").message
    assert sql("SELECT {{ s }} AS prepare", dialect="sqlite")


def test_whole_query_problems():
    assert "empty" in refused("   -- nothing\n /* at all */ ").message
    assert "never used" in refused("SELECT 1", [S, {"name": "t", "type": "integer"}]).message
    e = refused("SELECT {{ s }}", [S, {"name": "unused", "type": "integer"}])
    assert e.parameter == "unused" and "{{ unused }}" in e.message
    with pytest.raises(InvalidQuery, match="must be a string"):
        compile_query("sqlite", {"sql": "SELECT 1"}, [])
    with pytest.raises(InvalidQuery, match="longer than"):
        compile_query("sqlite", "SELECT 1 " + " " * 1_000_000, [])
    with pytest.raises(InvalidQuery, match="unknown datasource kind"):
        compile_query("oracle", "SELECT 1", [])
    assert compile_query("mysql", "SELECT 1", []).bind({}).sql == "SELECT 1"  # its own lexer
    with pytest.raises(InvalidQuery, match="dialect"):
        compile_sql("SELECT 1", "mysql", compile_query("sqlite", "SELECT 1", []).parameters)


def test_unicode_positions():
    e = refused("SELECT 'ü' ||\n 'ünï {{ s }}'")
    assert (e.line, e.column) == (2, 7)


# --- property tests -------------------------------------------------------------------------

NAMES = ["a", "b", "c"]
PARAMS = [{"name": n, "type": "string"} for n in NAMES]
_safe_text = st.text(alphabet="abc xyz019_.,()=<>+*'\"$-/\n{}", max_size=12)


def _literal_body(quote: str) -> st.SearchStrategy[str]:
    # Text that may contain anything, with the closing quote doubled.
    return _safe_text.map(lambda s: s.replace(quote, quote * 2))


def _inert(s: str) -> str:
    """Content that cannot end a construct early, smuggle a binding in, or look like the
    `<name>` markers the expected text uses."""
    return s.replace("{", "(").replace("}", ")").replace("<", "(").replace(">", ")")


@st.composite
def fragments(draw: st.DrawFn, dialect: str, allow_bad: bool) -> tuple[str, str, bool]:
    """(source text, expected text with placeholders marked as <name>, contains a bad binding)."""
    kind = draw(st.sampled_from(
        ["word", "binding", "single", "double", "line", "block"]
        + (["dollar", "estring", "nested"] if dialect == "postgres" else ["backtick", "bracket"])))
    bad = allow_bad and kind not in ("word", "binding") and draw(st.booleans())
    inner = f"{{{{ {draw(st.sampled_from(NAMES))} }}}}" if bad else ""
    body = _inert(draw(_safe_text))
    if kind == "word":
        w = draw(st.sampled_from(["SELECT", "x", "t1", "=", ",", "(", ")", "+", "1.5", "- 2",
                                  *(["::int", "a$b", "?"] if dialect == "postgres" else [])]))
        return w, w, False
    if kind == "binding":
        n = draw(st.sampled_from(NAMES))
        spaces = draw(st.sampled_from(["", " ", "  ", "\t"]))
        return f"{{{{{spaces}{n}{spaces}}}}}", f"<{n}>", False
    if kind == "single":
        text = "'" + body.replace("'", "''") + inner + "'"
    elif kind == "double":
        text = '"' + body.replace('"', '""') + inner + '"'
    elif kind == "estring":
        text = "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + inner + "'"
    elif kind == "backtick":
        text = "`" + body.replace("`", "``") + inner + "`"
    elif kind == "bracket":
        text = "[" + body.replace("]", ")") + inner + "]"
    elif kind == "line":
        text = "--" + body.replace("\n", " ") + inner + "\n"
    elif kind == "block":
        text = "/*" + body.replace("*", "").replace("/", "") + inner + "*/"
    elif kind == "nested":
        clean = body.replace("*", "").replace("/", "")
        text = "/* " + clean + " /* " + inner + clean + " */ " + clean + " */"
    else:  # dollar
        tag = draw(st.sampled_from(["", "q", "tag_1"]))
        text = f"${tag}$" + body.replace("$", "") + inner + f"${tag}$"
    return text, text, bad


@st.composite
def statements(draw: st.DrawFn, dialect: str, allow_bad: bool) -> tuple[str, str, bool]:
    parts = draw(st.lists(fragments(dialect, allow_bad), min_size=1, max_size=12))
    src = "SELECT " + " ".join(p[0] for p in parts)
    expected = "SELECT " + " ".join(p[1] for p in parts)
    return src, expected, any(p[2] for p in parts)


def _expected(expected: str, dialect: str, used: list[str]) -> tuple[str, list[str]]:
    """Replace <name> markers with placeholders the way the compiler must."""
    order: list[str] = []
    numbers: dict[str, int] = {}
    values: list[str] = []

    def place(m: re.Match[str]) -> str:
        name = m.group(1)
        if dialect == "sqlite":
            values.append(name)
            return "?"
        if name not in numbers:
            numbers[name] = len(numbers) + 1
            order.append(name)
        return f"${numbers[name]}"

    out = re.sub(r"<([abc])>", place, expected)
    return out, (values if dialect == "sqlite" else order)


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_bindings_land_exactly_where_written(dialect, data):
    src, expected, _ = data.draw(statements(dialect, allow_bad=False))
    used = sorted(set(re.findall(r"<([abc])>", expected)))
    params = [p for p in PARAMS if p["name"] in used]
    template = compile_query(dialect, src, params)
    values = {n: f"value-of-{n}" for n in used}
    bound = template.bind(values)
    want_sql, names = _expected(expected, dialect, used)
    assert bound.sql == want_sql
    assert bound.values == tuple(f"value-of-{n}" for n in names)
    if dialect == "sqlite":
        assert len(bound.values) == len(re.findall(r"<[abc]>", expected))
    else:
        assert len(bound.values) == len(set(re.findall(r"<([abc])>", expected)))


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_bindings_in_literals_and_comments_are_refused(dialect, data):
    src, _, bad = data.draw(statements(dialect, allow_bad=True))
    if not bad:
        return
    with pytest.raises(InvalidQuery) as info:
        compile_query(dialect, src, PARAMS)
    assert "inside a" in info.value.message
    # The reported place is a real "{{" in the source.
    lines = src.split("\n")
    line = lines[info.value.line - 1]
    assert line[info.value.column - 1: info.value.column + 1] == "{{"


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
@settings(max_examples=EXAMPLES, deadline=None)
@given(text=st.text(max_size=80))
def test_property_arbitrary_text_never_crashes(dialect, text):
    try:
        template = compile_query(dialect, text, [])
    except InvalidQuery as exc:
        assert exc.status == 422
    else:
        assert template.bind({}).sql == text


# --- injection payloads against a real SQLite database --------------------------------------

PAYLOADS = [
    "' OR '1'='1", "' OR 1=1 --", "'; DROP TABLE secrets; --", "\" OR \"\"=\"", "1 OR 1=1",
    "1; DELETE FROM secrets", "' UNION SELECT secret FROM secrets --", "admin'--", "*/ OR 1=1 /*",
    "$$ OR true $$", "?", "$1", ":owner", "{{ owner }}", "\\' OR 1=1 --", "%' OR '%'='",
    "0x27 OR 1=1", "' || (SELECT secret FROM secrets) || '", "\x1a' OR 1=1", "\u02bc OR 1=1 --",
    "1) OR (1=1", "NULL", "true", "0001", "-1", "1e308", "[1]", '{"$ne": null}',
]


@pytest.fixture
def db(tmp_path):
    conn = sqlite3.connect(tmp_path / "guarded.db")
    conn.execute("CREATE TABLE secrets (owner TEXT, n INTEGER, x REAL, flag INTEGER, d TEXT, "
                 "ts TEXT, doc TEXT, secret TEXT)")
    conn.execute("INSERT INTO secrets VALUES ('alice', 1, 1.5, 1, '2024-01-01', "
                 "'2024-01-01T00:00:00+00:00', '{}', 's3cr3t')")
    conn.commit()
    yield conn
    conn.close()


GUARDED = {
    "string": "SELECT secret FROM secrets WHERE owner = {{ p }} AND owner = 'nobody'",
    "integer": "SELECT secret FROM secrets WHERE n = {{ p }} AND 0",
    "number": "SELECT secret FROM secrets WHERE x = {{ p }} AND 0",
    "boolean": "SELECT secret FROM secrets WHERE flag = {{ p }} AND 0",
    "date": "SELECT secret FROM secrets WHERE d = {{ p }} AND 0",
    "datetime": "SELECT secret FROM secrets WHERE ts = {{ p }} AND 0",
    "json": "SELECT secret FROM secrets WHERE doc = {{ p }} AND 0",
    "array<string>": "SELECT secret FROM secrets WHERE owner IN ({{ p }}) AND 0",
    "array<integer>": "SELECT secret FROM secrets WHERE n IN ({{ p }}) AND 0",
}


@pytest.mark.parametrize("type_", list(GUARDED))
def test_injection_payloads_are_only_values(db, type_):
    template = compile_query("sqlite", GUARDED[type_], [{"name": "p", "type": type_}])
    for payload in PAYLOADS:
        for value in (payload, [payload], {"k": payload}):
            try:
                bound = template.bind({"p": value})
            except InvalidParameter as exc:
                assert payload.isalnum() or payload not in exc.message
                continue
            # The statement text never changes with the value; the value only ever binds.
            assert bound.sql == GUARDED[type_].replace("{{ p }}", "?")
            rows = db.execute(bound.sql, bound.values).fetchall()
            assert rows == [], (type_, payload)
    assert db.execute("SELECT count(*) FROM secrets").fetchone() == (1,)


def test_identifier_payloads_never_reach_the_text(db):
    template = compile_query("sqlite", "SELECT count(*) FROM {{ t }}",
                             [{"name": "t", "type": "identifier", "choices": ["secrets"]}])
    assert db.execute(*_args(template.bind({"t": "secrets"}))).fetchone() == (1,)
    for payload in [*PAYLOADS, "secrets; DROP TABLE secrets", "secrets --", 'secrets"']:
        with pytest.raises(InvalidParameter) as info:
            template.bind({"t": payload})
        assert "not one of the declared choices" in info.value.message or "must be" in str(
            info.value)


def test_leading_zero_string_stays_a_string(db):
    db.execute("CREATE TABLE codes (code TEXT)")
    db.execute("INSERT INTO codes VALUES ('0001'), ('1')")
    template = compile_query("sqlite", "SELECT code FROM codes WHERE code = {{ c }}",
                             [{"name": "c", "type": "string"}])
    assert db.execute(*_args(template.bind({"c": "0001"}))).fetchall() == [("0001",)]
    with pytest.raises(InvalidParameter, match="must be a string, not an integer"):
        template.bind({"c": 1})


def test_empty_array_matches_nothing_on_sqlite(db):
    template = compile_query("sqlite", "SELECT owner FROM secrets WHERE n IN ({{ ids }})",
                             [{"name": "ids", "type": "array<integer>"}])
    assert db.execute(*_args(template.bind({"ids": []}))).fetchall() == []
    assert db.execute(*_args(template.bind({"ids": [5, 1]}))).fetchall() == [("alice",)]
    big = list(range(1000))
    assert db.execute(*_args(template.bind({"ids": big}))).fetchall() == [("alice",)]


def _args(bound):
    return bound.sql, bound.values
