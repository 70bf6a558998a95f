"""Plain HTTP sent to the HTTPS port gets `HTTP/1.0 400` and one line naming the https:// URL
instead of an empty reply; TLS on the same port is untouched, and a Host header is written into
the hint only when it is a plain name or address. Raw sockets against a real `appliance serve`."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from appliance.http.connection_limits import hint_for

from .conftest import ServerProcess, clean_env, http_request, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cwd = tmp_path_factory.mktemp("plain-http")
    found = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=cwd,
                         env=clean_env(APPLIANCE_METRICS_ALLOW="127.0.0.1"))
    try:
        yield found
    finally:
        found.stop()


def exchange(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    """Send `data` in plain text and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        return reply


def split(reply: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("ascii").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return status, headers, body


def test_a_plain_http_request_gets_the_hint(server: ServerProcess) -> None:
    port = server.port
    for request in (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
                    b"HEAD /healthz HTTP/1.0\r\n\r\n",
                    b"POST /api/v1/session HTTP/1.1\r\nhost: appliance.example\r\n"
                    b"Content-Length: 5\r\n\r\nhello"):
        status, headers, body = split(exchange(port, request))
        assert status == "HTTP/1.0 400 Bad Request"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert int(headers["content-length"]) == len(body)
        host = "appliance.example" if b"example" in request else "127.0.0.1"
        assert body == f"This is an HTTPS port: use https://{host}:{port}/\n".encode()


def test_curl_style_client_reads_the_hint_before_the_close(server: ServerProcess) -> None:
    """The client keeps its end open (as curl does): the reply still arrives whole."""
    reply = exchange(server.port, b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: x\r\n\r\n")
    assert reply.endswith(f"use https://localhost:{server.port}/\n".encode())


def test_tls_still_works_on_the_same_port(server: ServerProcess) -> None:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with server.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert http_request(tls, "GET", "/healthz", "127.0.0.1")[0] == 200
    # Counted by rule, like every connection the listener ends itself.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with server.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        _, _, body = http_request(tls, "GET", "/metrics", "127.0.0.1")
    assert 'appliance_listener_connections_dropped_total{rule="plain_http"}' in body.decode()
    line = next(x for x in body.decode().splitlines()
                if x.startswith('appliance_listener_connections_dropped_total{rule="plain_http"}'))
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_garbage_that_is_not_http_gets_no_hint(server: ServerProcess) -> None:
    """Neither TLS nor a request line: the handshake fails as before, with nothing written."""
    assert exchange(server.port, b"\x00\x01hello\r\n\r\n", close_write=True) == b""
    assert exchange(server.port, b"get / HTTP/1.1\r\n\r\n", close_write=True) == b""


@pytest.mark.parametrize(("head", "local", "url"), [
    (b"GET / HTTP/1.1\r\nHost: a.example:80\r\n\r\n", ("0.0.0.0", 8443),
     "https://a.example:8443/"),
    (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", ("::", 8443, 0, 0), "https://[::1]:8443/"),
    # A Host the hint would not write as it is: the listener's own address instead.
    (b"GET / HTTP/1.1\r\nHost: <script>x</script>\r\n\r\n", ("192.0.2.7", 443),
     "https://192.0.2.7:443/"),
    (b"GET / HTTP/1.1\r\nHost: evil.example/phish?\r\n\r\n", ("::", 443, 0, 0),
     "https://localhost:443/"),
    (b"GET / HTTP/1.1\r\nX-Host: a.example\r\n\r\n", ("2001:db8::5", 443, 0, 0),
     "https://[2001:db8::5]:443/"),
    # A Host header in the body is not the request's.
    (b"POST / HTTP/1.1\r\n\r\n\r\nHost: b.example\r\n", ("192.0.2.7", 443),
     "https://192.0.2.7:443/"),
])
def test_the_hint_names_a_safe_host(head: bytes, local: tuple[object, ...], url: str) -> None:
    reply = hint_for(head, local)
    assert reply.startswith(b"HTTP/1.0 400 ")
    assert reply.endswith(f"This is an HTTPS port: use {url}\n".encode())
    assert reply.count(b"\n") == 7  # status, four headers, the blank line, the one body line

