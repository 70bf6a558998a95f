"""Logs journald can filter: under systemd (`JOURNAL_STREAM` naming stderr's device and inode)
every stderr line starts with its syslog priority (`<6>`, `<4>` …), in JSON and text alike, so
`journalctl -p warning` works; elsewhere nothing changes. Request lines carry the user's name and
the query id, never a token or a value; a failure is logged with its type and the request id, and
its message only when it is one of our own errors. Against a real `appliance serve`."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance import logs
from appliance.errors import ApplianceError
from appliance.http.app_keys import SETTINGS
from appliance.http.middleware import front
from tests.support.app import make_settings
from tests.support.cli import run_verb
from tests.support.logs import captured_logs

from .conftest import ServerProcess, clean_env
from .support.json_api import request

SECRET = "hunter2-secret-7f3a9c"
PREFIX = re.compile(r"<([0-7])>")


def serve_under_journald(cwd: Path, fmt: str, *, matching: bool = True,
                         **env: str) -> ServerProcess:
    """`appliance serve --dev` with stderr to a file and JOURNAL_STREAM naming that file (or, if
    not `matching`, another file: a variable inherited by a process that writes elsewhere)."""
    stderr_path = cwd / f"serve-{fmt}-{time.monotonic_ns()}.stderr"
    stderr = stderr_path.open("w")
    other = cwd / "elsewhere"
    other.touch()
    found = os.fstat(stderr.fileno()) if matching else os.stat(other)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--dev", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd,
        env=clean_env(JOURNAL_STREAM=f"{found.st_dev}:{found.st_ino}",
                      APPLIANCE_LOG_FORMAT=fmt, APPLIANCE_LOG_LEVEL="info", **env))
    stderr.close()
    assert proc.stdout is not None
    url = ca = None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if m := re.search(r"listening on (https://\S+)", line):
            url = m.group(1)
        if m := re.search(r"Local CA certificate: (\S+)", line):
            ca = Path(m.group(1))
        if line.startswith("Try:"):
            break
    assert url is not None and ca is not None, (lines, stderr_path.read_text())
    return ServerProcess(proc, url, ca, lines, stderr_path)


@pytest.fixture(scope="module")
def dev_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A dev state directory (with the demo queries) and an admin token for it."""
    cwd = tmp_path_factory.mktemp("journald")
    first = serve_under_journald(cwd, "json")
    first.stop()
    made = run_verb("tokens", "create", "admin", "--allow-without-2fa", "--state-dir",
                    str(cwd / ".appliance"), cwd=cwd)
    assert made.returncode == 0, made.stderr
    return cwd, next(w for w in made.stdout.split() if w.startswith("apl_"))


def call(server: ServerProcess, token: str, method: str, path: str,
         body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    status, _, data = request(server, method, path, token=token, body=body, host="127.0.0.1")
    return status, {} if data is None else data


def exercise(server: ServerProcess, token: str) -> str:
    """A listing, a run with a parameter value, a refused token, a 404: the query id run."""
    status, listing = call(server, token, "GET", "/api/v1/queries")
    assert status == 200, listing
    queries = {q["name"]: q for q in listing["queries"]}  # type: ignore[attr-defined]  # JSON
    by_sku = queries["demo products by sku"]["id"]
    status, result = call(server, token, "POST", f"/api/v1/queries/{by_sku}/run",
                          {"params": {"skus": [SECRET]}})
    assert status == 200, result
    assert call(server, SECRET, "GET", "/api/v1/queries")[0] == 401
    assert call(server, token, "GET", f"/api/v1/queries/{SECRET}")[0] == 404
    return str(by_sku)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_line_carries_its_priority(dev_state: tuple[Path, str], fmt: str) -> None:
    cwd, token = dev_state
    # NOTIFY_SOCKET to nowhere: `cannot notify systemd`, a warning, at start and at stop.
    server = serve_under_journald(cwd, fmt, NOTIFY_SOCKET=str(cwd / "no-such-socket"))
    try:
        query_id = exercise(server, token)
    finally:
        assert server.stop() == 0
    lines = [line for line in server.stderr().splitlines() if line]
    assert lines, "no log lines"
    by_priority: dict[int, list[str]] = {}
    for line in lines:
        found = PREFIX.match(line)
        assert found is not None, f"a line without its priority: {line!r}"
        by_priority.setdefault(int(found.group(1)), []).append(line[3:])
    assert any("cannot notify systemd" in line for line in by_priority.get(4, [])), by_priority
    requests = [line for line in by_priority.get(6, []) if "request" in line and "route" in line]
    assert requests, by_priority
    if fmt == "json":
        entries = [json.loads(line) for line in requests]
        assert all(e["message"] == "request" for e in entries)
        run = next(e for e in entries if e["route"] == "/api/v1/queries/{id}/run")
        assert run["user"] == "admin" and run["query_id"] == query_id and run["status"] == 200
        assert run["token_id"] and run["token_id"] not in token.split("_")[-1]
        refused = next(e for e in entries if e["status"] == 401)
        assert "user" not in refused  # nobody authenticated
        missing = next(e for e in entries if e["status"] == 404)
        assert "query_id" not in missing  # what the client wrote is not a query id
    else:
        run = next(line for line in requests if "/api/v1/queries/{id}/run" in line)
        assert "user=admin" in run and f"query_id={query_id}" in run
    everything = server.stderr()
    assert SECRET not in everything and token not in everything


def test_no_prefix_when_stderr_is_not_the_journal(dev_state: tuple[Path, str]) -> None:
    cwd, token = dev_state
    server = serve_under_journald(cwd, "json", matching=False)
    try:
        exercise(server, token)
    finally:
        server.stop()
    lines = [line for line in server.stderr().splitlines() if line]
    assert lines and all(line.startswith("{") for line in lines), lines[:3]


def test_priorities_and_the_stream_check(tmp_path: Path) -> None:
    assert [logs.syslog_priority(level) for level in (50, 40, 35, 30, 20, 10, 0)] == \
        [2, 3, 4, 4, 6, 7, 7]
    with (tmp_path / "err").open("w") as stream:
        st = os.fstat(stream.fileno())
        assert logs.journald_reads(stream, f"{st.st_dev}:{st.st_ino}")
        for wrong in (None, "", f"{st.st_dev}:{st.st_ino + 1}", f"{st.st_dev}", "a:b",
                      f"{st.st_dev}:{st.st_ino}:1"):
            assert not logs.journald_reads(stream, wrong), wrong
    assert not logs.journald_reads(io.StringIO(), "1:2")
    # A message spanning lines: each line keeps the prefix (journald reads each one).
    record = logging.LogRecord("x", logging.ERROR, "x", 0, "one\ntwo", None, None)
    out = logs.PriorityPrefix(logs.TextFormatter()).format(record)
    assert [line[:3] for line in out.split("\n")] == ["<3>", "<3>"]


class _Hostile(Exception):
    """What a driver might raise: a message quoting a value it was given."""


class _Ours(ApplianceError):
    status = 502
    code = "upstream_broke"


@pytest.fixture
def hostile_app(tmp_path: Path) -> Iterator[web.Application]:
    async def raise_theirs(request: web.Request) -> web.Response:
        raise _Hostile(f"authentication failed for password={SECRET}")

    async def raise_ours(request: web.Request) -> web.Response:
        raise _Ours("the upstream closed the connection")

    app = web.Application(middlewares=[front()])
    app[SETTINGS] = make_settings(tmp_path / "state")
    app.router.add_get("/theirs", raise_theirs)
    app.router.add_get("/ours", raise_ours)
    yield app


async def test_a_hostile_exception_message_never_reaches_the_log(
        hostile_app: web.Application) -> None:
    with captured_logs() as lines:
        async with TestClient(TestServer(hostile_app)) as client:
            theirs = await client.get("/theirs")
            ours = await client.get("/ours")
            body = await theirs.json()
    assert theirs.status == 500 and SECRET not in json.dumps(body)
    assert ours.status == 502
    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert SECRET not in lines.getvalue()
    unhandled = next(e for e in entries if e["message"] == "unhandled error")
    assert unhandled["exception"].endswith("_Hostile")
    assert unhandled["request_id"] == theirs.headers["X-Request-Id"]
    failed = next(e for e in entries if e["message"] == "request failed")
    assert failed["error"] == "the upstream closed the connection"  # ours: known safe
    assert failed["code"] == "upstream_broke" and failed["exception"].endswith("_Ours")
    assert failed["request_id"] == ours.headers["X-Request-Id"]
