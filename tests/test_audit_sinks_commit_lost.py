"""When a PostgreSQL store's connection drops during COMMIT, the sinks' lines are withdrawn
although the commit went through (docs/audit.md#required-and-optional): the caller is told the
write failed, each sink gets a `withdrawn` line for the batch, the store holds the entries, the
chain verifies, `verify --anchors` raises no alarm, and a reader reconciles by the store's chain
(a withdrawn line whose position the store holds with the same MAC is a committed entry).

A real PostgreSQL store reached through a real TCP relay that forwards the writer's COMMIT to
the server, waits for the server's answer (so the server has committed) and then drops the
connection instead of passing the answer on: the client never hears it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from appliance import settings
from appliance.audit import AuditLog, FixedMacKeys
from appliance.audit.anchors import check_store_anchors, read_anchor_file
from appliance.audit.log import AuditUnavailable
from appliance.audit.sinks import Sinks, open_sinks
from appliance.egress import Dialer, PolicyHolder
from appliance.errors import StoreError
from appliance.settings import SinkSpec
from appliance.store import Store, open_store

from .conftest import StoreDatabase

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message asyncpg sends for "COMMIT"


class LostCommitAnswer:
    """A relay to the PostgreSQL server; `arm()` makes it lose the answer to the next COMMIT,
    `arm(hold=True)` hold it back (`held` is set once the server has answered) until
    `released` is set."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.armed = False
        self.hold = False
        self.held = asyncio.Event()
        self.released = asyncio.Event()
        self.lost = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> LostCommitAnswer:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    def arm(self, *, hold: bool = False) -> None:
        self.armed, self.hold = True, hold

    async def _relay(self, client_in: asyncio.StreamReader,
                     client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target)
        commit_sent = False

        async def upstream() -> None:
            nonlocal commit_sent
            while data := await client_in.read(65536):
                if self.armed and COMMIT in data:
                    self.armed, commit_sent = False, True
                server_out.write(data)
                await server_out.drain()
            server_out.close()

        async def downstream() -> None:
            nonlocal commit_sent
            while data := await server_in.read(65536):
                if commit_sent and self.hold:  # the server committed: the answer waits
                    commit_sent = False
                    self.held.set()
                    await self.released.wait()
                elif commit_sent:  # the server committed and said so: the client never hears it
                    self.lost += 1
                    client_out.transport.abort()
                    server_out.close()
                    return
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(upstream(), downstream())


async def open_relayed(relay: LostCommitAnswer, database: StoreDatabase, tmp_path: Path
                       ) -> tuple[Store, Sinks]:
    """The store on `database`, reached through `relay`, and a file sink `audit.jsonl`."""
    env = database.env(
        APPLIANCE_STORE_URL=f"postgresql://app@127.0.0.1:{relay.port}/{database.name}")
    s = settings.load(env=env, flags={"state_dir": str(tmp_path / "state")})
    store = await open_store(s, Dialer(PolicyHolder(s.egress)))
    return store, open_sinks([SinkSpec("file", str(tmp_path / "audit.jsonl"))])


def sink_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_lost_commit_answer_withdraws_lines_of_committed_entries(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    sink = tmp_path / "audit.jsonl"
    async with LostCommitAnswer(store_database.server.port) as relay:
        store, sinks = await open_relayed(relay, store_database, tmp_path)
        keys = FixedMacKeys.generate()
        audit = AuditLog(store, keys=keys, sinks=sinks)
        try:
            first = await audit.record(action="test.before")
            relay.arm()  # an entry of its own transaction (the group commit's path)
            with pytest.raises(AuditUnavailable):
                await audit.record(action="test.own")
            relay.arm()  # an entry in a caller's transaction (the commit hook's path)
            with pytest.raises(StoreError):
                async with store.transaction() as tx:
                    await audit.record(tx, action="test.in_caller")
            assert relay.lost == 2
            last = await audit.record(action="test.after")  # the store answers again
            rows = await store.fetch_all("SELECT seq, action, hash FROM audit_log ORDER BY seq")
            verified = await audit.verify(full=True)
            anchors = await check_store_anchors(store, read_anchor_file(str(sink)))
        finally:
            await audit.close()
            sinks.close()
            await store.close()
    # The store committed both: four entries in a row, the chain intact.
    assert [(r["seq"], r["action"]) for r in rows] == [
        (first, "test.before"), (first + 1, "test.own"), (first + 2, "test.in_caller"),
        (last, "test.after")] and last == first + 3
    assert verified.ok
    # The sinks: each of the two has its entry line, then a withdrawn line for it.
    lines = sink_lines(sink)
    assert [(line.get("record", "entry"), line.get("position", line.get("from")))
            for line in lines] == [("entry", first), ("entry", first + 1),
                                   ("withdrawn", first + 1), ("entry", first + 2),
                                   ("withdrawn", first + 2), ("entry", last)]
    for line in lines:
        if line.get("record") == "withdrawn":
            assert line["from"] == line["to"] and line["reason"] == "the store's commit failed"
    # verify --anchors raises no alarm (withdrawn entry lines are not used as anchors) ...
    assert anchors.ok
    # ... and the reconciliation docs/audit.md gives: a withdrawn line whose position the store
    # holds with the same MAC is a committed entry.
    stored = {int(r["seq"]): str(r["hash"]) for r in rows}
    withdrawn = [line for line in lines if line.get("record") == "withdrawn"]
    entries = {line["position"]: line["hash"] for line in lines if "record" not in line}
    assert all(stored[w["from"]] == entries[w["from"]] for w in withdrawn)
