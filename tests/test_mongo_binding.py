"""The MongoDB binding: values stay values, operator injection, refused operators, shapes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from bson import ObjectId

from appliance.parameters import InvalidParameter, InvalidQuery
from appliance.queries.compile import compile_query

TYPES = ["string", "integer", "number", "boolean", "date", "datetime", "json",
         "array<string>", "array<integer>"]

# The {"$ne": null} family: each one, as a filter value, would match every document.
OPERATOR_PAYLOADS = [
    {"$ne": None}, {"$gt": ""}, {"$regex": ".*"}, {"$exists": True}, {"$in": [None, ""]},
    {"$where": "sleep(1000)"}, {"$expr": {"$eq": [1, 1]}}, {"a": {"$ne": None}},
    [{"$ne": None}], {"$function": {"body": "return true", "args": [], "lang": "js"}},
    {"$oid": "0123456789abcdef01234567"}, {"ok": [{"deep": {"$where": "1"}}]},
    "$ne", "$where", "{\"$ne\": null}", "$$ROOT", "$password",
]


def mongo(body: dict, params: list[dict]):
    return compile_query("mongodb", body, params)


def refused(body: dict, params: list[dict] | None = None) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as info:
        mongo(body, params or [])
    return info.value


def _walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_find_binds_typed_values():
    params = [{"name": "s", "type": "string"}, {"name": "n", "type": "integer"},
              {"name": "d", "type": "date"}, {"name": "t", "type": "datetime"},
              {"name": "ids", "type": "array<integer>"}, {"name": "lim", "type": "integer",
                                                           "default": 10}]
    t = mongo({"collection": "orders", "operation": "find",
               "filter": {"code": "{{ s }}", "qty": {"$gte": "{{ n }}"}, "day": "{{ d }}",
                          "at": {"$lt": "{{ t }}"}, "id": {"$in": "{{ ids }}"}},
               "sort": {"at": -1}, "limit": "{{ lim }}"}, params)
    cmd = t.bind({"s": "0001", "n": 0, "d": "2024-01-02", "t": "2024-01-02T03:04:05+01:00",
                  "ids": [3, 1]})
    assert cmd.collection == "orders" and cmd.operation == "find"
    f = cmd.arguments["filter"]
    assert f["code"] == "0001" and f["qty"] == {"$gte": 0}
    assert f["day"] == datetime(2024, 1, 2, tzinfo=UTC)
    assert f["at"]["$lt"].utcoffset().total_seconds() == 3600
    assert f["id"] == {"$in": [3, 1]}
    assert cmd.arguments["sort"] == {"at": -1} and cmd.arguments["limit"] == 10


@pytest.mark.parametrize("type_", TYPES)
def test_operator_injection_through_every_type(type_):
    t = mongo({"collection": "users", "operation": "find",
               "filter": {"name": "{{ p }}", "role": "user"}}, [{"name": "p", "type": type_}])
    for payload in OPERATOR_PAYLOADS:
        try:
            cmd = t.bind({"p": payload})
        except InvalidParameter as exc:
            assert exc.parameter == "p"
            continue
        keys = list(_walk(cmd.arguments["filter"]))
        # No client value ever added a key, least of all an operator.
        assert keys == ["name", "role"], (type_, payload)
        assert cmd.arguments["filter"]["role"] == "user"
        value = cmd.arguments["filter"]["name"]
        assert not isinstance(value, dict)
        if isinstance(value, list):
            assert type_.startswith("array<") or type_ == "json"
            assert all(not isinstance(v, dict) for v in value)


def test_json_parameter_objects_without_dollar_keys_pass():
    t = mongo({"collection": "c", "operation": "insert_one", "document": {
        "meta": "{{ j }}", "at": "now"}}, [{"name": "j", "type": "json"}])
    cmd = t.bind({"j": {"tags": ["a", "$not-a-key-just-text"], "n": {"x": 1}, "a.b": 1}})
    assert cmd.arguments["document"]["meta"]["n"] == {"x": 1}
    for bad in [{"$set": {"admin": True}}, {"x": {"$gt": 1}}, [{"y": [{"$where": "1"}]}],
                {"k\x00": 1}]:
        with pytest.raises(InvalidParameter) as info:
            t.bind({"j": bad})
        assert info.value.parameter == "j"


def test_insert_template_is_copied_per_run():
    t = mongo({"collection": "c", "operation": "insert_one",
               "document": {"kind": "static", "inner": {"a": 1}}}, [])
    first = t.bind({}).arguments["document"]
    first["_id"] = "set by the driver"
    first["inner"]["a"] = 2
    assert t.bind({}).arguments["document"] == {"kind": "static", "inner": {"a": 1}}


def test_expression_positions_refuse_field_paths():
    params = [{"name": "v", "type": "string"}, {"name": "w", "type": "array<string>"}]
    agg = mongo({"collection": "c", "operation": "aggregate", "pipeline": [
        {"$match": {"owner": "{{ v }}"}},
        {"$project": {"label": {"$concat": ["x-", "{{ v }}"]}, "tags": "{{ w }}"}}]}, params)
    assert agg.bind({"v": "alice", "w": ["a"]}).arguments["pipeline"][0] == {
        "$match": {"owner": "alice"}}
    for value in ["$password", "$$ROOT", "$$CURRENT.secret"]:
        with pytest.raises(InvalidParameter, match="field path"):
            agg.bind({"v": value, "w": []})
        with pytest.raises(InvalidParameter, match="field path"):
            agg.bind({"v": "ok", "w": ["a", value]})
    expr = mongo({"collection": "c", "operation": "find",
                  "filter": {"$expr": {"$eq": ["$owner", "{{ v }}"]}, "w": {"$in": "{{ w }}"}},
                  "projection": {"shown": "{{ v }}"}}, params)
    with pytest.raises(InvalidParameter, match="field path"):
        expr.bind({"v": "$owner", "w": []})
    # Outside expressions a leading '$' is only text.
    plain = mongo({"collection": "c", "operation": "find", "filter": {"price": "{{ v }}",
                                                                       "t": {"$in": "{{ w }}"}}},
                  params)
    assert plain.bind({"v": "$5", "w": ["$x"]}).arguments["filter"] == {
        "price": "$5", "t": {"$in": ["$x"]}}


def test_update_pipeline_is_an_expression_context():
    t = mongo({"collection": "c", "operation": "update_one", "filter": {"_id": 1},
               "update": [{"$set": {"name": "{{ v }}"}}]}, [{"name": "v", "type": "string"}])
    with pytest.raises(InvalidParameter, match="field path"):
        t.bind({"v": "$secret"})
    doc = mongo({"collection": "c", "operation": "update_many", "filter": {},
                 "update": {"$set": {"name": "{{ v }}"}}, "upsert": True},
                [{"name": "v", "type": "string"}])
    assert doc.bind({"v": "$secret"}).arguments == {
        "filter": {}, "update": {"$set": {"name": "$secret"}}, "upsert": True}


@pytest.mark.parametrize("operator", ["$where", "$function", "$accumulator"])
def test_code_operators_refused_at_any_depth(operator):
    assert "runs code" in refused({"collection": "c", "operation": "find",
                                   "filter": {operator: "1"}}).message
    assert "runs code" in refused({"collection": "c", "operation": "aggregate", "pipeline": [
        {"$group": {"_id": None, "x": {operator: {}}}}]}).message
    assert "runs code" in refused({"collection": "c", "operation": "find", "filter": {
        "$and": [{"a": {"$elemMatch": {"b": [{"$expr": {operator: {}}}]}}}]}}).message


def test_object_ids():
    t = mongo({"collection": "c", "operation": "delete_one",
               "filter": {"_id": {"$oid": "{{ id }}"}, "parent": {"$oid": "0" * 24}}},
              [{"name": "id", "type": "string"}])
    cmd = t.bind({"id": "65f0a1b2c3d4e5f607182930"})
    assert cmd.arguments["filter"] == {"_id": ObjectId("65f0a1b2c3d4e5f607182930"),
                                       "parent": ObjectId("0" * 24)}
    for bad in ["65f0a1b2c3d4e5f60718293", "zzzzzzzzzzzzzzzzzzzzzzzz", '{"$ne": null}']:
        with pytest.raises(InvalidParameter, match="ObjectId"):
            t.bind({"id": bad})


def test_collection_from_identifier_choices():
    t = mongo({"collection": "{{ coll }}", "operation": "count", "filter": {}},
              [{"name": "coll", "type": "identifier", "choices": ["orders", "invoices"]}])
    assert t.bind({"coll": "invoices"}).collection == "invoices"
    with pytest.raises(InvalidParameter):
        t.bind({"coll": "system.users"})
    assert "identifier parameter" in refused(
        {"collection": "{{ c }}", "operation": "count"},
        [{"name": "c", "type": "string"}]).message
    assert "collection must be" in refused(
        {"collection": "{{ c }}", "operation": "count"},
        [{"name": "c", "type": "identifier", "choices": ["ok", "system.js"]}]).message


def test_whole_argument_bindings_need_json_and_the_right_shape():
    t = mongo({"collection": "c", "operation": "find", "filter": "{{ f }}"},
              [{"name": "f", "type": "json"}])
    assert t.bind({"f": {"status": "open"}}).arguments["filter"] == {"status": "open"}
    for bad in [[1], "x", 1]:
        with pytest.raises(InvalidParameter, match=r"must be a JSON object$"):
            t.bind({"f": bad})
    with pytest.raises(InvalidParameter, match="'\\$'"):
        t.bind({"f": {"$where": "1"}})
    with pytest.raises(InvalidParameter, match="non-negative"):
        mongo({"collection": "c", "operation": "find", "filter": {}, "skip": "{{ n }}"},
              [{"name": "n", "type": "integer"}]).bind({"n": -1})
    assert "must be a json parameter" in refused(
        {"collection": "c", "operation": "find", "filter": "{{ f }}"},
        [{"name": "f", "type": "string"}]).message
    assert "must be a integer parameter" in refused(
        {"collection": "c", "operation": "find", "filter": {}, "limit": "{{ f }}"},
        [{"name": "f", "type": "string"}]).message


@pytest.mark.parametrize("body, fragment", [
    ({"collection": "c", "operation": "mapReduce"}, "operation must be one of"),
    ({"collection": "c", "operation": "drop"}, "operation must be one of"),
    ({"collection": "c"}, "operation must be one of"),
    ({"collection": "c", "operation": "find", "eval": "x"}, "unknown key"),
    ({"collection": "c", "operation": "find", "pipeline": []}, "unknown key"),
    ({"collection": "c", "operation": "aggregate"}, 'needs "pipeline"'),
    ({"collection": "c", "operation": "insert_one"}, 'needs "document"'),
    ({"collection": "c", "operation": "update_one", "filter": {}}, 'needs "update"'),
    ({"collection": "c", "operation": "delete_many"}, 'needs "filter"'),
    ({"collection": "c", "operation": "find", "filter": []}, "filter must be an object"),
    ({"collection": "c", "operation": "aggregate", "pipeline": {}}, "array of objects"),
    ({"collection": "c", "operation": "find", "filter": {}, "limit": -1}, "non-negative"),
    ({"collection": "c", "operation": "find", "filter": {}, "limit": "5"}, "non-negative"),
    ({"collection": "c", "operation": "update_one", "filter": {}, "update": {},
      "upsert": "yes"}, "true or false"),
    ({"collection": "", "operation": "find"}, "collection must be"),
    ({"collection": "a$b", "operation": "find"}, "collection must be"),
    ({"collection": "system.users", "operation": "find"}, "collection must be"),
    ({"collection": "a\x00b", "operation": "find"}, "collection must be"),
    ({"collection": 5, "operation": "find"}, "collection must be"),
    ({"collection": "c", "operation": "find", "filter": {"{{ s }}": 1}}, "object key"),
    ({"collection": "c", "operation": "find", "filter": {"a": "x {{ s }}"}}, "not a declared"),
    ({"collection": "c", "operation": "find", "filter": {"_id": {"$oid": "xyz"}}}, "$oid must"),
    ({"collection": "c", "operation": "find", "filter": {"_id": {"$oid": "0" * 24, "x": 1}}},
     "alone"),
    ("find", "must be an object"),
])
def test_save_time_refusals(body, fragment):
    assert fragment in refused(body).message


def test_bindings_must_be_whole_values_never_keys():
    params = [{"name": "s", "type": "string"}]
    e = refused({"collection": "c", "operation": "find", "filter": {"a": "x {{ s }}"}}, params)
    assert "whole string" in e.message
    e = refused({"collection": "c", "operation": "find", "filter": {"{{ s }}": 1}}, params)
    assert "object key" in e.message
    e = refused({"collection": "c", "operation": "find", "filter": {}}, params)
    assert "never used" in e.message
