"""What a failed PostgreSQL statement tells its developer: a fixed sentence per SQLSTATE (or its
class), the schema names the server reports in their own fields, and the position in the text.

Owns those sentences. Never reads an error's message, detail, hint, context or internal query:
PostgreSQL puts values there (`invalid input syntax for type integer: "…"`, `Key (x)=(…) already
exists`, `Failing row contains (…)`), and so does asyncpg's client-side encoding error.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Final

from appliance.datasources.errors import QueryFailed, named

# The sentence for a SQLSTATE, else for its class (its first two characters).
SENTENCES: Final[dict[str, str]] = {
    "21000": "a subquery used as a value returned more than one row",
    "22001": "a value is too long for its column's type",
    "22003": "a number is out of the range of its type",
    "22004": "a NULL value is not allowed here",
    "22007": "a date or time value has the wrong format",
    "22008": "a date or time value is out of range",
    "22012": "division by zero",
    "2202E": "an array subscript is out of range",
    "22023": "a value given to a function is not valid",
    "22P02": "a value is not valid input for its type",
    "22P05": "a character cannot be converted to the database's encoding",
    "23502": "a NOT NULL column would get NULL",
    "23503": "a foreign key would point at no row, or a row still referenced would go",
    "23505": "a unique constraint would be violated (the key exists)",
    "23514": "a check constraint would be violated",
    "23P01": "an exclusion constraint would be violated",
    "25006": "the transaction is read-only",
    "40001": "the transaction could not be serialized; run it again",
    "40P01": "a deadlock was detected; run it again",
    "42501": "permission denied",
    "42601": "syntax error",
    "42703": "a column named in the statement does not exist",
    "42702": "a column reference is ambiguous",
    "42804": "a value's type does not match what the statement expects; add a cast",
    "42883": "a function or operator does not exist for these argument types; add a cast",
    "42P01": "a table or view named in the statement does not exist",
    "42P02": "the statement has a placeholder no value is bound to",
    "42P18": "the type of a placeholder cannot be determined; add a cast",
    "55P03": "a lock could not be obtained",
    "P0001": "a function or trigger raised an exception",
    "P0002": "a function found no row (NO_DATA_FOUND)",
    "P0003": "a function found more than one row (TOO_MANY_ROWS)",
}
CLASSES: Final[dict[str, str]] = {
    "0A": "a feature is not supported",
    "22": "a value is not valid for this operation",
    "23": "an integrity constraint would be violated",
    "25": "the transaction is in the wrong state for this statement",
    "2B": "a dependent object still exists",
    "38": "an external routine failed",
    "39": "an external routine invocation failed",
    "3F": "a schema named in the statement does not exist",
    "40": "the transaction was rolled back",
    "42": "the statement is not valid (syntax, names or privileges)",
    "53": "the server is out of a resource",
    "54": "a limit of the server was reached",
    "55": "an object is not in the state the statement needs",
    "57": "the server interrupted the statement",
    "58": "the server had a system error",
    "F0": "a configuration file error",
    "HV": "a foreign data wrapper error",
    "P0": "a PL/pgSQL function failed",
    "XX": "the server had an internal error",
}
# asyncpg's client-side encoding errors start so, then quote the value or describe it: only the
# placeholder number before the colon is read.
_ARGUMENT_RE: Final = re.compile(r"(?:invalid input for )?query argument \$(\d{1,5})[: ]")
_POSITION_RE: Final = re.compile(r"\d{1,9}")


def sentence(sqlstate: str) -> str:
    return (SENTENCES.get(sqlstate) or CLASSES.get(sqlstate[:2])
            or "the statement failed")


def query_failed(datasource: str, exc: Any, hidden: Collection[str] = ()) -> QueryFailed:
    """A server error (`asyncpg.PostgresError`) as `QueryFailed`: sentence, schema names from
    their own fields (none holding one of `hidden`, the run's identifier values), position."""
    sqlstate = str(getattr(exc, "sqlstate", None) or "")
    if not re.fullmatch(r"[0-9A-Z]{5}", sqlstate):
        sqlstate = ""
    problem = sentence(sqlstate)
    names = named((("constraint", exc.constraint_name), ("schema", exc.schema_name),
                   ("table", exc.table_name), ("column", exc.column_name),
                   ("type", exc.data_type_name)), hidden)
    if names:
        problem += f" ({names})"
    position = str(exc.position or "")
    if _POSITION_RE.fullmatch(position):
        problem += f" at character {position} of the statement as sent (bindings as $n)"
    return QueryFailed(datasource, problem, sqlstate)


def encoding_failure(datasource: str, exc: BaseException) -> QueryFailed | None:
    """asyncpg refused to encode a value for a placeholder (its message quotes the value): which
    placeholder, and nothing else; None for another client-side error."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    match = _ARGUMENT_RE.match(text)
    if match is None:
        return None
    where = f"${match.group(1)}"
    return QueryFailed(datasource, f"a value does not fit the type PostgreSQL expects for "
                                   f"{where}; add a cast in the query", "22000")
