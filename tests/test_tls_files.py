"""`tls.mode = "files"`: new certificates are picked up without restart; open connections live on."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

from .conftest import clean_env, http_request, run_cli, start_server, tls_connection
from .support.certificates import SigningCA, fingerprint, peer_fingerprint
from .support.cli import run_verb


def replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_files_mode_reloads_without_dropping_open_connections(tmp_path: Path) -> None:
    ca = SigningCA()
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    cert_a, key_a = ca.leaf("first")
    cert_b, key_b = ca.leaf("second")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert_a)
    key_file.write_bytes(key_a)
    state = tmp_path / "state"
    assert run_verb("init", "--state-dir", str(state)).returncode == 0
    env = clean_env(APPLIANCE_TLS_MODE="files", APPLIANCE_TLS_CERT_FILE=str(cert_file),
                    APPLIANCE_TLS_KEY_FILE=str(key_file), APPLIANCE_TLS_CHECK_INTERVAL="0.3",
                    APPLIANCE_LOG_FORMAT="text")
    server = start_server(["serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
                          cwd=tmp_path, env=env)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    try:
        with tls_connection("127.0.0.1", server.port, ctx) as kept:
            assert peer_fingerprint(kept) == fingerprint(cert_a)
            assert http_request(kept, "GET", "/healthz", "127.0.0.1")[0] == 200

            # A half-written update (new key, old cert) is refused: A keeps being served.
            replace(key_file, key_b)
            time.sleep(1.0)
            with tls_connection("127.0.0.1", server.port, ctx) as fresh:
                assert peer_fingerprint(fresh) == fingerprint(cert_a)

            replace(cert_file, cert_b)
            deadline = time.monotonic() + 10
            seen = None
            while time.monotonic() < deadline:
                with tls_connection("127.0.0.1", server.port, ctx) as fresh:
                    seen = peer_fingerprint(fresh)
                if seen == fingerprint(cert_b):
                    break
                time.sleep(0.2)
            assert seen == fingerprint(cert_b), "the new certificate was never served"

            # The connection opened before the swap still works, on its original certificate.
            assert peer_fingerprint(kept) == fingerprint(cert_a)
            for _ in range(3):
                assert http_request(kept, "GET", "/healthz", "127.0.0.1")[0] == 200
    finally:
        server.stop()
    log = server.stderr()
    assert "does not match" in log  # the refused half-update was reported
    assert key_a.decode().splitlines()[1] not in log and key_b.decode().splitlines()[1] not in log


def test_files_mode_with_bad_files_refuses_to_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run_verb("init", "--state-dir", str(state)).returncode == 0
    ca = SigningCA()
    cert, _ = ca.leaf("x")
    _, other_key = ca.leaf("y")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(other_key)
    (tmp_path / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    cases = [
        (tmp_path / "missing.pem", tmp_path / "key.pem", "cannot read"),
        (tmp_path / "garbage.pem", tmp_path / "key.pem", "no valid PEM certificate"),
        (tmp_path / "cert.pem", tmp_path / "key.pem", "does not match"),
    ]
    for cert_file, key_file, message in cases:
        env = clean_env(APPLIANCE_TLS_MODE="files", APPLIANCE_TLS_CERT_FILE=str(cert_file),
                        APPLIANCE_TLS_KEY_FILE=str(key_file))
        result = run_cli("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", env=env)
        assert result.returncode != 0
        assert message in result.stderr, result.stderr
