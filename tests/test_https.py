"""The HTTPS listener of `serve --dev`: verified handshake, TLS policy, JSON errors, log hygiene."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest

from appliance.http.json_body import read_object

from .conftest import ServerProcess, http_request, start_server, tls_connection

# The TLS 1.0/1.1 clients below are deprecated on purpose: they probe what the server refuses.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")


# Every test here but the log test shares one `serve --dev` (`shared_dev_server`): they only send
# requests and read the answers.


def get(server: ServerProcess, path: str, method: str = "GET", body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with tls_connection("127.0.0.1", server.port, server.client_context()) as sock:
        return http_request(sock, method, path, "127.0.0.1", headers, body)


def test_handshake_verifies_against_the_local_ca(shared_dev_server: ServerProcess) -> None:
    ctx = shared_dev_server.client_context()  # CERT_REQUIRED + hostname check against the local CA only
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    for name in ("127.0.0.1", "localhost"):
        with tls_connection("127.0.0.1", shared_dev_server.port, ctx, server_hostname=name) as sock:
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            status, _, body = http_request(sock, "GET", "/healthz", name)
            assert status == 200 and json.loads(body) == {"status": "ok"}


def test_handshake_fails_without_the_local_ca_or_for_another_name(
    shared_dev_server: ServerProcess,
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        with tls_connection("127.0.0.1", shared_dev_server.port, ssl.create_default_context()):
            pass
    with pytest.raises(ssl.SSLCertVerificationError):
        with tls_connection("127.0.0.1", shared_dev_server.port, shared_dev_server.client_context(),
                            server_hostname="example.com"):
            pass


def test_ca_path_and_fingerprint_are_printed(shared_dev_server: ServerProcess) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    out = "".join(shared_dev_server.stdout_lines)
    assert shared_dev_server.ca_file is not None and shared_dev_server.ca_file.exists()
    cert = x509.load_pem_x509_certificate(shared_dev_server.ca_file.read_bytes())
    expected = cert.fingerprint(hashes.SHA256()).hex().upper()
    printed = out.split("fingerprint: ")[1].split()[0].replace(":", "")
    assert printed == expected


def _old_protocol_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(shared_dev_server: ServerProcess, version: ssl.TLSVersion) -> None:
    ctx = _old_protocol_context(version)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        with tls_connection("127.0.0.1", shared_dev_server.port, ctx):
            pass


def test_the_old_protocol_client_itself_works(tmp_path: Path) -> None:
    """The refusal above must come from the server, not from a client that cannot speak TLS 1.0."""
    import threading

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.set_ciphers("ALL:@SECLEVEL=0")
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    from appliance.tls import local_ca

    state = tmp_path / "s"
    state.mkdir(mode=0o700)
    leaf = local_ca.ensure_leaf(state, ("127.0.0.1",))
    server_ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, str] = {}

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result["version"] = tls.version() or ""
        except ssl.SSLError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        with tls_connection("127.0.0.1", port, _old_protocol_context(ssl.TLSVersion.TLSv1_1)) as s:
            assert s.version() == "TLSv1.1"
    except ssl.SSLError:
        pytest.skip("this OpenSSL build cannot speak TLS 1.1 at all")
    finally:
        thread.join(5)
        listener.close()


def test_cbc_suites_are_refused_and_aead_accepted(shared_dev_server: ServerProcess) -> None:
    cbc = _old_protocol_context(ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        with tls_connection("127.0.0.1", shared_dev_server.port, cbc):
            pass
    aead = _old_protocol_context(ssl.TLSVersion.TLSv1_2)
    aead.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with tls_connection("127.0.0.1", shared_dev_server.port, aead) as sock:
        cipher = sock.cipher()
        assert cipher is not None and "GCM" in cipher[0]


def test_unknown_path_and_method_give_json_errors(shared_dev_server: ServerProcess) -> None:
    status, headers, body = get(shared_dev_server, "/no/such/path")
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "not_found"
    status, _, body = get(shared_dev_server, "/healthz", method="DELETE")
    assert status == 405
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_security_headers_and_request_id(shared_dev_server: ServerProcess) -> None:
    status, headers, _ = get(shared_dev_server, "/healthz")
    assert status == 200
    assert len(headers["x-request-id"]) == 16
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["server"] == "appliance"  # no version banner
    assert "strict-transport-security" not in headers  # --dev: no HSTS
    status, headers, _ = get(shared_dev_server, "/api/v1/queries")  # an error has them too
    assert status == 401
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert len(headers["x-request-id"]) == 16


def test_hsts_outside_dev(tmp_path: Path) -> None:
    from .support.cli import run_verb

    state = tmp_path / "state"
    assert run_verb("init", "--state-dir", str(state)).returncode == 0
    server = start_server(["serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
                          cwd=tmp_path)
    try:
        status, headers, _ = get(server, "/healthz")
        assert status == 200
        assert headers["strict-transport-security"].startswith("max-age=")
    finally:
        server.stop()


def test_readyz_reports_store_and_tls(shared_dev_server: ServerProcess) -> None:
    status, _, body = get(shared_dev_server, "/readyz")
    assert status == 200
    assert json.loads(body)["checks"] == {"store": "ok", "tls": "ok"}


def test_oversized_body_is_413_and_the_process_survives(shared_dev_server: ServerProcess) -> None:
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    status, _, body = get(shared_dev_server, "/api/v1/session", method="POST", body=big,
                          headers={"Content-Type": "application/json"})
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert get(shared_dev_server, "/healthz")[0] == 200


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"a": NaN}', b"", b"[" * 100_000,
     '{"username": "a"}'.encode("utf-16")],  # JSON is UTF-8 (RFC 8259)
)
def test_malformed_json_is_400(shared_dev_server: ServerProcess, body: bytes) -> None:
    status, _, raw = get(shared_dev_server, "/api/v1/session", method="POST", body=body,
                         headers={"Content-Type": "application/json"})
    assert status == 400, raw
    assert json.loads(raw)["error"]["code"] == "malformed_json"
    assert get(shared_dev_server, "/healthz")[0] == 200


def test_wrong_content_type_is_415(shared_dev_server: ServerProcess) -> None:
    status, _, raw = get(shared_dev_server, "/api/v1/session", method="POST", body=b"username=a",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    assert json.loads(raw)["error"]["code"] == "unsupported_media_type"


def test_logs_never_contain_credentials_cookies_or_query_values(dev_server: ServerProcess) -> None:
    canaries = {
        "auth": "Bearer tok-canary-7f3a9c",
        "cookie": "appliance_session=cookie-canary-51be0d",
        "query": "qs-canary-a1b2c3",
        "body": "body-canary-9d8e7f",
    }
    get(dev_server, f"/healthz?secret={canaries['query']}", headers={
        "Authorization": canaries["auth"], "Cookie": canaries["cookie"],
    })
    get(dev_server, f"/nope?token={canaries['query']}",
        headers={"Authorization": canaries["auth"]})
    get(dev_server, "/api/v1/session", method="POST",
        body=json.dumps({"username": "x", "password": canaries["body"]}).encode(),
        headers={"Content-Type": "application/json", "Cookie": canaries["cookie"],
                 "Authorization": canaries["auth"]})
    dev_server.stop()
    log = dev_server.stderr()
    assert "route=/healthz" in log  # the requests were logged...
    for value in canaries.values():  # ...without any of these
        assert value.split("=")[-1].split()[-1] not in log


async def test_json_reader_rejects_deep_nesting_without_crashing() -> None:
    """read_object is the one JSON entry point; deep nesting must be a 400, not a RecursionError."""
    from aiohttp.test_utils import make_mocked_request

    from appliance.errors import BadRequest

    request = make_mocked_request("POST", "/", headers={"Content-Type": "application/json"})

    async def read() -> bytes:
        return b"[" * 200_000 + b"]" * 200_000

    request.read = read  # type: ignore[method-assign]  # a read that fails, on purpose
    with pytest.raises(BadRequest):
        await read_object(request)


@pytest.mark.parametrize("path", ["/api/v1/queries", "/console"])
@pytest.mark.parametrize("dev", [True, False])
def test_security_headers_are_the_same_whatever_the_handler_set(path: str, dev: bool,
                                                                tmp_path: Path) -> None:
    """`secure` adds the headers in one step to a response that has only its Content-Type, and
    one by one otherwise (keeping a header the handler set): the result is the same."""
    import dataclasses

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from appliance.http import middleware
    from appliance.http.app_keys import REQUEST_ID, SETTINGS
    from tests.support.app import make_settings

    app = web.Application()
    app[SETTINGS] = dataclasses.replace(make_settings(tmp_path), dev=dev)
    request = make_mocked_request("GET", path, app=app)
    request[REQUEST_ID] = "0123456789abcdef"
    plain = web.Response(text="x")  # Content-Type only: the one-step path
    middleware.secure(request, plain)
    custom = web.Response(text="x", headers={"X-Frame-Options": "SAMEORIGIN"})
    middleware.secure(request, custom)
    assert len(plain.headers) == len(set(plain.headers)) == len(custom.headers)
    for name, value in plain.headers.items():
        expected = "SAMEORIGIN" if name == "X-Frame-Options" else value
        assert custom.headers[name] == expected, name
    assert plain.headers["X-Request-Id"] == "0123456789abcdef"
    assert ("Cache-Control" in plain.headers) == path.startswith("/api/")
    assert ("Strict-Transport-Security" in plain.headers) == (not dev)
    assert plain.headers["X-Content-Type-Options"] == "nosniff"
