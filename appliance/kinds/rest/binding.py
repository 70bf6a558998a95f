"""The REST binding: a request template (method, path, query, headers, JSON) -> one request.

Owns the save-time checks and the per-run encoding of values. Pure code: no I/O, no logging; scheme,
host and port never come from a template, and no value can add a path segment, query or header.
A run-time error names the parameter and the rule, never the method, path, a header name or a key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final, Literal
from urllib.parse import quote

from appliance.parameters import (
    InvalidParameter,
    InvalidQuery,
    Parameter,
    ParameterSet,
    Ref,
    split_bindings,
    used_check,
)

METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
BODY_KEYS: Final = frozenset({"method", "path", "query", "headers", "json"})
MAX_PATH_LENGTH: Final = 8_192
MAX_QUERY_ITEMS: Final = 100
MAX_HEADERS: Final = 50
MAX_HEADER_LENGTH: Final = 8_192
# Set only by the appliance or the HTTP client: a template may not choose them.
FORBIDDEN_HEADERS: Final = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "proxy-authorization", "proxy-connection", "expect", "forwarded",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
})

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH_LITERAL_RE: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_ENCODED_DANGER_RE: Final = re.compile(r"%(?:2[eEfF]|5[cC]|00|3[fF]|23)")
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_DOT_SEGMENT_RE: Final = re.compile(r"(?:^|[/\\])\.\.?(?:$|[/\\])")
_HEADER_BAD_RE: Final = re.compile(r"[\r\n\x00]")
_HEADER_CTL_RE: Final = re.compile(r"[\x01-\x08\x0a-\x1f\x7f]")


class _NoBody:
    """There is no request body (distinct from a JSON body of null)."""

    def __repr__(self) -> str:
        return "NO_BODY"

    def __bool__(self) -> bool:
        return False


NO_BODY: Final = _NoBody()


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One request to send. `path` and `query` are already percent-encoded.

    Join `target` to the datasource's base URL and give it to the HTTP client as encoded
    (e.g. `yarl.URL(base + request.target, encoded=True)`), so nothing is decoded or re-encoded.
    `json` is NO_BODY when there is no body.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    json: Any = NO_BODY

    @property
    def target(self) -> str:
        if not self.query:
            return self.path
        return self.path + "?" + "&".join(f"{k}={v}" for k, v in self.query)

    @property
    def has_body(self) -> bool:
        return self.json is not NO_BODY


# --- compiled pieces ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Whole:
    """A JSON string that is exactly one binding: replaced by the typed value."""

    name: str


@dataclass(frozen=True, slots=True)
class _Embedded:
    """A JSON string with bindings inside other text: the values are stringified."""

    pieces: tuple[str | Ref, ...]


@dataclass(frozen=True, slots=True)
class _Node:
    """A JSON object or array that contains bindings somewhere below it."""

    items: tuple[tuple[Any, Any], ...]  # (key or index, compiled child)
    is_object: bool


@dataclass(frozen=True, slots=True)
class RestTemplate:
    """A REST query compiled at save time; `bind` runs per request."""

    parameters: ParameterSet
    method: str
    segments: tuple[tuple[str | Ref, ...], ...]  # per path segment, literal parts pre-validated
    static_path: str | None
    query: tuple[tuple[str, tuple[str | Ref, ...]], ...]  # encoded key, value pieces
    headers: tuple[tuple[str, tuple[str | Ref, ...]], ...]
    json: Any  # compiled JSON template, or NO_BODY

    def bind(self, params: Any) -> RestRequest:
        """Validate the run-time values strictly, then build the request."""
        return self.bind_values(self.parameters.validate(params))

    def bind_values(self, values: Mapping[str, Any]) -> RestRequest:
        types = self.parameters.by_name
        path = self.static_path
        if path is None:
            path = "/" + "/".join(_bind_segment(s, values, types) for s in self.segments)
        query: list[tuple[str, str]] = []
        for key, pieces in self.query:
            if len(pieces) == 1 and isinstance(pieces[0], Ref):
                name = pieces[0].name
                value = values[name]
                if value is None:
                    continue  # an absent optional value drops the query item
                if types[name].is_array:
                    query.extend((key, _encode(_text(v, types[name]))) for v in value)
                    continue
                query.append((key, _encode(_text(value, types[name]))))
            else:
                query.append((key, _encode(_join(pieces, values, types))))
        headers: list[tuple[str, str]] = []
        for header, pieces in self.headers:
            if len(pieces) == 1 and isinstance(pieces[0], Ref) and values[pieces[0].name] is None:
                continue  # an absent optional value drops the header
            text = _join(pieces, values, types, "header")
            if len(text) > MAX_HEADER_LENGTH:
                # Named by its parameters: the header's name is part of the query's body.
                names = ", ".join(f"'{p.name}'" for p in pieces if isinstance(p, Ref))
                raise InvalidParameter(None, f"parameter(s) {names} would make a header value "
                                             f"longer than {MAX_HEADER_LENGTH} characters")
            headers.append((header, text))
        body = self.json if self.json is NO_BODY else _bind_json(self.json, values, types)
        return RestRequest(self.method, path, tuple(query), tuple(headers), body)


# --- binding values -----------------------------------------------------------------------------


def _text(value: Any, parameter: Parameter) -> str:
    """The text form of a scalar (or json) value, for paths, query strings and headers."""
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _encode(text: str) -> str:
    """Percent-encode everything outside the unreserved set (so no '/', '?', '#', '&', '=')."""
    return quote(text, safe="", encoding="utf-8", errors="strict")


def _join(pieces: tuple[str | Ref, ...], values: Mapping[str, Any],
          types: Mapping[str, Parameter], place: Literal["text", "header", "path"] = "text"
          ) -> str:
    """The pieces with each value's text in its place. In a header, a value that could end the
    header is refused; in a path segment, one that could be a path step, and the text is
    percent-encoded."""
    out: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        value = values[piece.name]
        if value is None:
            raise InvalidParameter(piece.name, "has no value, but the path needs one"
                                   if place == "path" else
                                   "has no value, but it is part of a larger text")
        text = _text(value, types[piece.name])
        if place == "header" and _HEADER_BAD_RE.search(text):
            raise InvalidParameter(piece.name, "contains a line break or NUL character, which "
                                               "a header value cannot hold")
        if place == "header" and _HEADER_CTL_RE.search(text):
            raise InvalidParameter(piece.name, "contains a control character, which a header "
                                               "value cannot hold")
        if place == "path":
            if _DOT_SEGMENT_RE.search(text):
                # Encoded, this is harmless; refused anyway for servers that decode %2F or %5C
                # before they route.
                raise InvalidParameter(piece.name, "contains a '.' or '..' path step")
            text = _encode(text)
        out.append(text)
    return "".join(out)


def _bind_segment(pieces: tuple[str | Ref, ...], values: Mapping[str, Any],
                  types: Mapping[str, Parameter]) -> str:
    if len(pieces) == 1 and isinstance(pieces[0], str):
        return pieces[0]
    segment = _join(pieces, values, types, "path")
    if segment in ("", ".", ".."):
        names = ", ".join(f"'{p.name}'" for p in pieces if isinstance(p, Ref))
        what = "an empty path segment" if not segment else f"a '{segment}' path segment"
        raise InvalidParameter(None, f"parameter(s) {names} would make {what}")
    return segment


def _bind_json(node: Any, values: Mapping[str, Any], types: Mapping[str, Parameter]) -> Any:
    kind = type(node)
    if kind is _Whole:
        value = values[node.name]
        if value is None:
            return None
        return _json_value(value, types[node.name])
    if kind is _Embedded:
        return _join(node.pieces, values, types)
    if kind is _Node:
        if node.is_object:
            return {key: _bind_json(child, values, types) for key, child in node.items}
        return [_bind_json(child, values, types) for _, child in node.items]
    return node


def _json_value(value: Any, parameter: Parameter) -> Any:
    base = parameter.base
    if base == "date" or base == "datetime":
        if parameter.is_array:
            return [v.isoformat() for v in value]
        return value.isoformat()
    return value


# --- compiling ----------------------------------------------------------------------------------


def compile_rest(body: Any, parameters: ParameterSet) -> RestTemplate:
    """Check a REST body at save time and compile it; InvalidQuery names the place and problem."""
    if not isinstance(body, dict):
        raise InvalidQuery("the body of a REST query must be an object with method, path, "
                           "query, headers and json")
    unknown = sorted(str(k)[:40] for k in body if k not in BODY_KEYS)
    if unknown:
        raise InvalidQuery(f"unknown key(s) in the body: {', '.join(unknown)}",
                           suggestion=f"allowed: {', '.join(sorted(BODY_KEYS))}")
    used: set[str] = set()
    method = _method(body.get("method", "GET"))
    segments = _path(body.get("path"), parameters, used)
    static_path = None
    if not any(isinstance(p, Ref) for s in segments for p in s):
        static_path = "/" + "/".join("".join(p for p in s if isinstance(p, str)) for s in segments)
    query = _query(body.get("query"), parameters, used)
    headers = _headers(body.get("headers"), parameters, used)
    json_body: Any = NO_BODY
    if "json" in body:
        if method in ("GET", "HEAD"):
            raise InvalidQuery(f"a {method} request cannot have a JSON body",
                               suggestion="use POST, PUT or PATCH, or move the values to query")
        json_body = _compile_json(body["json"], parameters, used, "json", 0)
    used_check(parameters, used)
    return RestTemplate(parameters=parameters, method=method, segments=segments,
                        static_path=static_path, query=query, headers=headers, json=json_body)


def _method(method: Any) -> str:
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise InvalidQuery("method must be one of " + ", ".join(METHODS))
    return method.upper()


def _path(path: Any, parameters: ParameterSet, used: set[str]
          ) -> tuple[tuple[str | Ref, ...], ...]:
    if not isinstance(path, str) or not path:
        raise InvalidQuery("path is required: a string starting with /",
                           suggestion='e.g. "/v1/orders/{{ id }}"')
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidQuery(f"path is longer than {MAX_PATH_LENGTH} characters")
    if _SCHEME_RE.match(path) or "://" in path:
        raise InvalidQuery("path must not contain a scheme or host",
                           suggestion="the scheme, host and port come from the datasource; "
                                      "write only the path, e.g. /v1/orders")
    if path.startswith("//"):
        raise InvalidQuery("path must not start with //",
                           suggestion="// would name another host; write a single /")
    if not path.startswith("/"):
        raise InvalidQuery("path must start with /")
    pieces = split_bindings(path, "path", parameters)
    # Literal text is checked here once; values are percent-encoded at run time.
    for piece in pieces:
        if isinstance(piece, str):
            _check_path_literal(piece)
            continue
        parameter = parameters[piece.name]
        if parameter.is_array:
            raise InvalidQuery(f"path: array parameter '{piece.name}' cannot be bound in a path",
                               suggestion="bind it in query, where it repeats the key",
                               parameter=piece.name)
        used.add(piece.name)
    segments: list[list[str | Ref]] = [[]]
    for piece in pieces:
        if isinstance(piece, Ref):
            segments[-1].append(piece)
            continue
        parts = piece.split("/")
        for index, part in enumerate(parts):
            if index:
                segments.append([])
            if part:
                segments[-1].append(part)
    segments = segments[1:]  # the path starts with "/": the first segment is empty
    for index, segment in enumerate(segments):
        literal = all(isinstance(p, str) for p in segment)
        text = "".join(p for p in segment if isinstance(p, str))
        if literal and text in (".", ".."):
            raise InvalidQuery("path: '.' and '..' segments are not allowed",
                               suggestion="write the path the server should see")
        if literal and not text and index != len(segments) - 1:
            raise InvalidQuery("path: empty segment (//) is not allowed")
    return tuple(tuple(s) for s in segments)


def _check_path_literal(text: str) -> None:
    if not _PATH_LITERAL_RE.fullmatch(text):
        raise InvalidQuery(
            "path: only unreserved characters, sub-delimiters, ':', '@', '/' and %XX escapes "
            "may be written literally (no space, '?', '#', '\\' or control characters)",
            suggestion="put query items in \"query\"; percent-encode anything else")
    if _ENCODED_DANGER_RE.search(text):
        raise InvalidQuery("path: %2E, %2F, %5C, %3F, %23 and %00 are not allowed",
                           suggestion="write the path the server should see")


def _query(query: Any, parameters: ParameterSet, used: set[str]
           ) -> tuple[tuple[str, tuple[str | Ref, ...]], ...]:
    items = _object(query, 'query must be an object of names to values, e.g. {"q": "{{ q }}"}',
                    MAX_QUERY_ITEMS, f"query has more than {MAX_QUERY_ITEMS} items")
    out = []
    for key, value in items.items():
        if not key or "{" in key or "}" in key:
            raise InvalidQuery("query: names must be non-empty literal text (no bindings)",
                               suggestion="bind values, not names")
        where = f"query '{key[:40]}'"
        if not isinstance(value, str):
            raise InvalidQuery(f"{where}: the value must be a string template",
                               suggestion='e.g. "{{ limit }}" or "10"')
        out.append((_encode(key), _value_pieces(value, where, parameters, used, header=False)))
    return tuple(out)


def _headers(headers: Any, parameters: ParameterSet, used: set[str]
             ) -> tuple[tuple[str, tuple[str | Ref, ...]], ...]:
    items = _object(headers, "headers must be an object of names to values", MAX_HEADERS,
                    f"more than {MAX_HEADERS} headers")
    out = []
    for name, value in items.items():
        if not _TOKEN_RE.fullmatch(name) or len(name) > 256:
            raise InvalidQuery("headers: a header name must be an HTTP token (letters, digits "
                               "and !#$%&'*+-.^_`|~), without bindings")
        if name.lower() in FORBIDDEN_HEADERS:
            raise InvalidQuery(f"headers: '{name}' is set by the appliance, not by a query",
                               suggestion="remove it")
        where = f"header '{name}'"
        if not isinstance(value, str):
            raise InvalidQuery(f"{where}: the value must be a string template")
        if _HEADER_BAD_RE.search(value) or _HEADER_CTL_RE.search(value):
            raise InvalidQuery(f"{where}: contains a line break or control character")
        out.append((name, _value_pieces(value, where, parameters, used, header=True)))
    return tuple(out)


def _object(value: Any, not_object: str, most: int, too_many: str) -> dict[str, Any]:
    """`value` as an object of at most `most` names (none when absent), else the problem."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidQuery(not_object)
    if len(value) > most:
        raise InvalidQuery(too_many)
    return value


def _value_pieces(value: str, where: str, parameters: ParameterSet, used: set[str], *,
                  header: bool) -> tuple[str | Ref, ...]:
    """A query item's or a header's value template as pieces, its bindings counted as used. An
    array parameter is a query item's whole value (repeated per element), never a header's."""
    pieces = split_bindings(value, where, parameters)
    for piece in pieces:
        if isinstance(piece, Ref):
            if parameters[piece.name].is_array and header:
                raise InvalidQuery(f"{where}: array parameter '{piece.name}' cannot be "
                                   "bound in a header", parameter=piece.name)
            if parameters[piece.name].is_array and len(pieces) != 1:
                raise InvalidQuery(f"{where}: an array parameter must be the whole value",
                                   suggestion=f'write "{{{{ {piece.name} }}}}"; each element '
                                              "becomes its own item",
                                   parameter=piece.name)
            used.add(piece.name)
    return pieces


def _compile_json(node: Any, parameters: ParameterSet, used: set[str], where: str,
                  depth: int) -> Any:
    if depth > 64:
        raise InvalidQuery(f"{where}: nested too deeply")
    if isinstance(node, str):
        pieces = split_bindings(node, where, parameters)
        refs = [p for p in pieces if isinstance(p, Ref)]
        if not refs:
            return node
        used.update(r.name for r in refs)
        if len(pieces) == 1:
            return _Whole(refs[0].name)
        for ref in refs:
            if parameters[ref.name].is_array:
                raise InvalidQuery(f"{where}: array parameter '{ref.name}' inside a larger "
                                   "string", suggestion=f'make the whole string '
                                   f'"{{{{ {ref.name} }}}}" to send a JSON array',
                                   parameter=ref.name)
        return _Embedded(pieces)
    if isinstance(node, dict):
        items = []
        dynamic = False
        for key, value in node.items():
            if "{{" in key or "}}" in key:
                raise InvalidQuery(f"{where}: a binding in an object key",
                                   suggestion="bind values, never keys")
            child = _compile_json(value, parameters, used, f"{where}.{key[:40]}", depth + 1)
            dynamic = dynamic or isinstance(child, _Whole | _Embedded | _Node)
            items.append((key, child))
        return _Node(tuple(items), True) if dynamic else node
    if isinstance(node, list):
        items = []
        dynamic = False
        for index, value in enumerate(node):
            child = _compile_json(value, parameters, used, f"{where}[{index}]", depth + 1)
            dynamic = dynamic or isinstance(child, _Whole | _Embedded | _Node)
            items.append((index, child))
        return _Node(tuple(items), False) if dynamic else node
    if node is None or isinstance(node, bool | int | float):
        return node
    raise InvalidQuery(f"{where}: not a JSON value")
