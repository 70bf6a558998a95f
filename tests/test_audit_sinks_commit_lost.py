"""When a PostgreSQL store's connection drops during COMMIT, the sinks' lines are withdrawn
although the commit went through (docs/audit.md#required-and-optional): the caller is told the
write failed, each sink gets a `withdrawn` line for the batch, the store holds the entries, the
chain verifies, `verify --anchors` raises no alarm, and a reader reconciles by the store's chain
(a withdrawn line whose position the store holds with the same MAC is a committed entry).

A real PostgreSQL store reached through a real TCP relay that forwards the writer's COMMIT to
the server, waits for the server's answer (so the server has committed) and then drops the
connection instead of passing the answer on: the client never hears it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import AuditLog, FixedMacKeys
from appliance.audit.anchors import check_store_anchors, read_anchor_file
from appliance.audit.log import AuditUnavailable
from appliance.errors import StoreError
from tests.support.commit_relay import LostCommitAnswer, open_relayed

from .conftest import StoreDatabase


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
