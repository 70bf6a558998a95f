"""The one-file binary: `make binary` builds dist/appliance, which serves HTTPS verified by its CA.

Slow (a PyInstaller build, about a minute); it runs in CI. `APPLIANCE_TEST_SKIP_BINARY=1` skips it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, clean_env, http_request, start_server, tls_connection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary() -> Path:
    if os.environ.get("APPLIANCE_TEST_SKIP_BINARY") == "1":
        pytest.skip("APPLIANCE_TEST_SKIP_BINARY=1")
    result = subprocess.run(["make", "binary"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = ROOT / "dist" / "appliance"
    assert path.exists()
    return path


def test_binary_version_names_the_commit(binary: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True,
                         env=clean_env()).stdout
    assert f"commit {head}" in out
    assert "aiohttp " in out and "unknown" not in out.split("commit")[0]


def test_binary_serves_https_verified_by_its_local_ca(binary: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    server = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path,
                          command=[str(binary)])
    start_seconds = time.monotonic() - started
    try:
        with tls_connection("127.0.0.1", server.port, server.client_context()) as sock:
            status, _, body = http_request(sock, "GET", "/healthz", "127.0.0.1")
        assert status == 200 and json.loads(body) == {"status": "ok"}
    finally:
        assert server.stop() == 0
    size_mb = binary.stat().st_size / 1e6
    print(f"\nbinary: {size_mb:.1f} MB, start to listening: {start_seconds:.2f} s")


def _run(binary: Path, *args: str, cwd: Path, input: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, cwd=cwd,
                          env=clean_env(), timeout=120, input=input)
    for marker in ("Traceback", "ModuleNotFoundError", "ImportError", "No such file"):
        assert marker not in done.stderr, (args, done.stderr[-3000:])
    return done


def test_every_verb_runs_from_the_binary(binary: Path, tmp_path: Path) -> None:
    """Every verb (and its --help) from the frozen binary: lazily imported modules and data files
    are all inside."""
    from appliance.cli import VERB_MODULES

    for verb in VERB_MODULES:
        done = _run(binary, verb, "--help", cwd=tmp_path)
        assert done.returncode == 0 and "usage:" in done.stdout, verb
    state, password = tmp_path / "state", tmp_path / "password"
    password.write_text("binary-password-0123\n")
    common = ["--state-dir", str(state)]
    steps: list[tuple[str, ...]] = [
        ("init", *common, "--admin-password-file", str(password)),
        ("keys", "status", *common),
        ("users", "add", "dev", "--role", "developer", "--password-file", str(password), *common),
        ("users", "list", *common),
        ("tokens", "create", "admin", "--allow-without-2fa", *common),
        ("audit", "verify", *common),
        ("backup", "--out", str(tmp_path / "backup.bin"), *common),
        ("restore", str(tmp_path / "backup.bin"), "--force", *common),
        ("export", str(tmp_path / "exported"), *common),
        ("import", str(tmp_path / "exported"), "--dry-run", *common),
        ("version",),
        ("install", "--dry-run", "--root", str(tmp_path / "root")),
    ]
    for args in steps:
        done = _run(binary, *args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    doctor = _run(binary, "doctor", *common, cwd=tmp_path)
    assert doctor.returncode in (0, 1), doctor.stderr  # a finding is fine; a crash is not
    # install from the binary copies the binary itself (sys.executable when frozen).
    root = tmp_path / "root"
    done = _run(binary, "install", "--root", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (root / "usr/local/bin/appliance").read_bytes() == binary.read_bytes()
    assert (root / "etc/systemd/system/appliance.service").read_text() == (
        ROOT / "systemd/appliance.service").read_text()


def test_one_query_through_the_binary(binary: Path, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("binary-password-0123\n")
    state = tmp_path / ".appliance"
    assert _run(binary, "init", "--state-dir", str(state), "--admin-password-file",
                str(password), cwd=tmp_path).returncode == 0
    # (the admin has not enrolled the 2FA their role requires: the flag says so on purpose)
    token = _run(binary, "tokens", "create", "admin", "--allow-without-2fa", "--state-dir",
                 str(state), cwd=tmp_path).stdout.strip().splitlines()[-1]
    server = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path,
                          command=[str(binary)],
                          env=clean_env(APPLIANCE_METRICS_ALLOW="127.0.0.1"))
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with tls_connection("127.0.0.1", server.port, server.client_context()) as sock:
            status, _, body = http_request(sock, "GET", "/api/v1/queries", "127.0.0.1", auth)
            assert status == 200, body
            listed = json.loads(body)
            items = listed["queries"] if isinstance(listed, dict) else listed
            query = next(q for q in items if q["name"] == "demo products under a price")
            payload = json.dumps({"params": {"max_price": 10}}).encode()
            status, _, body = http_request(
                sock, "POST", f"/api/v1/queries/{query['id']}/run", "127.0.0.1",
                {**auth, "Content-Type": "application/json"}, payload)
            assert status == 200, body
            result = json.loads(body)
            assert result["row_count"] == 2 and result["columns"][:2] == ["id", "sku"]
            assert [row[1] for row in result["rows"]] == ["0042", "0001"]  # by price
            status, _, body = http_request(sock, "GET", "/metrics", "127.0.0.1")
            assert status == 200 and b'appliance_query_run_seconds_count{outcome="ok"} 1.0' in body
    finally:
        assert server.stop() == 0
