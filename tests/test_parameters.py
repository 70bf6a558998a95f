"""Parameter declarations (save time) and strict value validation (run time)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from appliance.errors import Unprocessable
from appliance.parameters import (
    MAX_ARRAY_LENGTH,
    MAX_JSON_DEPTH,
    MAX_PARAMETERS,
    MAX_STRING_LENGTH,
    MISSING,
    InvalidParameter,
    InvalidQuery,
    parse_parameters,
    split_bindings,
)

CANARY = "CANARY-7f3a9"


def one(decl: dict) -> object:
    return parse_parameters([decl])


def check(decl: dict, value: object) -> object:
    return parse_parameters([decl]).validate({decl["name"]: value})[decl["name"]]


# --- declarations ---------------------------------------------------------------------------


@pytest.mark.parametrize("decl, fragment", [
    ({"name": "1abc", "type": "string"}, "invalid name"),
    ({"name": "a-b", "type": "string"}, "invalid name"),
    ({"name": "", "type": "string"}, "invalid name"),
    ({"name": "x" * 64, "type": "string"}, "invalid name"),
    ({"name": 5, "type": "string"}, "invalid name"),
    ({"type": "string"}, "invalid name"),
    ({"name": "a"}, "'type' is missing"),
    ({"name": "a", "type": "text"}, "unknown type"),
    ({"name": "a", "type": "String"}, "unknown type"),
    ({"name": "a", "type": 3}, "must be a string"),
    ({"name": "a", "type": "array<json>"}, "scalar types only"),
    ({"name": "a", "type": "array<identifier>"}, "scalar types only"),
    ({"name": "a", "type": "array<array<string>>"}, "unknown type"),
    ({"name": "a", "type": "identifier"}, "needs a 'choices' list"),
    ({"name": "a", "type": "identifier", "choices": []}, "non-empty list"),
    ({"name": "a", "type": "identifier", "choices": "users"}, "non-empty list"),
    ({"name": "a", "type": "identifier", "choices": ["a", "a"]}, "duplicates"),
    ({"name": "a", "type": "identifier", "choices": [""]}, "1 to 63"),
    ({"name": "a", "type": "identifier", "choices": ["x" * 64]}, "1 to 63"),
    ({"name": "a", "type": "identifier", "choices": ["a\nb"]}, "control character"),
    ({"name": "a", "type": "identifier", "choices": [1]}, "must be a string"),
    ({"name": "a", "type": "identifier", "choices": ["users"], "required": False},
     "cannot be null"),
    ({"name": "a", "type": "boolean", "choices": [True]}, "not allowed for type boolean"),
    ({"name": "a", "type": "date", "choices": ["2024-01-01"]}, "not allowed for type date"),
    ({"name": "a", "type": "json", "choices": [1]}, "not allowed for type json"),
    ({"name": "a", "type": "array<date>", "choices": ["2024-01-01"]}, "not allowed"),
    ({"name": "a", "type": "integer", "choices": ["1"]}, "choice 0 must be an integer"),
    ({"name": "a", "type": "integer", "default": "1"}, "the default must be an integer"),
    ({"name": "a", "type": "integer", "default": True}, "the default must be an integer"),
    ({"name": "a", "type": "string", "default": 1}, "the default must be a string"),
    ({"name": "a", "type": "date", "default": "01/02/2024"}, "the default must be an ISO"),
    ({"name": "a", "type": "array<integer>", "default": [1, "2"]}, "element 1"),
    ({"name": "a", "type": "integer", "choices": [1, 2], "default": 3}, "declared choices"),
    ({"name": "a", "type": "string", "required": "yes"}, "true or false"),
    ({"name": "a", "type": "string", "required": True, "default": "x"}, "required and has a"),
    ({"name": "a", "type": "string", "label": "x"}, "unknown key"),
    ({"name": "a", "type": "string", "description": 5}, "description"),
    ("a", "must be an object"),
])
def test_bad_declarations(decl, fragment):
    with pytest.raises(InvalidQuery) as info:
        parse_parameters([decl])
    assert fragment in info.value.message
    assert isinstance(info.value, Unprocessable) and info.value.status == 422


def test_duplicates_and_limits():
    with pytest.raises(InvalidQuery, match="declared twice"):
        parse_parameters([{"name": "a", "type": "string"}, {"name": "a", "type": "integer"}])
    with pytest.raises(InvalidQuery, match="more than"):
        parse_parameters([{"name": f"p{i}", "type": "string"} for i in range(MAX_PARAMETERS + 1)])
    with pytest.raises(InvalidQuery, match="must be a list"):
        parse_parameters({"name": "a", "type": "string"})
    assert len(parse_parameters(None)) == 0


def test_defaults_and_required():
    ps = parse_parameters([
        {"name": "r", "type": "string"},                       # required by default
        {"name": "o", "type": "string", "required": False},    # optional: null
        {"name": "d", "type": "integer", "default": 7},        # optional with a default
        {"name": "n", "type": "integer", "default": None},     # explicit null default
        {"name": "day", "type": "date", "default": "2024-02-29"},
    ])
    assert [p.required for p in ps] == [True, False, False, False, False]
    assert ps["n"].default is None and ps["o"].default is MISSING
    assert ps.validate({"r": "x"}) == {"r": "x", "o": None, "d": 7, "n": None,
                                       "day": date(2024, 2, 29)}
    assert ps.validate({"r": "x", "d": None})["d"] == 7  # null means "not sent"
    assert ps.validate({"r": "x", "d": 0})["d"] == 0
    with pytest.raises(InvalidParameter, match="'r' is required"):
        ps.validate({})
    with pytest.raises(InvalidParameter, match="'r' is required"):
        ps.validate({"r": None})
    assert ps.to_json()[4] == {"name": "day", "type": "date", "required": False,
                               "default": "2024-02-29"}


def test_canonical_type_and_json_shape():
    ps = parse_parameters([{"name": "ids", "type": "array< integer >", "description": "ids"},
                           {"name": "t", "type": "identifier", "choices": ["a", "b"]}])
    assert ps["ids"].type == "array<integer>" and ps["ids"].is_array
    assert ps["ids"].base == "integer"
    assert ps.to_json()[1] == {"name": "t", "type": "identifier", "required": True,
                               "choices": ["a", "b"]}


# --- run-time values ------------------------------------------------------------------------


@pytest.mark.parametrize("type_, value, expected", [
    ("string", "0001", "0001"),
    ("string", "", ""),
    ("string", "ünïcödé ✓ 𝄞", "ünïcödé ✓ 𝄞"),
    ("string", "1e5", "1e5"),
    ("integer", 0, 0),
    ("integer", -(2**63), -(2**63)),
    ("integer", 2**63 - 1, 2**63 - 1),
    ("number", 1, 1),
    ("number", 1.5, 1.5),
    ("number", -0.0, -0.0),
    ("boolean", False, False),
    ("date", "2024-02-29", date(2024, 2, 29)),
    ("datetime", "2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("datetime", "2024-01-02T03:04+02:00",
     datetime(2024, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=2)))),
    ("datetime", "2024-01-02T03:04:05.123456-05:30",
     datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(-timedelta(hours=5, minutes=30)))),
    ("json", {"a": [1, 2.5, None, True, "x"]}, {"a": [1, 2.5, None, True, "x"]}),
    ("json", "just a string", "just a string"),
    ("json", 0, 0),
    ("array<string>", ["0001", ""], ["0001", ""]),
    ("array<integer>", [], []),
    ("array<date>", ["2024-01-01"], [date(2024, 1, 1)]),
])
def test_good_values(type_, value, expected):
    got = check({"name": "p", "type": type_}, value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("type_, value, fragment", [
    ("string", 1, "must be a string, not an integer"),
    ("string", 1.0, "must be a string, not a number"),
    ("string", True, "must be a string, not a boolean"),
    ("string", ["a"], "must be a string, not an array"),
    ("string", {"$ne": None}, "must be a string, not an object"),
    ("string", "x" * (MAX_STRING_LENGTH + 1), "longer than"),
    ("string", "a\x00b", "NUL"),
    ("string", "\ud800", "not valid Unicode"),
    ("integer", "1", "must be an integer, not a string"),
    ("integer", "0001", "must be an integer, not a string"),
    ("integer", 1.0, "must be an integer, not a number"),
    ("integer", True, "must be an integer, not a boolean"),
    ("integer", 2**63, "64-bit"),
    ("integer", -(2**63) - 1, "64-bit"),
    ("number", "1.5", "must be a number, not a string"),
    ("number", False, "must be a number, not a boolean"),
    ("number", float("nan"), "finite"),
    ("number", float("inf"), "finite"),
    ("number", 2**64, "64-bit"),
    ("boolean", 1, "must be true or false, not an integer"),
    ("boolean", "true", "must be true or false, not a string"),
    ("date", "2024-02-30", "not a valid calendar date"),
    ("date", "2024-1-2", "ISO-8601"),
    ("date", "20240102", "ISO-8601"),
    ("date", "2024-W01-1", "ISO-8601"),
    ("date", "2024-01-02T00:00:00Z", "ISO-8601"),
    ("date", 20240102, "must be a date string"),
    ("datetime", "2024-01-02T03:04:05", "with an offset"),
    ("datetime", "2024-01-02 03:04:05Z", "with an offset"),
    ("datetime", "2024-01-02T25:00:00Z", "not a valid date-time"),
    ("datetime", "2024-01-02T03:04:05.1234567Z", "with an offset"),
    ("datetime", "2024-01-02", "with an offset"),
    ("datetime", 1704164645, "must be a date-time string"),
    ("json", {"a": float("nan")}, "not finite"),
    ("json", {1: "a"}, "non-string object key"),
    ("json", {"a": {1, 2}}, "not a JSON value"),
    ("array<integer>", [1, "2"], "element 1 must be an integer"),
    ("array<integer>", [1, None], "element 1 is null"),
    ("array<integer>", "1,2", "must be an array, not a string"),
    ("array<integer>", {"0": 1}, "must be an array, not an object"),
    ("array<integer>", list(range(MAX_ARRAY_LENGTH + 1)), "more than"),
    ("array<string>", [["nested"]], "element 0 must be a string"),
    ("array<boolean>", [0], "element 0 must be true or false"),
])
def test_bad_values(type_, value, fragment):
    with pytest.raises(InvalidParameter) as info:
        check({"name": "p", "type": type_}, value)
    assert fragment in info.value.message
    assert info.value.message.startswith("parameter 'p' ")
    assert info.value.parameter == "p" and info.value.status == 422


def test_json_depth_limit():
    deep: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(InvalidParameter, match="nested deeper"):
        check({"name": "p", "type": "json"}, deep)
    ok: object = 1
    for _ in range(MAX_JSON_DEPTH):
        ok = {"a": ok}
    check({"name": "p", "type": "json"}, ok)


def test_choices():
    decl = {"name": "p", "type": "integer", "choices": [1, 2, 3]}
    assert check(decl, 2) == 2
    with pytest.raises(InvalidParameter, match="not one of the declared choices"):
        check(decl, 4)
    with pytest.raises(InvalidParameter, match="must be an integer"):
        check(decl, True)  # True == 1, but a boolean is not an integer
    arr = {"name": "p", "type": "array<string>", "choices": ["a", "b"]}
    assert check(arr, ["b", "a", "b"]) == ["b", "a", "b"]
    with pytest.raises(InvalidParameter, match="element 1 is not one of"):
        check(arr, ["a", "c"])
    ident = {"name": "p", "type": "identifier", "choices": ["users", "Users"]}
    with pytest.raises(InvalidParameter, match="not one of"):
        check(ident, "USERS")


def test_errors_never_echo_the_value():
    types = ["string", "integer", "number", "boolean", "date", "datetime", "json",
             "array<integer>", "array<date>"]
    bad_values = [CANARY, [CANARY], {CANARY: CANARY}, f"2024-01-0{CANARY}",
                  f"{CANARY}T00:00:00Z", "x" * (MAX_STRING_LENGTH + 1) + CANARY]
    for type_ in types:
        for value in bad_values:
            try:
                check({"name": "p", "type": type_}, value)
            except InvalidParameter as exc:
                assert CANARY not in exc.message and CANARY not in str(exc)
    ident = {"name": "p", "type": "identifier", "choices": ["a"]}
    with pytest.raises(InvalidParameter) as info:
        check(ident, CANARY)
    assert CANARY not in info.value.message


def test_unknown_and_malformed_params():
    ps = parse_parameters([{"name": "a", "type": "string", "required": False}])
    with pytest.raises(InvalidParameter, match=r"unknown parameter.*'b'"):
        ps.validate({"b": 1})
    with pytest.raises(InvalidParameter) as info:
        ps.validate({f"{CANARY} x": 1})
    assert CANARY not in info.value.message and "1 unknown" in info.value.message
    with pytest.raises(InvalidParameter, match="must be a JSON object"):
        ps.validate(["a"])
    assert ps.validate(None) == {"a": None}


def test_split_bindings():
    ps = parse_parameters([{"name": "a", "type": "string"}])
    assert [str(p) for p in split_bindings("x {{a}} y {{ a }}", "w", ps)] == [
        "x ", "Ref(name='a')", " y ", "Ref(name='a')"]
    for bad, fragment in [("{{ a }", "malformed"), ("{{ 1 }}", "malformed"), ("a }}", "'}}'"),
                          ("{{ b }}", "not a declared"), ("}} {{ a }}", "'}}'")]:
        with pytest.raises(InvalidQuery, match=fragment):
            split_bindings(bad, "w", ps)


@pytest.mark.parametrize("value", [{"k": "\ud800"}, {"\udfff": 1}, ["ok", ["\ud83d"]]])
def test_json_values_hold_only_valid_unicode(value):
    """A lone surrogate (JSON "\\ud800") in a json value or key is refused up front, not left to
    fail (and quote itself) in an encoder later."""
    p = parse_parameters([{"name": "j", "type": "json"}])
    with pytest.raises(InvalidParameter, match="not valid Unicode") as info:
        p.validate({"j": value})
    assert "\\ud" not in info.value.message.lower() and "\ud800" not in info.value.message
