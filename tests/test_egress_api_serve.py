"""Egress through `appliance serve` itself (a subprocess): its own HTTPS and HTTP listeners are
denied by the probe, changes persist across a restart, and the stored change wins over the file
field by field until it is reset."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import clean_env
from .support.json_api import api, egress_probe
from .support.ports import free_port
from .support.served import init_with_token, serve


def test_serve_denies_its_own_https_and_http_listeners(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text("")
    token = init_with_token(tmp_path, config)
    http_port = free_port()
    server = serve(tmp_path, config, "--http-listen", f"127.0.0.1:{http_port}")
    try:
        for host in ("127.0.0.1", "localhost", "127.1", "[::ffff:127.0.0.1]", "0x7f000001"):
            for port in (server.port, http_port):
                found = egress_probe(server, token, host, port)
                assert found["allowed"] is False, (host, port, found)
                assert found["rule"] == "appliance's own listener", (host, port, found)
                assert found["connected"] is False
        # Another port on the same address is an ordinary (private, allowed) destination.
        other = egress_probe(server, token, "127.0.0.1", free_port())
        assert other["allowed"] is True and other["rule"] == "default: allowed"
    finally:
        server.stop()


def test_changes_persist_across_a_restart_and_win_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('[egress]\ndeny = ["blocked.example.com"]\nmode = "default"\n')
    token = init_with_token(tmp_path, config)
    server = serve(tmp_path, config)
    try:
        status, view = api(server, "GET", "/api/v1/egress", token)
        assert status == 200 and view["deny"] == ["blocked.example.com"]
        status, view = api(server, "PUT", "/api/v1/egress", token,
                           {"deny": ["10.66.0.0/16"], "allow_private": False})
        assert status == 200, view
    finally:
        assert server.stop() == 0

    # The file changes too: the overridden field keeps the API's value, the other follows the file.
    config.write_text('[egress]\ndeny = ["other.example.com"]\nmode = "strict"\n')
    server = serve(tmp_path, config)
    try:
        status, view = api(server, "GET", "/api/v1/egress", token)
        assert status == 200
        assert view["deny"] == ["10.66.0.0/16"]
        assert view["allow_private"] is False
        assert view["mode"] == "strict"
        assert view["overridden"] == ["allow_private", "deny"]
        assert egress_probe(server, token, "10.66.1.1", 5432)["rule"] == "deny: 10.66.0.0/16"

        status, view = api(server, "DELETE", "/api/v1/egress", token)
        assert status == 200
        assert view["deny"] == ["other.example.com"] and view["allow_private"] is True
        status, entries = api(server, "GET", "/api/v1/audit?limit=100", token)
        assert status == 200, entries
        items = entries["entries"] if isinstance(entries, dict) else entries
        actions = [e["action"] for e in items]
        assert actions.count("egress.update") == 1 and actions.count("egress.reset") == 1
    finally:
        server.stop()


def test_a_bad_stored_override_is_ignored_not_half_applied(tmp_path: Path) -> None:
    import sqlite3

    config = tmp_path / "appliance.toml"
    config.write_text('[egress]\nmode = "strict"\n')
    token = init_with_token(tmp_path, config)
    with sqlite3.connect(tmp_path / "state" / "appliance.db") as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('egress.runtime', ?)",
                     (json.dumps({"mode": "default", "deny": ["10.0.0.0/33"]}),))
    server = serve(tmp_path, config, env=clean_env())
    try:
        status, view = api(server, "GET", "/api/v1/egress", token)
        assert status == 200 and view["mode"] == "strict" and view["overridden"] == []
        assert "stored egress settings ignored" in server.stderr()
    finally:
        server.stop()
