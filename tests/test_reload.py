"""SIGHUP on a real `appliance serve`: live settings (egress policy, log level, TLS files) apply
without a restart and without dropping an open connection; settings that need a restart are named
in the log; a bad file changes nothing, nor does one whose egress policy would deny the PostgreSQL
store's own destination."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from .conftest import ServerProcess, StoreDatabase, clean_env, http_request, tls_connection
from .support.certificates import SigningCA, fingerprint, peer_fingerprint
from .support.json_api import api, egress_probe
from .support.served import init_with_token, serve


def hup_and_wait(server: ServerProcess, marker: str, count: int = 1, timeout: float = 10) -> str:
    """Send SIGHUP and wait until `marker` has appeared `count` times in the server's log."""
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.stderr()
        if text.count(marker) >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{marker!r} not logged after SIGHUP: {server.stderr()[-2000:]}")


def log_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_sighup_applies_egress_and_log_level_and_names_what_needs_a_restart(
        tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('[log]\nformat = "json"\nlevel = "info"\n')
    token = init_with_token(tmp_path, config)
    server = serve(tmp_path, config)
    try:
        with tls_connection("127.0.0.1", server.port, server.client_context(),
                            server_hostname="localhost") as kept:
            status, _, _ = http_request(kept, "GET", "/healthz", "localhost")
            assert status == 200
            assert egress_probe(server, token, "10.77.0.1", 5432)["allowed"] is True

            config.write_text('[log]\nformat = "json"\nlevel = "warning"\n'
                              '[egress]\ndeny = ["10.77.0.0/16"]\n'
                              '[server]\nmax_body_bytes = 2048\n')
            text = hup_and_wait(server, "settings reloaded")

            reloaded = [e for e in log_lines(text) if e.get("message") == "settings reloaded"]
            assert sorted(reloaded[-1]["applied"]) == ["egress.deny", "log.level"]
            restart = [e for e in log_lines(text)
                       if e.get("message") == "settings changed that need a restart to apply"]
            assert restart and restart[-1]["settings"] == ["server.max_body_bytes"]

            denied = egress_probe(server, token, "10.77.0.1", 5432)
            assert denied["allowed"] is False and denied["rule"] == "deny: 10.77.0.0/16"
            # The connection opened before the reload still serves requests.
            status, _, _ = http_request(kept, "GET", "/healthz", "localhost")
            assert status == 200

        # Level warning: the allowed probe's info line is no longer written.
        before = server.stderr().count("egress allowed")
        assert egress_probe(server, token, "10.78.0.1", 5432)["allowed"] is True
        time.sleep(0.2)
        assert server.stderr().count("egress allowed") == before
        # The stored (API) value still wins over the reloaded file, field by field.
        status, view = api(server, "PUT", "/api/v1/egress", token, {"deny": []})
        assert status == 200
        config.write_text('[log]\nformat = "json"\nlevel = "warning"\n'
                          '[egress]\ndeny = ["10.79.0.0/16"]\nmode = "strict"\n')
        server.proc.send_signal(signal.SIGHUP)  # at level warning the reload is not logged
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, view = api(server, "GET", "/api/v1/egress", token)
            if view["mode"] == "strict":
                break
            time.sleep(0.05)
        assert view["deny"] == [] and view["mode"] == "strict"
    finally:
        assert server.stop() == 0


def test_a_bad_file_on_sighup_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('[egress]\ndeny = ["10.80.0.0/16"]\n')
    token = init_with_token(tmp_path, config)
    server = serve(tmp_path, config)
    try:
        for bad in ('[egress]\ndeny = ["10.0.0.0/33"]\n', "[egress\n", '[nope]\nx = 1\n'):
            config.write_text(bad)
            hup_and_wait(server, "reload refused", count=1 + [
                '[egress]\ndeny = ["10.0.0.0/33"]\n', "[egress\n", '[nope]\nx = 1\n'].index(bad))
            assert egress_probe(server, token, "10.80.0.1", 80)["rule"] == "deny: 10.80.0.0/16"
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0


def test_sighup_that_would_deny_the_store_is_refused_and_logged(store_database: StoreDatabase,
                                                                tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('[log]\nformat = "json"\nlevel = "info"\n')
    env = clean_env(**store_database.env())
    token = init_with_token(tmp_path, config, env=env)
    server = serve(tmp_path, config, env=env)
    store_at = f"127.0.0.1:{store_database.server.port}"
    try:
        # strict: only what `allow` names, and the store is not in it.
        config.write_text('[log]\nformat = "json"\nlevel = "info"\n[egress]\nmode = "strict"\n')
        text = hup_and_wait(server, "reload: egress settings refused")
        refused = [e for e in log_lines(text)
                   if e.get("message") == "reload: egress settings refused; the old policy stays"]
        assert refused[-1]["code"] == "egress_denies_store", refused
        assert refused[-1]["error"].startswith(
            f"the reloaded settings would deny the store's own destination {store_at} (rule "
            "'strict: not in allow list')"), refused
        reloaded = [e for e in log_lines(text) if e.get("message") == "settings reloaded"]
        assert reloaded and reloaded[-1]["applied"] == []
        # The old policy stays: not strict, and the store is written to as before.
        assert egress_probe(server, token, "10.81.0.1", 5432)["rule"] == "default: allowed"
        status, view = api(server, "PUT", "/api/v1/egress", token, {"deny": ["10.82.0.0/16"]})
        assert status == 200 and view["mode"] == "default", view

        # Strict with the store allowed is applied.
        config.write_text('[log]\nformat = "json"\nlevel = "info"\n[egress]\nmode = "strict"\n'
                          f'allow = ["{store_at}"]\n')
        text = hup_and_wait(server, "settings reloaded", count=2)
        reloaded = [e for e in log_lines(text) if e.get("message") == "settings reloaded"]
        assert sorted(reloaded[-1]["applied"]) == ["egress.allow", "egress.mode"]
        assert egress_probe(server, token, "10.81.0.1", 5432)["allowed"] is False
        status, view = api(server, "GET", "/api/v1/egress", token)
        assert status == 200 and view["mode"] == "strict"
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


def test_sighup_installs_new_tls_files_and_keeps_open_connections(tmp_path: Path) -> None:
    ca = SigningCA()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem())
    files = {}
    for name in ("a", "b"):
        cert, key = ca.leaf(f"cert-{name}")
        files[name] = (tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem")
        files[name][0].write_bytes(cert)
        files[name][1].write_bytes(key)
    config = tmp_path / "appliance.toml"

    def point_at(name: str) -> None:
        cert, key = files[name]
        config.write_text(f'[tls]\nmode = "files"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
                          'check_interval = 3600\n')

    point_at("a")
    env = clean_env(APPLIANCE_TLS_MODE="files")
    init_with_token(tmp_path, config, env=env)
    server = serve(tmp_path, config, env=env)
    server.ca_file = ca_file
    try:
        ctx = server.client_context()
        with tls_connection("127.0.0.1", server.port, ctx, server_hostname="localhost") as kept:
            assert peer_fingerprint(kept) == fingerprint(files["a"][0].read_bytes())
            point_at("b")
            text = hup_and_wait(server, "settings reloaded")
            assert "tls.cert_file" in text and "need a restart" not in text
            with tls_connection("127.0.0.1", server.port, ctx, server_hostname="localhost") as new:
                assert peer_fingerprint(new) == fingerprint(files["b"][0].read_bytes())
            status, _, _ = http_request(kept, "GET", "/healthz", "localhost")
            assert status == 200
            assert peer_fingerprint(kept) == fingerprint(files["a"][0].read_bytes())
    finally:
        assert server.stop() == 0
