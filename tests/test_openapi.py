"""The OpenAPI description covers the public interface and every API route, with its role."""

from __future__ import annotations

import json

from .conftest import ServerProcess, http_request, tls_connection

PUBLIC_INTERFACE = [
    ("post", "/api/v1/session"), ("delete", "/api/v1/session"),
    ("post", "/api/v1/datasources"), ("get", "/api/v1/datasources/{id}"),
    ("patch", "/api/v1/datasources/{id}"), ("delete", "/api/v1/datasources/{id}"),
    ("post", "/api/v1/datasources/{id}/test"),
    ("post", "/api/v1/queries"), ("get", "/api/v1/queries/{id}"),
    ("patch", "/api/v1/queries/{id}"), ("delete", "/api/v1/queries/{id}"),
    ("post", "/api/v1/queries/{id}/run"),
    ("get", "/api/v1/egress"), ("put", "/api/v1/egress"), ("post", "/api/v1/egress/probe"),
    ("get", "/api/v1/tls"), ("post", "/api/v1/tls/renew"),
    ("get", "/api/v1/audit"), ("get", "/api/v1/audit/verify"), ("get", "/api/v1/audit/status"),
    ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"),
]


def test_openapi_lists_the_public_interface_with_roles(shared_dev_server: ServerProcess) -> None:
    with tls_connection("127.0.0.1", shared_dev_server.port, shared_dev_server.client_context()) as sock:
        status, _, body = http_request(sock, "GET", "/api/v1/openapi.json", "127.0.0.1")
    assert status == 200
    spec = json.loads(body)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    missing = [f"{m.upper()} {p}" for m, p in PUBLIC_INTERFACE if m not in paths.get(p, {})]
    assert missing == []
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation["x-required-role"] in ("public", "viewer", "developer", "admin"), \
                f"{method} {path}"
    assert paths["/api/v1/queries/{id}/run"]["post"]["x-required-role"] == "viewer"
    assert paths["/api/v1/egress"]["put"]["x-required-role"] == "admin"
    assert "requestBody" in paths["/api/v1/datasources"]["post"]
    # The descriptions the console draws from say what they answer.
    ok = paths["/api/v1/roles"]["get"]["responses"]["2XX"]["content"]["application/json"]
    assert "lowest first" in ok["schema"]["properties"]["roles"]["description"]
    ok = paths["/api/v1/kinds"]["get"]["responses"]["2XX"]["content"]["application/json"]
    kind = ok["schema"]["properties"]["kinds"]["items"]
    assert {"where", "body"} <= set(kind["required"])
    assert kind["properties"]["body"]["enum"] == ["sql", "json"]


def test_the_error_schema_documents_field_line_and_column(shared_dev_server: ServerProcess) -> None:
    with tls_connection("127.0.0.1", shared_dev_server.port, shared_dev_server.client_context()) as sock:
        status, _, body = http_request(sock, "GET", "/api/v1/openapi.json", "127.0.0.1")
    assert status == 200
    spec = json.loads(body)
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message"]  # the others appear only when they apply
    members = error["properties"]
    assert members["line"]["type"] == members["column"]["type"] == "integer"
    assert members["line"]["minimum"] == members["column"]["minimum"] == 1
    scheme = members["field"]["description"]
    for name in ("config.<key>", "secrets.<key>", "body", "parameters[<i>].<key>",
                 "param.<name>", "params", "never a value"):
        assert name in scheme, name
    assert "field" in spec["info"]["description"]
    # Every operation's error response is this schema.
    run = spec["paths"]["/api/v1/queries/{id}/run"]["post"]
    schema = run["responses"]["default"]["content"]["application/json"]["schema"]
    assert schema["properties"]["error"]["properties"]["field"] == members["field"]
