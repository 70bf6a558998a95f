"""The audit sinks and anchors wired into a real `appliance serve` (issue 24): every entry of a
session (the CLI's `init`, a login, a config change, a query run) reaches a file sink with the
store's position and MAC, in order; anchors reach the log and the sink, the last one at shutdown,
and `audit verify --anchors` agrees; a required file sink that cannot be written fails runs and
changes with 503 `audit_unavailable` and writes nothing to the store, until it is fixed; an
optional sink's failure fails nothing and is counted in /metrics; SIGHUP after `mv` writes a new
file; and a real journald namespace receives the same entries (the appliance's journal socket
bind-mounted onto the namespace's, in a private mount namespace)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, clean_env, run_cli, start_server
from tests.support.app import ADMIN_PASSWORD as PASSWORD
from tests.support.app import prepared_for_processes
from tests.support.journald import journald
from tests.support.json_api import request
from tests.support.queries import sqlite_database


class Appliance:
    """A state directory, its settings file and an admin token; `serve()` starts it."""

    def __init__(self, root: Path, sinks: list[str], *, anchor_interval: float = 1.0) -> None:
        self.root = root
        self.state = root / "state"
        self.config = root / "appliance.toml"
        self.configure(sinks, anchor_interval)
        self.env = clean_env()
        self.token = prepared_for_processes(self.state, env=self.env, config=self.config)
        self.names = iter(range(1, 1000))

    def configure(self, sinks: list[str], anchor_interval: float = 1.0) -> None:
        listed = ", ".join(sinks)
        self.config.write_text(f"[audit]\nsinks = [{listed}]\nanchor_interval = {anchor_interval}"
                               "\n\n[metrics]\nallow = [\"127.0.0.1/32\"]\n")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--state-dir", str(self.state), "--config", str(self.config),
                       env=self.env)

    def serve(self, command: list[str] | None = None) -> ServerProcess:
        return start_server(["serve", "--state-dir", str(self.state), "--config",
                             str(self.config), "--listen", "127.0.0.1:0"], cwd=self.root,
                            env=self.env, command=command)

    def rows(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.state / "appliance.db") as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute("SELECT * FROM audit_log ORDER BY seq")]

    def session(self, server: ServerProcess) -> str:
        """A login, a datasource and a query made (config changes), a run; the query's id."""
        status, _, body = request(server, "POST", "/api/v1/session",
                                        body={"username": "admin", "password": PASSWORD})
        assert status in (200, 201), body
        data = sqlite_database(self.root / f"data-{next(self.names)}.sqlite",
                               ["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('x')"])
        status, _, body = request(server, "POST", "/api/v1/datasources", token=self.token, body={
            "name": f"ds-{next(self.names)}", "kind": "sqlite", "config": {"path": str(data)}})
        assert status == 201, body
        status, _, body = request(server, "POST", "/api/v1/queries", token=self.token, body={
            "name": f"q-{next(self.names)}", "datasource_id": body["id"],
            "body": "SELECT v FROM t", "parameters": []})
        assert status == 201, body
        query = str(body["id"])
        assert self.run(server, query)[0] == 200
        return query

    def run(self, server: ServerProcess, query: str) -> tuple[int, Any]:
        status, _, body = request(server, "POST", f"/api/v1/queries/{query}/run",
                                  token=self.token, body={"params": {}})
        return status, body

    def change(self, server: ServerProcess) -> tuple[int, Any]:
        data = self.root / "data-1.sqlite"
        status, _, body = request(server, "POST", "/api/v1/datasources", token=self.token, body={
            "name": f"ds-{next(self.names)}", "kind": "sqlite", "config": {"path": str(data)}})
        return status, body


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def entry_lines(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in found if "record" not in line]


def as_line(row: dict[str, Any]) -> dict[str, Any]:
    line = {"position": row["seq"], **{k: v for k, v in row.items() if k != "seq"}}
    return line


def eventually(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_every_entry_and_anchor_reaches_the_file_sink(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    sink = logs / "audit.jsonl"
    appliance = Appliance(tmp_path, [f'"file:{sink}"'])
    cli_entries = len(appliance.rows())
    assert cli_entries and len(entry_lines(lines(sink))) == cli_entries  # the verbs' own
    server = appliance.serve()
    try:
        appliance.session(server)
        eventually(lambda: any(line.get("record") == "anchor" for line in lines(sink)))
        appliance.change(server)
    finally:
        assert server.stop() == 0
    rows = appliance.rows()
    found = lines(sink)
    assert entry_lines(found) == [as_line(row) for row in rows]
    actions = {row["action"] for row in rows}
    assert {"session.create", "datasource.create", "query.create", "query.run"} <= actions, actions
    anchors = [line for line in found if line.get("record") == "anchor"]
    assert len(anchors) >= 2
    # the last line of all: the shutdown's anchor, at the store's head
    assert found[-1]["record"] == "anchor"
    assert (found[-1]["position"], found[-1]["hash"]) == (rows[-1]["seq"], rows[-1]["hash"])
    stderr = server.stderr()
    assert stderr.count("audit anchor") >= 2
    assert PASSWORD not in sink.read_text() and appliance.token not in sink.read_text()
    done = appliance.cli("audit", "verify", "--anchors", str(sink))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "anchors agree" in done.stdout


def test_a_required_sink_that_fails_fails_the_action_and_writes_nothing(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    sink = logs / "audit.jsonl"
    optional = f"file:{tmp_path}/nowhere/audit.jsonl"
    appliance = Appliance(tmp_path, [f'"file:{sink}"',
                                     f'{{ sink = "{optional}", required = false }}'])
    server = appliance.serve()
    try:
        query = appliance.session(server)  # the optional sink fails all along: nothing fails
        status, _, metrics = request(server, "GET", "/metrics")
        assert status == 200
        failures = [line for line in metrics.splitlines()
                    if line.startswith("appliance_audit_sink_failures_total")
                    and optional in line]
        assert failures and float(failures[0].split()[-1]) > 0, failures

        sink.unlink()  # the file replaced by a directory: it cannot be written
        sink.mkdir()
        before = len(appliance.rows())
        status, body = appliance.run(server, query)
        assert status == 503 and body["error"]["code"] == "audit_unavailable", body
        status, body = appliance.change(server)
        assert status == 503 and body["error"]["code"] == "audit_unavailable", body
        assert len(appliance.rows()) == before
        assert "audit sink failed" in server.stderr()

        sink.rmdir()  # fixed: the file is made again at the next batch
        assert appliance.run(server, query)[0] == 200
        assert appliance.change(server)[0] == 201
        assert len(appliance.rows()) > before
    finally:
        server.stop()
    positions = [line["position"] for line in entry_lines(lines(sink))]
    assert positions == [row["seq"] for row in appliance.rows()][-len(positions):]


def test_sighup_after_mv_writes_a_new_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    sink = logs / "audit.jsonl"
    appliance = Appliance(tmp_path, [f'"file:{sink}"'], anchor_interval=3600)
    server = appliance.serve()
    try:
        appliance.session(server)
        sink.rename(logs / "audit.jsonl.1")
        server.proc.send_signal(signal.SIGHUP)
        eventually(sink.exists)
        assert appliance.change(server)[0] == 201
    finally:
        server.stop()
    rotated = entry_lines(lines(logs / "audit.jsonl.1"))
    fresh = entry_lines(lines(sink))
    rows = appliance.rows()
    assert rotated + fresh == [as_line(row) for row in rows]
    assert fresh and fresh[0]["action"] == "datasource.create"


def test_a_root_verb_gives_a_new_sink_file_to_the_state_directory_s_owner(
        tmp_path: Path) -> None:
    from appliance.audit.sinks import open_sinks
    from appliance.core import _state_owner
    from appliance.settings import SinkSpec
    from tests.support.app import make_settings

    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    owner = _state_owner(make_settings(state))
    assert owner == (65534, 65534)
    path = tmp_path / "audit.jsonl"
    open_sinks([SinkSpec("file", str(path))], owner=owner).close()
    info = path.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (65534, 65534, 0o640)
    os.chown(state, 0, 0)
    assert _state_owner(make_settings(state)) is None


def test_a_required_sink_that_cannot_open_stops_the_start(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    appliance = Appliance(tmp_path, [f'"file:{logs}/audit.jsonl"'])
    shutil.rmtree(logs)
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--state-dir", str(appliance.state),
         "--config", str(appliance.config), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, env=appliance.env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "audit.sinks" in done.stderr and "does not exist" in done.stderr


def test_a_real_journal_receives_every_entry(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to give serve the namespace's journal socket")
    with journald() as journal:
        appliance = Appliance(tmp_path, [])  # the verbs run where no journal listens
        appliance.configure(['"journal"'], anchor_interval=3600)
        # serve alone sees the namespace's socket at journald's usual path
        held = tmp_path / "journal-namespace"
        held.mkdir()
        script = (f"mount --bind {os.path.dirname(journal.socket)} {held} && "
                  "mount -t tmpfs tmpfs /run/systemd && "
                  "mkdir -p /run/systemd/journal && touch /run/systemd/journal/socket && "
                  f"mount --bind {held}/socket /run/systemd/journal/socket && "
                  f'exec {sys.executable} -m appliance "$@"')
        server = appliance.serve(command=["unshare", "--mount", "--propagation", "private",
                                          "sh", "-c", script, "sh"])
        try:
            appliance.session(server)
        finally:
            assert server.stop() == 0
        rows = appliance.rows()
        found = journal.wait_for(len(rows), "SYSLOG_IDENTIFIER=appliance-audit",
                                 "APPLIANCE_AUDIT_RECORD=entry")
        served = [json.loads(entry["APPLIANCE_AUDIT_JSON"]) for entry in found]
        # the verbs' entries came before the journal sink was configured: serve's
        assert served == [as_line(row) for row in rows][-len(served):]
        assert {"session.create", "query.run"} <= {line["action"] for line in served}
        anchors = journal.wait_for(1, "APPLIANCE_AUDIT_RECORD=anchor")
        assert int(anchors[-1]["APPLIANCE_AUDIT_POSITION"]) == rows[-1]["seq"]
