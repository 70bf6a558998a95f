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
