"""Process lifecycle: SIGTERM drains in-flight requests (bounded), `doctor`, `--help` everywhere."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from appliance.cli import VERB_MODULES, build_parser

from .conftest import ServerProcess, clean_env, http_request, run_cli, start_server, tls_connection
from .support.app import prepared_for_processes
from .support.cli import run_verb
from .support.ports import free_port

# A real `serve` process with one extra slow route, to have something in flight at SIGTERM.
SLOW_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from aiohttp import web
    import appliance.http.app as app_module
    import appliance.server as server_module
    from appliance.http import access

    original = app_module.build_app

    async def slow(request):
        await asyncio.sleep(float(request.query.get("s", "1.5")))
        return web.json_response({"slow": "done"})

    def build_app(*args, **kwargs):
        app = original(*args, **kwargs)
        app.router.add_get("/test-slow", access.public(slow))
        return app

    server_module.build_app = build_app
    from appliance.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def start_slow_server(tmp_path: Path, shutdown_timeout: str) -> ServerProcess:
    script = tmp_path / "slow_server.py"
    script.write_text(SLOW_SERVER)
    env = clean_env(APPLIANCE_SERVER_SHUTDOWN_TIMEOUT=shutdown_timeout)
    return start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path, env=env,
                        command=[sys.executable, str(script)])


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    server = start_slow_server(tmp_path, "10")
    result: dict[str, object] = {}

    def slow_request() -> None:
        try:
            with tls_connection("127.0.0.1", server.port, server.client_context()) as sock:
                result["response"] = http_request(sock, "GET", "/test-slow?s=1.5", "127.0.0.1")
        except Exception as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)  # the request is in flight
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # New connections are refused while draining.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    thread.join(15)
    code = server.proc.wait(15)
    assert "error" not in result, result
    status, _, body = result["response"]  # type: ignore[misc]  # the recorded response's shape
    assert status == 200 and json.loads(body) == {"slow": "done"}
    assert code == 0
    assert time.monotonic() - started >= 0.5  # it waited for the request
    assert "stopped" in server.stderr()


def test_a_sigterm_as_soon_as_it_says_it_listens_is_a_clean_stop(tmp_path: Path) -> None:
    """The handlers are in place before the first line a script or systemd (READY=1) acts on:
    a SIGTERM sent the moment the start-up lines are read drains and exits 0, never dies of the
    signal's default action (-15). Several starts, since the gap it closes was milliseconds."""
    prepared_for_processes(tmp_path / "state")
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--state-dir",
                                 str(tmp_path / "state"), "--listen", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=clean_env(), cwd=tmp_path)
        assert proc.stdout is not None
        for line in proc.stdout:  # the first line that says it is up
            if "listening on" in line:
                proc.send_signal(signal.SIGTERM)
                break
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in stderr, (proc.returncode, stderr[-2000:])


def test_sigterm_drain_is_bounded(tmp_path: Path) -> None:
    server = start_slow_server(tmp_path, "1")
    thread = threading.Thread(target=lambda: _ignore_errors(server, "/test-slow?s=30"))
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(20)
    elapsed = time.monotonic() - started
    thread.join(5)
    assert code == 0
    assert elapsed < 10, f"shutdown took {elapsed:.1f}s with shutdown_timeout = 1"


def _ignore_errors(server: ServerProcess, path: str) -> None:
    try:
        with tls_connection("127.0.0.1", server.port, server.client_context()) as sock:
            http_request(sock, "GET", path, "127.0.0.1")
    except Exception:
        pass


# --- doctor ---------------------------------------------------------------------------------


def test_doctor_passes_on_a_healthy_installation(tmp_path: Path, dev_server: ServerProcess) -> None:
    dev_server.stop()
    port = free_port()
    result = run_cli("doctor", "--dev", "--state-dir", str(tmp_path / ".appliance"),
                     env=clean_env(APPLIANCE_SERVER_LISTEN=f"127.0.0.1:{port}"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert all(line.startswith("ok") for line in lines), lines
    names = {line.split(":")[0].split(maxsplit=1)[1] for line in lines}
    assert {"settings", "state directory", "instance secret", "store", "tls",
            "https listener"} <= names


def test_doctor_reports_each_failure_with_a_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = run_cli("doctor", "--state-dir", str(state),
                     env=clean_env(APPLIANCE_SERVER_LISTEN="127.0.0.1:0"))
    assert result.returncode == 1
    assert "FAIL  state directory" in result.stdout and "appliance init" in result.stdout

    assert run_cli("init", "--state-dir", str(state)).returncode == 0
    os.chmod(state / "instance.key", 0o644)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("doctor", "--state-dir", str(state),
                         env=clean_env(APPLIANCE_SERVER_LISTEN=f"127.0.0.1:{port}"))
    out = result.stdout
    assert result.returncode == 1
    assert "FAIL  instance secret" in out and "chmod 600" in out
    assert "FAIL  tls" in out  # no certificate yet: serve has never run
    assert "FAIL  https listener" in out and "in use" in out
    assert stat.S_IMODE((state / "instance.key").stat().st_mode) == 0o644  # doctor only reads


def test_doctor_with_bad_settings_exits_2(tmp_path: Path) -> None:
    result = run_cli("doctor", "--state-dir", str(tmp_path),
                     env=clean_env(APPLIANCE_TLS_MODE="nope"))
    assert result.returncode == 2
    assert "FAIL  settings: APPLIANCE_TLS_MODE" in result.stdout


# --- CLI ------------------------------------------------------------------------------------


def test_every_verb_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    verbs = sorted(sub.choices)  # type: ignore[attr-defined]  # argparse's subparsers action has choices
    assert set(verbs) == set(VERB_MODULES)
    for verb in verbs:  # in this process: `--help` as a real process is tested below
        result = run_verb(verb, "--help")
        assert result.returncode == 0, verb
        assert "usage: appliance" in result.stdout
        assert len(sub.choices[verb].description or "") > 20, f"{verb} has no description"  # type: ignore[attr-defined]  # argparse's subparsers action has choices


def test_version_names_commit_python_openssl_and_libraries() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    out = result.stdout
    for word in ("appliance 0.", "commit ", "python 3.", "openssl OpenSSL", "aiohttp ",
                 "cryptography "):
        assert word in out
    assert "commit unknown" not in out  # run from a git checkout


def test_python_dash_m_and_unknown_verb() -> None:
    assert run_cli("--help").returncode == 0
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


# --- dev mode -------------------------------------------------------------------------------


def test_dev_mode_prints_a_working_admin_password_once(tmp_path: Path) -> None:
    server = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    try:
        out = "".join(server.stdout_lines)
        password = out.split("password ", 1)[1].split()[0]
        body = json.dumps({"username": "admin", "password": password}).encode()
        with tls_connection("127.0.0.1", server.port, server.client_context()) as sock:
            status, _, raw = http_request(
                sock, "POST", "/api/v1/session", f"127.0.0.1:{server.port}", body=body,
                headers={"Content-Type": "application/json", "Origin": server.url,
                         "X-Appliance-CSRF": "1"})
        assert status == 201, raw
        assert json.loads(raw)["user"]["role"] == "admin"
    finally:
        server.stop()
    assert password not in server.stderr()  # printed to the console, never logged
    again = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    try:
        assert "password" not in "".join(again.stdout_lines)
    finally:
        again.stop()
