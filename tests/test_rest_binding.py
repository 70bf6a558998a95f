"""The REST binding: traversal, query and header injection, JSON typing, save-time refusals."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
import yarl

from appliance.kinds.rest.binding import NO_BODY
from appliance.parameters import InvalidParameter, InvalidQuery
from appliance.queries.compile import compile_query

S = {"name": "s", "type": "string"}


def rest(body: dict, params: list[dict] | None = None):
    return compile_query("rest", body, params if params is not None else [S])


def refused(body: dict, params: list[dict] | None = None) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as info:
        rest(body, params)
    return info.value


TRAVERSAL = ["..", ".", "../admin", "a/../../admin", "..\\admin", "/etc/passwd", "a?admin=1",
             "a#frag", "a&b=c", "%2e%2e", "%2F", "a b", "ü/ß", "\r\nHost: evil", "//evil.example",
             "http://evil.example/", "?", "#", "~user", "a;b=c", "\x00"]


def test_path_values_cannot_add_segments_query_or_fragment():
    t = rest({"path": "/v1/files/{{ s }}/meta"})
    base = "https://api.example:8443/base"
    for value in TRAVERSAL:
        try:
            req = t.bind({"s": value})
        except InvalidParameter as exc:
            assert exc.parameter == "s" or "'s'" in exc.message
            assert value not in exc.message or value in (".", "..")
            continue
        url = yarl.URL(base + req.target, encoded=True)
        assert (url.scheme, url.host, url.port) == ("https", "api.example", 8443)
        assert url.raw_path.startswith("/base/v1/files/") and url.raw_path.endswith("/meta")
        assert url.raw_path.count("/") == 5, value
        assert url.raw_query_string == "" and url.raw_fragment == ""
        segment = url.raw_path.split("/")[4]
        assert unquote(segment) == value  # exactly the value, nothing more


@pytest.mark.parametrize("value", [".", "..", "", "a/..", "../x", "x/./y", "..\\x"])
def test_dot_and_empty_segments_refused(value):
    t = rest({"path": "/v1/{{ s }}"})
    with pytest.raises(InvalidParameter):
        t.bind({"s": value})


def test_pieces_cannot_build_a_dot_or_empty_segment():
    t = rest({"path": "/v1/.{{ a }}/x"}, [{"name": "a", "type": "string"}])
    assert t.bind({"a": "y."}).path == "/v1/.y./x"
    with pytest.raises(InvalidParameter, match="path step"):
        t.bind({"a": "."})  # "." + "." must never reach the server
    with pytest.raises(InvalidParameter, match=r"a '\.' path segment"):
        t.bind({"a": ""})
    two = rest({"path": "/v1/{{ a }}{{ b }}"}, [{"name": "a", "type": "string"},
                                                {"name": "b", "type": "string"}])
    with pytest.raises(InvalidParameter, match="empty path segment"):
        two.bind({"a": "", "b": ""})


def test_query_values_are_encoded_and_arrays_repeat():
    params = [S, {"name": "ids", "type": "array<integer>"},
              {"name": "opt", "type": "string", "required": False},
              {"name": "b", "type": "boolean"}, {"name": "d", "type": "date"}]
    t = rest({"path": "/search", "query": {"q": "{{ s }}", "id": "{{ ids }}", "o": "{{ opt }}",
                                           "flag": "{{ b }}", "day": "on {{ d }}", "fixed": "a b"}},
             params)
    req = t.bind({"s": "x&admin=1#f?y=/", "ids": [1, 2], "b": False, "d": "2024-01-02"})
    assert req.target == ("/search?q=x%26admin%3D1%23f%3Fy%3D%2F&id=1&id=2&flag=false"
                          "&day=on%202024-01-02&fixed=a%20b")
    url = yarl.URL("https://h" + req.target, encoded=True)
    assert url.query.getall("q") == ["x&admin=1#f?y=/"]
    assert url.query.getall("id") == ["1", "2"]
    assert "o" not in url.query  # an absent optional value drops the item
    assert t.bind({"s": "", "ids": [], "b": True, "d": "2024-01-02"}).query[0] == ("q", "")


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "a\x7fb",
                                   "a\x1bb"])
def test_header_crlf_nul_and_controls_refused(value):
    t = rest({"path": "/", "headers": {"X-Tenant": "t-{{ s }}"}})
    with pytest.raises(InvalidParameter) as info:
        t.bind({"s": value})
    assert info.value.parameter == "s" and value not in info.value.message


def test_headers_bind_and_optional_drop():
    t = rest({"path": "/", "headers": {"X-Tenant": "{{ s }}", "Accept": "application/json",
                                        "X-Opt": "{{ o }}"}},
             [S, {"name": "o", "type": "integer", "required": False}])
    assert t.bind({"s": "acme\tcorp ü"}).headers == (("X-Tenant", "acme\tcorp ü"),
                                                   ("Accept", "application/json"))
    assert t.bind({"s": "x", "o": 5}).headers[2] == ("X-Opt", "5")


def test_json_body_typing():
    params = [S, {"name": "n", "type": "integer"}, {"name": "x", "type": "number"},
              {"name": "b", "type": "boolean"}, {"name": "d", "type": "date"},
              {"name": "t", "type": "datetime"}, {"name": "j", "type": "json"},
              {"name": "ids", "type": "array<integer>"}, {"name": "days", "type": "array<date>"},
              {"name": "o", "type": "string", "required": False}]
    body = {"method": "POST", "path": "/items", "json": {
        "s": "{{ s }}", "n": "{{ n }}", "x": "{{x}}", "b": "{{ b }}", "d": "{{ d }}",
        "t": "{{ t }}", "j": "{{ j }}", "ids": "{{ ids }}", "days": "{{ days }}", "o": "{{ o }}",
        "label": "#{{ n }} of {{ s }} ({{ j }}, {{ b }})", "static": {"k": [1, "{"]},
        "list": [1, "{{ n }}", {"deep": "{{ s }}"}]}}
    req = rest(body, params).bind({
        "s": "0001", "n": 7, "x": 1.5, "b": True, "d": "2024-01-02", "t": "2024-01-02T03:04:05Z",
        "j": {"a": [1, None]}, "ids": [1, 2], "days": ["2024-01-01"]})
    assert req.method == "POST" and req.has_body
    assert req.json == {
        "s": "0001", "n": 7, "x": 1.5, "b": True, "d": "2024-01-02",
        "t": "2024-01-02T03:04:05+00:00", "j": {"a": [1, None]}, "ids": [1, 2],
        "days": ["2024-01-01"], "o": None, "label": '#7 of 0001 ({"a":[1,null]}, true)',
        "static": {"k": [1, "{"]}, "list": [1, 7, {"deep": "0001"}]}


def test_json_string_values_never_become_structure():
    t = rest({"method": "PUT", "path": "/x", "json": {"name": "{{ s }}", "note": "hi {{ s }}"}})
    evil = '", "admin": true, "x": "'
    req = t.bind({"s": evil})
    assert req.json == {"name": evil, "note": "hi " + evil}
    with pytest.raises(InvalidParameter, match="must be a string, not an object"):
        t.bind({"s": {"admin": True}})


def test_no_body_and_methods():
    t = rest({"path": "/x"}, [])
    req = t.bind({})
    assert req.method == "GET" and req.json is NO_BODY and not req.has_body
    assert req.target == "/x" and req.headers == ()
    assert rest({"method": "delete", "path": "/"}, []).bind({}).method == "DELETE"
    assert rest({"method": "POST", "path": "/", "json": None}, []).bind({}).json is None


@pytest.mark.parametrize("body, fragment", [
    ({"path": "https://evil.example/x"}, "scheme"),
    ({"path": "/redirect?to=http://evil.example"}, "scheme"),
    ({"path": "//evil.example/x"}, "must not start with //"),
    ({"path": "javascript:alert(1)"}, "scheme"),
    ({"path": "x/y"}, "must start with /"),
    ({"path": ""}, "path is required"),
    ({}, "path is required"),
    ({"path": 5}, "path is required"),
    ({"path": "/a/../b"}, "'.' and '..'"),
    ({"path": "/a/./b"}, "'.' and '..'"),
    ({"path": "/a//b"}, "empty segment"),
    ({"path": "/a?x=1"}, "no space, '?'"),
    ({"path": "/a#f"}, "no space, '?'"),
    ({"path": "/a b"}, "no space"),
    ({"path": "/a\\b"}, "no space"),
    ({"path": "/a\nb"}, "no space"),
    ({"path": "/a/%2e%2e/b"}, "%2E"),
    ({"path": "/a%2Fb"}, "%2E"),
    ({"path": "/a%zz"}, "no space"),
    ({"path": "/{{ s }"}, "malformed"),
    ({"path": "/{{ nope }}"}, "not a declared"),
    ({"path": "/x", "method": "TRACE"}, "method must be one of"),
    ({"path": "/x", "method": "CONNECT"}, "method must be one of"),
    ({"path": "/x", "host": "evil"}, "unknown key"),
    ({"path": "/x", "url": "http://evil"}, "unknown key"),
    ({"path": "/x", "json": {"a": 1}}, "GET request cannot have a JSON body"),
    ({"path": "/x", "headers": {"Host": "evil"}}, "set by the appliance"),
    ({"path": "/x", "headers": {"content-length": "1"}}, "set by the appliance"),
    ({"path": "/x", "headers": {"Transfer-Encoding": "chunked"}}, "set by the appliance"),
    ({"path": "/x", "headers": {"X-{{ s }}": "1"}}, "HTTP token"),
    ({"path": "/x", "headers": {"Bad Name": "1"}}, "HTTP token"),
    ({"path": "/x", "headers": {"X-A": "a\r\nb"}}, "line break"),
    ({"path": "/x", "headers": {"X-A": 1}}, "string template"),
    ({"path": "/x", "query": {"{{ s }}": "1"}}, "no bindings"),
    ({"path": "/x", "query": {"a": 1}}, "string template"),
    ({"path": "/x", "query": ["a"]}, "must be an object"),
    ({"path": "/x", "method": "POST", "json": {"{{ s }}": 1}}, "binding in an object key"),
    ("GET /x", "must be an object"),
])
def test_save_time_refusals(body, fragment):
    e = refused(body)
    assert fragment in e.message, e.message


def test_array_placement_refusals():
    arr = [{"name": "ids", "type": "array<string>"}]
    assert "cannot be bound in a path" in refused({"path": "/{{ ids }}"}, arr).message
    assert "whole value" in refused({"path": "/", "query": {"a": "x{{ ids }}"}}, arr).message
    assert "in a header" in refused({"path": "/", "headers": {"X": "{{ ids }}"}}, arr).message
    assert "larger" in refused({"path": "/", "method": "POST", "json": "a {{ ids }}"},
                               arr).message


def test_unused_parameter_refused():
    e = refused({"path": "/x"}, [S])
    assert "never used" in e.message and e.parameter == "s"


def test_null_in_path_or_embedded_text_refused():
    params = [{"name": "o", "type": "string", "required": False}]
    with pytest.raises(InvalidParameter, match="path needs one"):
        rest({"path": "/{{ o }}"}, params).bind({})
    with pytest.raises(InvalidParameter, match="larger text"):
        rest({"path": "/", "headers": {"X": "v={{ o }}"}}, params).bind({})


def test_identifier_in_path_is_still_encoded():
    t = rest({"path": "/{{ t }}/list"}, [{"name": "t", "type": "identifier",
                                          "choices": ["orders", "a/b"]}])
    assert t.bind({"t": "orders"}).path == "/orders/list"
    assert t.bind({"t": "a/b"}).path == "/a%2Fb/list"
    with pytest.raises(InvalidParameter):
        t.bind({"t": "../admin"})


def test_a_header_too_long_is_named_by_its_parameters_not_its_name():
    t = rest({"path": "/", "headers": {"X-Hidden-Tenant": "{{ s }}-{{ o }}"}},
             [S, {"name": "o", "type": "string"}])
    with pytest.raises(InvalidParameter) as info:
        t.bind({"s": "x" * 8_000, "o": "y" * 200})
    assert info.value.message == ("parameter(s) 's', 'o' would make a header value longer than "
                                  "8192 characters")
    assert t.bind({"s": "x" * 4_000, "o": "y" * 4_000}).headers[0][0] == "X-Hidden-Tenant"
