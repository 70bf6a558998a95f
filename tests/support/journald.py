"""A real systemd-journald for a test: a journal namespace of its own (`systemd-journald NS`
listens on /run/systemd/journal.NS/socket), read back with `journalctl --namespace=NS`.

Owns that daemon's life and its files (the namespace's socket directory and journal directory
are removed afterwards). Never touches the host's own journal. Skips the test where journald
cannot run (not root, no binary, no socket after a few seconds) — say so in the test's report.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

JOURNALD = "/lib/systemd/systemd-journald"


@dataclass
class Journal:
    namespace: str
    socket: str

    def entries(self, *matches: str) -> list[dict[str, Any]]:
        """Every entry of the namespace matching `matches` (`FIELD=value`), as `journalctl -a
        -o json` writes them."""
        done = subprocess.run(
            ["journalctl", f"--namespace={self.namespace}", "--all", "--output=json",
             "--no-pager", "--quiet", *matches],
            capture_output=True, text=True, timeout=30, check=False)
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def wait_for(self, count: int, *matches: str, timeout: float = 15) -> list[dict[str, Any]]:
        """The entries matching `matches` once there are at least `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(*matches)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@contextlib.contextmanager
def journald() -> Iterator[Journal]:
    if os.geteuid() != 0 or not os.path.exists(JOURNALD) or shutil.which("journalctl") is None:
        pytest.skip("systemd-journald cannot run here (needs root and systemd's binaries)")
    namespace = f"appliancetest{secrets.token_hex(4)}"
    socket = f"/run/systemd/journal.{namespace}/socket"
    proc = subprocess.Popen([JOURNALD, namespace], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                said = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.skip(f"systemd-journald {namespace} did not start: {said[-300:]}")
            time.sleep(0.05)
        yield Journal(namespace, socket)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(f"/run/systemd/journal.{namespace}", ignore_errors=True)
        for directory in Path("/var/log/journal").glob(f"*.{namespace}"):
            shutil.rmtree(directory, ignore_errors=True)
