"""The binding compiler's MySQL dialect (appliance/kinds/mysql/binding.py): compile and bind, every
save-time refusal with its place, and injection payloads in every parameter type, checked against
the real MariaDB (tests/support/mariadb.py) through server-side PREPARE/EXECUTE of the exact
compiled text."""

from __future__ import annotations

import os
from datetime import date, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.kinds.mysql.binding import MysqlTemplate, compile_mysql, quote_identifier
from appliance.parameters import (
    MAX_ARRAY_LENGTH,
    InvalidParameter,
    InvalidQuery,
    parse_parameters,
)
from tests.support.mariadb import MariaDBServer

EXAMPLES = int(os.environ.get("APPLIANCE_TEST_HYPOTHESIS_EXAMPLES", "150"))
S = {"name": "s", "type": "string"}


def mysql(text: str, params: list[dict[str, Any]] | None = None) -> MysqlTemplate:
    return compile_mysql(text, parse_parameters(params if params is not None else [S]))


def refused(text: str, params: list[dict[str, Any]] | None = None) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as info:
        mysql(text, params)
    return info.value


# --- compile and bind -------------------------------------------------------------------------


def test_question_marks_in_order_with_repeats():
    t = mysql("SELECT {{ b }}, {{a}}, {{ b }}", [{"name": "a", "type": "integer"},
                                                  {"name": "b", "type": "string"}])
    assert t.static_sql == "SELECT ?, ?, ?"
    bound = t.bind({"a": 1, "b": "0001"})
    assert bound.sql == "SELECT ?, ?, ?"
    assert bound.values == ("0001", 1, "0001")


def test_typed_values():
    params = [{"name": "d", "type": "date"}, {"name": "t", "type": "datetime"},
              {"name": "b", "type": "boolean"}, {"name": "j", "type": "json"},
              {"name": "n", "type": "number"}, {"name": "o", "type": "string", "required": False}]
    t = mysql("SELECT {{d}}, {{t}}, {{b}}, {{j}}, {{n}}, {{o}}", params)
    bound = t.bind({"d": "2024-01-02", "t": "2024-01-02T03:04:05+02:00", "b": True,
                    "j": {"k": ["ü", 1]}, "n": 2.5})
    # DATETIME has no time zone: the instant in UTC, naive.
    assert bound.values == (date(2024, 1, 2), datetime(2024, 1, 2, 1, 4, 5), 1,
                            '{"k":["ü",1]}', 2.5, None)
    assert t.bind({"d": "2024-01-02", "t": "2024-01-02T03:04:05Z", "b": False, "j": [],
                   "n": 1}).values[2:4] == (0, "[]")


def test_arrays_expand_to_a_bounded_number_of_placeholders():
    params = [{"name": "ids", "type": "array<integer>"}, S]
    t = mysql("SELECT * FROM t WHERE id IN ( {{ ids }} ) AND s = {{ s }}", params)
    assert t.static_sql is None
    bound = t.bind({"ids": [3, 1, 2], "s": "x"})
    assert bound.sql == "SELECT * FROM t WHERE id IN ( ?, ?, ? ) AND s = ?"
    assert bound.values == (3, 1, 2, "x")
    empty = t.bind({"ids": [], "s": "x"})
    assert empty.sql == "SELECT * FROM t WHERE id IN ( NULL ) AND s = ?"
    assert empty.values == ("x",)
    assert t.bind({"ids": list(range(MAX_ARRAY_LENGTH)), "s": "x"}).sql.count("?") == (
        MAX_ARRAY_LENGTH + 1)
    with pytest.raises(InvalidParameter, match="more than"):
        t.bind({"ids": list(range(MAX_ARRAY_LENGTH + 1)), "s": "x"})
    dates = mysql("SELECT 1 WHERE x IN ({{ d }})", [{"name": "d", "type": "array<datetime>"}])
    assert dates.bind({"d": ["2024-01-01T00:00:00+01:00"]}).values == (
        datetime(2023, 12, 31, 23, 0),)


@pytest.mark.parametrize("text", [
    "SELECT {{ ids }}",
    "SELECT 1 WHERE x IN ({{ ids }}, 5)",
    "SELECT 1 WHERE x IN (5, {{ ids }})",
    "SELECT 1 WHERE x = {{ ids }}",
])
def test_array_outside_a_list_of_its_own_is_refused(text):
    e = refused(text, [{"name": "ids", "type": "array<integer>"}])
    assert "IN ({{ ids }})" in e.message and e.line == 1 and e.column == text.index("{{") + 1


def test_identifiers_only_from_choices_and_backticked():
    params = [{"name": "t", "type": "identifier", "choices": ["orders", "we`ird", "Mixed Case"]},
              S]
    t = mysql("SELECT * FROM {{ t }} WHERE a = {{ s }}", params)
    assert t.bind({"t": "orders", "s": "x"}).sql == "SELECT * FROM `orders` WHERE a = ?"
    assert t.bind({"t": "we`ird", "s": "x"}).sql == "SELECT * FROM `we``ird` WHERE a = ?"
    bound = t.bind({"t": "Mixed Case", "s": "x"})
    assert bound.values == ("x",) and bound.identifiers == ("Mixed Case",)
    for bad in ["users", "orders; DROP TABLE x", "`orders`", "ORDERS", 1, ["orders"]]:
        with pytest.raises(InvalidParameter):
            t.bind({"t": bad, "s": "x"})
    assert quote_identifier("a`b``c") == "`a``b````c`"
    two = mysql("SELECT * FROM {{ sc }}.{{ tb }}",
                [{"name": "sc", "type": "identifier", "choices": ["appdb"]},
                 {"name": "tb", "type": "identifier", "choices": ["t"]}])
    assert two.bind({"sc": "appdb", "tb": "t"}).sql == "SELECT * FROM `appdb`.`t`"


def test_what_the_lexer_skips():
    """Strings in both quote styles with backslash escapes and doubled quotes, prefixed
    literals, backtick identifiers, the three comment styles: '?', ';' and '{{' inside them are
    text, and the binding after them is found."""
    for text in [
        "SELECT 'a?;' , {{ s }}",
        "SELECT \"a?;\" , {{ s }}",
        "SELECT 'it''s \\\\' , {{ s }}",
        "SELECT 'tab\\t\\\\n \\\" ' , {{ s }}",
        "SELECT \"say \"\"hi\"\" \\' \" , {{ s }}",
        "SELECT X'41', x'42', b'0101', B'1', N'ñ?', _utf8mb4'x?' , {{ s }}",
        "SELECT `we?ird;``col` FROM t WHERE 1 = {{ s }}",
        "SELECT 1 # a comment ? ; '\nFROM dual WHERE 1 = {{ s }}",
        "SELECT 1 -- a comment ? ; '\n, {{ s }}",
        "SELECT 1 --\t'tab comment ?\n, {{ s }}",
        "SELECT 1 /* a ? ; ' \n comment /* not nested */ , {{ s }}",
        "SELECT 1--1, {{ s }}",  # `--` without a space is two minus signs
        "SELECT @a := 1, $b, {{ s }}",
    ]:
        t = mysql(text)
        assert t.static_sql is not None and t.static_sql.count("?") - text.count("?") == 1, text


def test_trailing_semicolon_is_left_out():
    assert mysql("SELECT {{ s }} ; -- done\n").static_sql == "SELECT ? "
    assert mysql("SELECT {{ s }};").static_sql == "SELECT ?"


# --- save-time refusals, each with its place --------------------------------------------------


@pytest.mark.parametrize(("text", "problem", "at"), [
    ("SELECT '{{ s }}'", "a binding inside a string literal", "{{"),
    ("SELECT \"x {{ s }}\"", "a binding inside a string literal", "{{"),
    ("SELECT 'a\\\\b {{ s }}'", "a binding inside a string literal", "{{"),
    ("SELECT N'{{ s }}'", "a binding inside a string literal", "{{"),
    ("SELECT `{{ s }}`", "a binding inside a quoted identifier", "{{"),
    ("SELECT 1 # {{ s }}\n", "a binding inside a comment", "{{"),
    ("SELECT 1 -- {{ s }}\n", "a binding inside a comment", "{{"),
    ("SELECT 1 /* {{ s }} */", "a binding inside a comment", "{{"),
    ("SELECT 1 /*!50000 , {{ s }} */", "an executable comment", "/*!"),
    ("SELECT 1 /*! UNION SELECT 2 */", "an executable comment", "/*!"),
    ("SELECT 1 /*M!100000 , 2 */", "an executable comment", "/*M!"),
    ("SELECT '/*!' , {{ s }}", "an executable comment", "/*!"),
    ("SELECT 1 # /*! x */\n, {{ s }}", "an executable comment", "/*!"),
    ("SELECT 'it\\'s', {{ s }}", "\\' inside a '…' literal", "\\'"),
    ("SELECT \"\\\"\", {{ s }}", '\\" inside a "…" literal', '\\"'),
    ("SELECT X'\\' , {{ s }} , '", "\\' inside a '…' literal", "\\'"),
    ("SELECT {{ s }}; SELECT 2", "more than one statement", "SELECT 2"),
    ("SELECT {{ s }}; DROP TABLE t", "more than one statement", "DROP"),
    ("SELECT 1;;", "more than one statement", 9),
    ("; SELECT {{ s }}", "';' before any statement", ";"),
    ("SELECT ? , {{ s }}", "a placeholder is already in the text", "?"),
    ("SELECT {{ s }} \x00 OR 1", "a NUL character", "\x00"),
    ("SELECT 'open, {{ s }}", "unterminated string literal", "'"),
    ("SELECT `open, {{ s }}", "unterminated quoted identifier", "`"),
    ("SELECT 1 /* open, {{ s }}", "unterminated comment", "/*"),
    ("SELECT {{ s", "malformed binding", "{{"),
    ("SELECT s }}", "'}}' without a matching '{{'", "}}"),
    ("SELECT x{{ s }}", "a binding touches", "{{"),
    ("SELECT {{ s }}`a`", "a binding touches", "{{"),
    ("SELECT @{{ s }}", "a binding touches", "{{"),
    ("SELECT {{ nope }}, {{ s }}", "binding 'nope' is not a declared parameter", "{{ nope"),
])
def test_refusals_name_the_place(text, problem, at):
    e = refused(text)
    assert problem in e.message
    offset = at if isinstance(at, int) else text.index(at)
    before = text[:offset]
    assert (e.line, e.column) == (before.count("\n") + 1, offset - before.rfind("\n"))
    assert e.suggestion


def test_whole_body_refusals():
    assert "empty" in refused("  -- nothing\n /* here */ ").message
    unused = refused("SELECT 1")
    assert "declared but never used" in unused.message and unused.parameter == "s"
    with pytest.raises(InvalidQuery, match="must be a string"):
        mysql(["SELECT 1"], [])  # type: ignore[arg-type]  # a wrong type on purpose
    with pytest.raises(InvalidQuery, match="longer than"):
        mysql("SELECT 1 " + " " * 1_000_000, [])


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=40))
def test_any_value_leaves_the_text_unchanged(value):
    params = [S, {"name": "a", "type": "array<string>"},
              {"name": "t", "type": "identifier", "choices": ["orders"]}]
    t = mysql("SELECT {{ s }} FROM {{ t }} WHERE x IN ({{ a }})", params)
    try:
        bound = t.bind({"s": value, "a": [value, value], "t": "orders"})
    except InvalidParameter:
        return  # e.g. a NUL character: refused, never bound
    assert bound.sql == "SELECT ? FROM `orders` WHERE x IN (?, ?)"
    assert bound.values == (value, value, value)


# --- the real server: the compiled text means what the lexer says ----------------------------


def sql_literal_hex(text: str) -> str:
    return f"CONVERT(X'{text.encode().hex()}' USING utf8mb4)" if text else "''"


def as_sql(value: Any) -> str:
    """A value as the SQL expression the test sets a user variable to (hex for text: no
    quoting by the test itself)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        raise AssertionError("booleans are bound as 1/0")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        return f"CAST('{value.isoformat(sep=' ')}' AS DATETIME(6))"
    if isinstance(value, date):
        return f"CAST('{value.isoformat()}' AS DATE)"
    return sql_literal_hex(value)


def prepared_runs(runs: list[tuple[str, tuple[Any, ...]]], prefix: str = "") -> str:
    """One script: for each (statement, values), PREPARE the exact text server-side and EXECUTE
    it USING the values, as the binary protocol would bind them."""
    lines = [prefix]
    for statement, values in runs:
        names = [f"@v{k}" for k in range(len(values))]
        lines += [f"SET {n} = {as_sql(v)};" for n, v in zip(names, values, strict=True)]
        lines.append(f"SET @q = {sql_literal_hex(statement)};")
        lines.append("PREPARE s FROM @q;")
        lines.append("EXECUTE s" + (f" USING {', '.join(names)}" if names else "") + ";")
        lines.append("DEALLOCATE PREPARE s;")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def guarded(mariadb_server: MariaDBServer) -> MariaDBServer:
    mariadb_server.sql(
        "CREATE TABLE IF NOT EXISTS secrets (owner VARCHAR(40), n BIGINT, x DOUBLE, flag BOOLEAN,"
        " d DATE, ts DATETIME, doc JSON, secret TEXT);"
        "DELETE FROM secrets;"
        "INSERT INTO secrets VALUES ('alice', 1, 1.5, 1, '2024-01-01', '2024-01-01 00:00:00',"
        " '{}', 's3cr3t')")
    return mariadb_server


def test_the_server_agrees_with_the_lexer(guarded: MariaDBServer):
    """Texts the lexer takes, prepared by the real server in both backslash modes: one column
    per `?` the compiler wrote (the server saw the same literals and comments), and the value
    comes back whole."""
    cases = [
        "SELECT 'a\\\\', HEX({{ s }})",
        "SELECT 'it''s ?', \"q\"\"?\", HEX({{ s }})",
        "SELECT X'41', b'1', N'?', HEX({{ s }}) # ?\n",
        "SELECT 1--1, HEX({{ s }}) -- ?\n",
        "SELECT `n?`, HEX({{ s }}) FROM (SELECT 1 AS `n?`) AS t /* ? */",
        "SELECT HEX({{ s }});",
    ]
    value = "x' OR 1=1 -- \\"
    for mode in ("", "NO_BACKSLASH_ESCAPES"):
        runs = [(mysql(text).bind({"s": value}).sql, (value,)) for text in cases]
        out = guarded.sql(prepared_runs(runs, f"SET SESSION sql_mode = '{mode}';")).splitlines()
        assert len(out) == len(cases), (mode, out)
        for line in out:
            assert line.split("\t")[-1] == value.encode().hex().upper(), (mode, line)
    assert guarded.sql("SELECT 1--1").strip() == "2"


PAYLOADS = [
    "' OR '1'='1", "' OR 1=1 -- ", "'; DROP TABLE secrets; -- ", "\" OR \"\"=\"", "1 OR 1=1",
    "1; DELETE FROM secrets", "' UNION SELECT secret FROM secrets -- ", "admin'#", "*/ OR 1=1 /*",
    "/*! OR 1=1 */", "?", ":owner", "{{ owner }}", "\\' OR 1=1 -- ", "\\\\' OR 1=1 #",
    "%' OR '%'='", "0x27 OR 1=1", "X'27' OR 1=1", "' || (SELECT secret FROM secrets) || '",
    "\x1a' OR 1=1", "\u02bc OR 1=1 -- ", "\u00a5' OR 1=1", "\ufeff' OR 1=1", "1) OR (1=1",
    "NULL", "true", "0001", "-1", "1e308", "[1]", '{"$ne": null}', "`secret`", "`; DROP --",
]

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


def test_injection_payloads_in_every_type_stay_values(guarded: MariaDBServer):
    """Every payload in every parameter type: refused as a value, or bound without changing the
    statement text, and the real server, preparing that text, returns nothing and deletes
    nothing. A control run with the honest value finds the row, so the queries can fail."""
    runs: list[tuple[str, tuple[Any, ...]]] = []
    for type_, text in GUARDED.items():
        template = mysql(text, [{"name": "p", "type": type_}])
        expected = text.replace("{{ p }}", "?")
        for payload in PAYLOADS:
            for value in (payload, [payload], {"k": payload}):
                try:
                    bound = template.bind({"p": value})
                except InvalidParameter as exc:
                    assert payload.isalnum() or payload not in exc.message
                    continue
                if template.static_sql is not None:
                    assert bound.sql == expected, (type_, payload)
                else:  # an array: one placeholder per element, nothing else changes
                    assert bound.sql == expected.replace("?", ", ".join("?" * len(value)))
                runs.append((bound.sql, bound.values))
    assert len(runs) > len(PAYLOADS) * 2
    assert guarded.sql(prepared_runs(runs)) == ""
    assert guarded.sql("SELECT count(*) FROM secrets").strip() == "1"
    honest = mysql("SELECT secret FROM secrets WHERE owner = {{ p }}",
                   [{"name": "p", "type": "string"}]).bind({"p": "alice"})
    assert guarded.sql(prepared_runs([(honest.sql, honest.values)])).strip() == "s3cr3t"


def test_identifier_payloads_never_reach_the_text():
    t = mysql("SELECT count(*) FROM {{ t }}",
              [{"name": "t", "type": "identifier", "choices": ["secrets"]}])
    assert t.bind({"t": "secrets"}).sql == "SELECT count(*) FROM `secrets`"
    for payload in [*PAYLOADS, "secrets; DROP TABLE secrets", "secrets --", "secrets`"]:
        with pytest.raises(InvalidParameter):
            t.bind({"t": payload})
