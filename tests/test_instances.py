"""Instance heartbeats (issue 22): several real `appliance serve` processes on one store each
record a heartbeat that the API and `doctor` read; a SIGKILLed one ages out, a clean stop removes
its row, a store outage during a heartbeat neither stops the server nor floods its log, and only
admins may list instances.

The multi-instance tests take the store as a fixture parameter (`shared_store`,
tests/support/shared_store.py): SQLite, where every instance serves from one state directory and
SQLite serialises their writes across processes; PostgreSQL, where each instance has a state
directory of its own (the same instance secret) and the one store URL.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance import instances as instances_module
from appliance import settings
from appliance.instances import PRUNE_AFTER, Heartbeat, list_instances
from appliance.store.migrations import LATEST
from tests.conftest import (
    ServerProcess,
    clean_env,
    run_cli,
    start_server,
)
from tests.support.app import prepared_for_processes, running
from tests.support.json_api import api
from tests.support.outside_store import OutsideStore
from tests.support.ports import free_port
from tests.support.shared_store import (
    SHARED_STORE_KINDS,
    instance_state,
    new_store,
    open_twice,
)

INTERVAL = 0.4  # seconds between heartbeats in these tests
# How long a dead instance may still count as alive (instances.ALIVE_BEATS intervals + slack).
AGE_OUT = INTERVAL * instances_module.ALIVE_BEATS + instances_module.ALIVE_SLACK


@dataclass
class SharedStore:
    """One store several instances serve from, seen from outside as an operator would."""

    kind: str
    root: Path
    env: dict[str, str]  # the store's settings (APPLIANCE_STORE_*)
    token: str  # an admin API token, valid on every instance
    instances: int = 0

    @property
    def state(self) -> Path:
        return self.root / "state"

    def instance_args(self, listen: str) -> list[str]:
        """`serve` arguments for one more instance of this store (the first serves from the
        state directory `init` made, where `doctor` looks)."""
        self.instances += 1
        state = self.state if self.instances == 1 else instance_state(self.kind, self.state,
                                                                       str(self.instances))
        return ["serve", "--state-dir", str(state), "--listen", listen]

    def instance_env(self, **extra: str) -> dict[str, str]:
        return clean_env(APPLIANCE_SERVER_HEARTBEAT_INTERVAL=str(INTERVAL), **self.env, **extra)

    def _outside(self) -> OutsideStore:
        return OutsideStore(settings.load(env=self.env, flags={"state_dir": str(self.state)}))

    def execute(self, sql: str) -> None:
        """One statement on the store, from another connection (another process would)."""
        outside = self._outside()
        try:
            outside.execute(sql)
        finally:
            outside.close()

    def instance_ids(self) -> list[str]:
        """The ids in the store's `instances` table, read from outside."""
        outside = self._outside()
        try:
            return [row[0] for row in outside.query("SELECT id FROM instances")]
        finally:
            outside.close()


@pytest.fixture(params=SHARED_STORE_KINDS)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedStore]:
    """A store initialised with an admin and an admin token."""
    state = tmp_path / "state"
    with new_store(request.param, request, tmp_path) as env:
        token = prepared_for_processes(state, env=clean_env(**env))
        yield SharedStore(request.param, tmp_path, env, token)


@contextlib.contextmanager
def instance(store: SharedStore, listen: str = "127.0.0.1:0",
             **env: str) -> Iterator[ServerProcess]:
    server = start_server(store.instance_args(listen), cwd=store.root,
                          env=store.instance_env(**env))
    try:
        yield server
    finally:
        server.stop()


def listed(server: ServerProcess, store: SharedStore) -> dict[str, Any]:
    status, body = api(server, "GET", "/api/v1/instances", store.token)
    assert status == 200, body
    return body


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in body["instances"]}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def doctor(store: SharedStore, listen: str) -> tuple[int, list[str]]:
    result = run_cli("doctor", "--state-dir", str(store.state),
                     env=store.instance_env(APPLIANCE_SERVER_LISTEN=listen))
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.strip().splitlines()


def line_of(lines: list[str], name: str) -> str:
    found = [line for line in lines if line.split(":", 1)[0].split(maxsplit=1)[-1] == name]
    assert len(found) == 1, (name, lines)
    return found[0]


# --- several serve processes on one store ---------------------------------------------------


def test_two_instances_on_one_store_both_appear_and_a_clean_stop_removes_one(
        shared_store: SharedStore) -> None:
    port = free_port()
    with instance(shared_store, f"127.0.0.1:{port}") as a, instance(shared_store) as b:
        seen_a, seen_b = listed(a, shared_store), listed(b, shared_store)
        a_id, b_id = seen_a["this"], seen_b["this"]
        assert a_id != b_id
        for body in (seen_a, seen_b):
            rows = by_id(body)
            assert set(rows) == {a_id, b_id}
            assert all(row["alive"] for row in rows.values())
            assert [row["id"] for row in body["instances"] if row["this"]] == [body["this"]]
        row_a, row_b = by_id(seen_a)[a_id], by_id(seen_a)[b_id]
        # Each heartbeat carries the port really bound (B listens on port 0).
        assert row_a["address"] == f"127.0.0.1:{port}"
        assert row_b["address"] == f"127.0.0.1:{b.port}"
        assert row_a["hostname"] == socket.gethostname()
        assert row_a["pid"] == a.proc.pid and row_b["pid"] == b.proc.pid
        assert row_a["schema_version"] == LATEST and row_a["version"]
        assert row_a["last_seen"].endswith("Z") and row_a["seen_seconds_ago"] < AGE_OUT

        # doctor lists both, and A holding the configured port is no failure (issue 25, item 4).
        code, lines = doctor(shared_store, f"127.0.0.1:{port}")
        assert code == 0, lines
        assert "2 alive" in line_of(lines, "instances")
        for an_id, server in ((a_id, a), (b_id, b)):
            line = line_of(lines, f"instance {an_id}")
            assert line.startswith("ok") and f"pid {server.proc.pid}" in line
            assert "(this host)" in line
        listener = line_of(lines, "https listener")
        assert listener.startswith("ok") and f"in use by the appliance running here " \
            f"(instance {a_id}" in listener

        assert b.stop() == 0  # SIGTERM: a clean stop deletes its row at once
        assert set(by_id(listed(a, shared_store))) == {a_id}
        code, lines = doctor(shared_store, f"127.0.0.1:{port}")
        assert code == 0 and "1 alive" in line_of(lines, "instances"), lines
    assert shared_store.instance_ids() == []  # and A's too, when it stops
    code, lines = doctor(shared_store, f"127.0.0.1:{port}")
    assert "none alive" in line_of(lines, "instances"), lines


def test_a_sigkilled_instance_ages_out_as_not_alive(shared_store: SharedStore) -> None:
    with instance(shared_store) as a, instance(shared_store) as b:
        b_id = listed(b, shared_store)["this"]
        assert by_id(listed(a, shared_store))[b_id]["alive"] is True
        killed_at = time.monotonic()
        b.stop(signal.SIGKILL)  # no clean stop: its row stays and ages

        def b_is_dead() -> bool:
            return by_id(listed(a, shared_store))[b_id]["alive"] is False

        wait_for(b_is_dead, AGE_OUT + 5, "the killed instance to age out")
        assert time.monotonic() - killed_at >= INTERVAL  # not at once: it ages
        row = by_id(listed(a, shared_store))[b_id]
        assert row["seen_seconds_ago"] > INTERVAL * instances_module.ALIVE_BEATS
        code, lines = doctor(shared_store, "127.0.0.1:0")
        assert code == 0, lines
        assert "1 alive" in line_of(lines, "instances") and "1 more not seen" in \
            line_of(lines, "instances")
        assert not any(b_id in line for line in lines)  # only the alive are listed


def test_a_store_outage_during_heartbeats_does_not_stop_the_server(
        shared_store: SharedStore) -> None:
    with instance(shared_store) as a:
        a_id = listed(a, shared_store)["this"]
        # The heartbeat's table disappears from under the running server: every beat fails.
        shared_store.execute("ALTER TABLE instances RENAME TO instances_away")
        wait_for(lambda: "instance heartbeat failed" in a.stderr(), 10, "the failure logged")
        time.sleep(INTERVAL * 5)  # several more failed beats
        status, _ = api(a, "GET", "/api/v1/keys", shared_store.token)  # the request path is unharmed
        assert status == 200
        assert a.proc.poll() is None
        failures = [line for line in a.stderr().splitlines()
                    if "instance heartbeat failed" in line]
        assert len(failures) == 1, failures  # logged once, not once per beat
        entry = json.loads(failures[0])
        assert entry["level"] == "warning" and entry["instance"] == a_id
        assert entry["error"]  # why (a store error's message, or an exception's type only)

        shared_store.execute("ALTER TABLE instances_away RENAME TO instances")
        shared_store.execute("DELETE FROM instances")  # its row comes back by itself
        wait_for(lambda: a_id in by_id(listed(a, shared_store)), 10, "the heartbeat back")
        assert by_id(listed(a, shared_store))[a_id]["alive"] is True
        wait_for(lambda: "instance heartbeat recovered" in a.stderr(), 10, "recovery logged")


# --- the API's access, in process ----------------------------------------------------------


async def test_the_instances_api_is_admin_only(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        anonymous = await appliance.client().request("GET", "/api/v1/instances")
        assert anonymous.status == 401
        for role in ("viewer", "developer"):
            refused = await appliance.client(token=appliance.tokens[role]).request(
                "GET", "/api/v1/instances")
            assert refused.status == 403 and refused.code == "forbidden_role", role
        admin = await appliance.client(token=appliance.tokens["admin"]).request(
            "GET", "/api/v1/instances")
        assert admin.status == 200
        (only,) = admin.body["instances"]
        assert only["this"] is True and only["alive"] is True and only["id"] == admin.body["this"]
        # An instance id is no credential and nothing in the answer is one.
        text = json.dumps(admin.body)
        assert not any(token in text for token in appliance.tokens.values())


# --- the heartbeat against a store file, in process ----------------------------------------


@pytest.mark.parametrize("kind", SHARED_STORE_KINDS)
async def test_a_beat_prunes_rows_not_seen_for_a_day_and_keeps_the_rest(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    async with open_twice(kind, tmp_path, request) as (store, _):
        now = time.time()
        async with store.transaction() as tx:
            for an_id, seen in (("long-gone", now - PRUNE_AFTER - 60), ("recent", now - 600)):
                await tx.execute(
                    "INSERT INTO instances (id, version, schema_version, hostname, address, "
                    "http_address, pid, beat_interval, started_at, last_seen) "
                    "VALUES (?, '0.0.1', 1, 'elsewhere', '10.0.0.1:443', NULL, 1, 10, ?, ?)",
                    (an_id, seen, seen))
        beat = Heartbeat(store, address="127.0.0.1:8443", interval=10)
        await beat.beat()
        rows = {row.id: row for row in await list_instances(store)}
        assert set(rows) == {"recent", beat.id}
        assert rows[beat.id].alive(time.time()) and not rows["recent"].alive(time.time())
        await beat.serving_on("127.0.0.1:9443", "127.0.0.1:8080")  # beats at once
        mine = {row.id: row for row in await list_instances(store)}[beat.id]
        assert (mine.address, mine.http_address) == ("127.0.0.1:9443", "127.0.0.1:8080")
        assert mine.started_at == rows[beat.id].started_at  # an update, not a new row
        await beat.remove()
        assert {row.id for row in await list_instances(store)} == {"recent"}
        assert beat.id in repr(beat) and len(beat.id) == 12


def test_an_instance_of_another_version_is_a_warning(shared_store: SharedStore) -> None:
    now = time.time()
    shared_store.execute(
        "INSERT INTO instances (id, version, schema_version, hostname, address, http_address, "
        f"pid, beat_interval, started_at, last_seen) VALUES ('0ld0ld0ld0ld', '0.0.1', 9, "
        f"'other-host', '10.0.0.2:443', NULL, 42, 60, {now - 30}, {now - 5})")
    _, lines = doctor(shared_store, "127.0.0.1:0")  # (serve never ran: the tls check fails)
    assert not [line for line in lines if line.startswith(("FAIL  instance", "FAIL  store"))]
    line = line_of(lines, "instance 0ld0ld0ld0ld")
    assert line.startswith("WARN") and "host other-host," in line
    assert "version and schema differ" in line and line.count("->") == 1
