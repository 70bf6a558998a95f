"""JSON requests to a real `appliance serve` subprocess (tests.conftest.ServerProcess) over TLS,
one connection per request, trusting only the server's local CA (no tests here).

Owns `request` (and `api`, its short form with a bearer token; `egress_probe`, the egress
probe's answer): the token or session cookie, the JSON body, and the answer decoded (JSON, else
text such as /metrics, else None when empty). Never retries, never follows a redirect, and never
hides a status: the test asserts on it (`egress_probe` asserts its 200 itself).
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import ServerProcess, http_request, tls_connection


def request(server: ServerProcess, method: str, path: str, *, token: str | None = None,
            body: Any = None, cookie: str | None = None,
            host: str = "localhost") -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-case names) and decoded body of one request; `host` is both the
    TLS server name and the Host header (the local CA's certificate names localhost and
    127.0.0.1)."""
    raw = b"" if body is None else json.dumps(body).encode()
    headers: dict[str, str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = cookie
    if body is not None:
        headers["Content-Type"] = "application/json"
    with tls_connection("127.0.0.1", server.port, server.client_context(),
                        server_hostname=host) as sock:
        status, headers_in, data = http_request(sock, method, path, host, headers, raw)
    if not data:
        return status, headers_in, None
    try:
        return status, headers_in, json.loads(data)
    except ValueError:
        return status, headers_in, data.decode()


def api(server: ServerProcess, method: str, path: str, token: str,
        body: Any = None) -> tuple[int, Any]:
    """`request` with a bearer token: the status and the decoded body."""
    status, _, data = request(server, method, path, token=token, body=body)
    return status, data


def egress_probe(server: ServerProcess, token: str, host: str, port: int) -> dict[str, Any]:
    """`POST /api/v1/egress/probe` for `host`:`port`: the decision (asserted to answer 200)."""
    status, body = api(server, "POST", "/api/v1/egress/probe", token, {"host": host, "port": port})
    assert status == 200, body
    return body
