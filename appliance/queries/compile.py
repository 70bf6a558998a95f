"""Compiling a stored query: its parameter declarations (common to every kind), then its body by
the binding compiler of its datasource's kind (asked of the kinds registry).

Owns the compile entry point: compile once when a query is saved, bind per run. No I/O, no
logging; parameter values never reach a message, a log or statement text.
"""

from __future__ import annotations

from typing import Any

from appliance.kinds.registry import Template, all_kinds, kind_named
from appliance.parameters import InvalidQuery, parse_parameters


def compile_query(kind: str, body: Any, declarations: Any) -> Template:
    """Check a query's parameter declarations and body for a datasource `kind`, and compile it.

    Raises InvalidQuery (422) with the place and a suggestion, its `field` naming the input: a
    declaration's (`parameters[0].type`), else "body" (with `line` and `column` in SQL text;
    a REST or MongoDB body is a JSON value, not text: its place is named in the message). The
    result's `bind(params)` checks run-time values strictly (InvalidParameter, 422, naming the
    parameter) and returns what the kind's engine runs (a BoundStatement for postgres and
    sqlite, a RestRequest for rest, a MongoCommand for mongodb).
    """
    parameters = parse_parameters(declarations)
    found = kind_named(kind)
    if found is None:
        names = ", ".join(known.name for known in all_kinds())
        raise InvalidQuery(f"unknown datasource kind; use one of {names}")
    try:
        return found.compile(body, parameters)
    except InvalidQuery as exc:
        # The body compilers refuse the body, except a declaration it never uses (which they
        # name as that declaration's field).
        if exc.field is None:
            exc.field = "body"
        raise
