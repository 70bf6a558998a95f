"""Stored-query compilation: declared parameters and the SQL, REST and MongoDB binding compilers.

The public face: compile once when a query is saved, bind per run. No I/O, no logging;
parameter values never reach a message, a log or statement text.
"""

from __future__ import annotations

from typing import Any, Final

from appliance.query.mongo_binding import MongoCommand, MongoTemplate, compile_mongo
from appliance.query.parameters import (
    MISSING,
    InvalidParameter,
    InvalidQuery,
    Parameter,
    ParameterSet,
    parse_parameters,
)
from appliance.query.rest_binding import NO_BODY, RestRequest, RestTemplate, compile_rest
from appliance.query.sql_binding import BoundStatement, SqlTemplate, compile_sql, quote_identifier

KINDS: Final = ("postgres", "sqlite", "rest", "mongodb")

Template = SqlTemplate | RestTemplate | MongoTemplate
Bound = BoundStatement | RestRequest | MongoCommand


def compile_query(kind: str, body: Any, declarations: Any) -> Template:
    """Check a query's parameter declarations and body for a datasource `kind`, and compile it.

    Raises InvalidQuery (422) with the place and a suggestion, its `field` naming the input: a
    declaration's (`parameters[0].type`), else "body" (with `line` and `column` in SQL text;
    a REST or MongoDB body is a JSON value, not text: its place is named in the message). The
    result's `bind(params)` checks run-time values strictly (InvalidParameter, 422, naming the
    parameter) and returns a BoundStatement (postgres, sqlite), RestRequest (rest) or
    MongoCommand (mongodb).
    """
    parameters = parse_parameters(declarations)
    try:
        if kind == "postgres" or kind == "sqlite":
            return compile_sql(body, kind, parameters)
        if kind == "rest":
            return compile_rest(body, parameters)
        if kind == "mongodb":
            return compile_mongo(body, parameters)
    except InvalidQuery as exc:
        # The body compilers refuse the body, except a declaration it never uses (which they
        # name as that declaration's field).
        if exc.field is None:
            exc.field = "body"
        raise
    raise InvalidQuery(f"unknown datasource kind; use one of {', '.join(KINDS)}")


__all__ = [
    "KINDS", "MISSING", "NO_BODY", "Bound", "BoundStatement", "InvalidParameter", "InvalidQuery",
    "MongoCommand", "MongoTemplate", "Parameter", "ParameterSet", "RestRequest", "RestTemplate",
    "SqlTemplate", "Template", "compile_query", "parse_parameters", "quote_identifier",
]
