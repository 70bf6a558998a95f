"""The SQL binding compiler against a real PostgreSQL: its lexer agrees with the server's."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.parameters import InvalidParameter
from appliance.queries.compile import compile_query

from .conftest import PostgresServer

asyncpg = pytest.importorskip("asyncpg")
EXAMPLES = int(os.environ.get("APPLIANCE_TEST_HYPOTHESIS_EXAMPLES", "150"))


class Pg:
    def __init__(self, loop: asyncio.AbstractEventLoop, conn: object) -> None:
        self.loop = loop
        self.conn = conn

    def fetch(self, bound) -> list[tuple]:
        rows = self.loop.run_until_complete(self.conn.fetch(bound.sql, *bound.values))
        return [tuple(r) for r in rows]

    def execute(self, text: str) -> None:
        self.loop.run_until_complete(self.conn.execute(text))


@pytest.fixture(scope="module")
def pg(postgres_server: PostgresServer) -> Iterator[Pg]:
    """The session's cluster (tests/conftest.py), in a database of this module's own."""
    postgres_server.sql("DROP DATABASE IF EXISTS binding", database="postgres")
    postgres_server.sql("CREATE DATABASE binding", database="postgres")
    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(asyncpg.connect(
            host=str(postgres_server.root), port=postgres_server.port, user="postgres",
            database="binding"))
        db = Pg(loop, conn)
        db.execute("CREATE TABLE secrets (owner text, code text, n bigint, x float8, "
                   "flag boolean, d date, ts timestamptz, doc jsonb, secret text)")
        db.execute("INSERT INTO secrets VALUES ('alice', '0001', 1, 1.5, true, '2024-01-01', "
                   "'2024-01-01T00:00:00Z', '{}', 's3cr3t')")
        db.execute('CREATE TABLE "we""ird" (v int)')
        db.execute('INSERT INTO "we""ird" VALUES (7)')
        yield db
        loop.run_until_complete(conn.close())
    finally:
        loop.close()


def bind(text: str, params: list[dict], values: dict):
    return compile_query("postgres", text, params).bind(values)


S = [{"name": "s", "type": "string"}]


@pytest.mark.parametrize("text, expected", [
    ("SELECT 'it''s {' || {{ s }}", "it's {v"),
    ("SELECT E'\\'' || {{ s }} || E'\\\\'", "'v\\"),
    ("SELECT $$ it's $$ || {{ s }}", " it's v"),
    ("SELECT $fn$ $$ ' \" $fn$ || {{ s }}", " $$ ' \" v"),
    ("SELECT /* a /* nested */ ' */ {{ s }}", "v"),
    ("SELECT -- ' \" $$\n {{ s }}", "v"),
    ("SELECT {{ s }}::text;", "v"),
    ("SELECT {{ s }} ; -- trailing\n", "v"),
    ("SELECT U&'d\\0061t' || {{ s }}", "datv"),
    ("SELECT 'a' '\n' || 'b' || {{ s }}", None),  # adjacent literals need a newline: a syntax error
])
def test_server_agrees_with_the_lexer(pg, text, expected):
    bound = bind(text, S, {"s": "v"})
    if expected is None:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            pg.fetch(bound)
        return
    assert pg.fetch(bound) == [(expected,)]


# --- property: random literals, comments and bindings; the server returns exactly our values ----

_content = st.text(alphabet="abc xyz 019_.,()=<>+*'\"$-/\\\n{}", max_size=10).map(
    lambda s: s.replace("{", "(").replace("}", ")"))


@st.composite
def items(draw: st.DrawFn) -> tuple[str, str | None]:
    """(SQL expression, the text value it yields or None for a binding of parameter b)."""
    kind = draw(st.sampled_from(["binding", "single", "estring", "dollar", "commented"]))
    body = draw(_content)
    if kind == "binding":
        return "{{ b }}", None
    if kind == "single":
        return "'" + body.replace("'", "''") + "'", body
    if kind == "estring":
        return "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'", body
    if kind == "dollar":
        clean = body.replace("$", "")
        return "$q$" + clean + "$q$", clean
    comment = body.replace("*", "").replace("/", "")
    line = comment.replace("\n", " ")
    return f"/* {comment} /* nested */ {comment} */ {{{{ b }}}} -- {line}\n", None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(parts=st.lists(items(), min_size=1, max_size=8), value=_content)
def test_property_server_returns_exactly_the_bound_values(pg, parts, value):
    if not any(expected is None for _, expected in parts):
        parts = [*parts, ("{{ b }}", None)]
    text = "SELECT " + ", ".join(f"({expr})::text" for expr, _ in parts)
    bound = bind(text, [{"name": "b", "type": "string"}], {"b": value})
    assert bound.values == (value,)
    assert pg.fetch(bound) == [tuple(value if e is None else e for _, e in parts)]


# --- injection payloads through every type: the guarded query keeps returning nothing ----------

PAYLOADS = [
    "' OR '1'='1", "' OR 1=1 --", "'; DROP TABLE secrets; --", "1 OR 1=1", "1; DELETE FROM secrets",
    "' UNION SELECT secret FROM secrets --", "$$ OR true $$", "$1", "{{ s }}", "\\' OR 1=1 --",
    "*/ OR 1=1 /*", "E'\\x27' OR 1=1", "0001", "NULL", "true", "-1", "[1]", '{"$ne": null}',
]

GUARDED = {
    "string": "SELECT secret FROM secrets WHERE owner = {{ p }} AND false",
    "integer": "SELECT secret FROM secrets WHERE n = {{ p }} AND false",
    "number": "SELECT secret FROM secrets WHERE x = {{ p }} AND false",
    "boolean": "SELECT secret FROM secrets WHERE flag = {{ p }} AND false",
    "date": "SELECT secret FROM secrets WHERE d = {{ p }} AND false",
    "datetime": "SELECT secret FROM secrets WHERE ts = {{ p }} AND false",
    "json": "SELECT secret FROM secrets WHERE doc = {{ p }}::jsonb AND false",
    "array<string>": "SELECT secret FROM secrets WHERE owner = ANY({{ p }}) AND false",
    "array<integer>": "SELECT secret FROM secrets WHERE n = ANY({{ p }}) AND false",
}


@pytest.mark.parametrize("type_", list(GUARDED))
def test_injection_payloads_are_only_values(pg, type_):
    template = compile_query("postgres", GUARDED[type_], [{"name": "p", "type": type_}])
    for payload in PAYLOADS:
        for value in (payload, [payload], {"k": payload}):
            try:
                bound = template.bind({"p": value})
            except InvalidParameter:
                continue
            assert bound.sql == GUARDED[type_].replace("{{ p }}", "$1")
            assert pg.fetch(bound) == []
    assert pg.fetch(bind("SELECT count(*) FROM secrets", [], {})) == [(1,)]


def test_every_type_round_trips(pg):
    params = [{"name": "s", "type": "string"}, {"name": "i", "type": "integer"},
              {"name": "x", "type": "number"}, {"name": "b", "type": "boolean"},
              {"name": "d", "type": "date"}, {"name": "t", "type": "datetime"},
              {"name": "j", "type": "json"}, {"name": "a", "type": "array<date>"},
              {"name": "o", "type": "string", "required": False}]
    text = ("SELECT code FROM secrets WHERE code = {{ s }} AND n = {{ i }} AND x = {{ x }} "
            "AND flag = {{ b }} AND d = {{ d }} AND ts = {{ t }} AND doc = {{ j }}::jsonb "
            "AND d = ANY({{ a }}) AND {{ o }}::text IS NULL")
    bound = bind(text, params, {"s": "0001", "i": 1, "x": 1.5, "b": True, "d": "2024-01-01",
                                "t": "2024-01-01T01:00:00+01:00", "j": {},
                                "a": ["2024-01-01"]})
    assert pg.fetch(bound) == [("0001",)]
    # "0001" is not 1: a string never becomes a number.
    with pytest.raises(InvalidParameter):
        bind(text, params, {"s": 1, "i": 1, "x": 1.5, "b": True, "d": "2024-01-01",
                            "t": "2024-01-01T00:00:00Z", "j": {}, "a": []})


def test_unicode_and_empty_arrays(pg):
    assert pg.fetch(bind("SELECT {{ s }}::text", S, {"s": "ünï 𝄞 '\""})) == [("ünï 𝄞 '\"",)]
    arr = [{"name": "ids", "type": "array<integer>"}]
    q = "SELECT owner FROM secrets WHERE n = ANY({{ ids }})"
    assert pg.fetch(bind(q, arr, {"ids": []})) == []
    assert pg.fetch(bind(q, arr, {"ids": [5, 1]})) == [("alice",)]
    assert date(2024, 1, 1) == pg.fetch(bind("SELECT d FROM secrets WHERE d = {{ d }}",
                                             [{"name": "d", "type": "date"}],
                                             {"d": "2024-01-01"}))[0][0]


def test_identifiers_are_quoted(pg):
    params = [{"name": "t", "type": "identifier", "choices": ['we"ird', "secrets"]}]
    assert pg.fetch(bind("SELECT count(*) FROM {{ t }}", params, {"t": 'we"ird'})) == [(1,)]
    assert pg.fetch(bind("SELECT count(*) FROM {{ t }}", params, {"t": "secrets"})) == [(1,)]
