"""The audit log's own-transaction append on a PostgreSQL store (a bridged store: an async
transaction chaining onto the head this process's last commit left, checked by the INSERT): one
chain across instances, nothing half-written when the connection drops before the commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import RUN_ACTION, AuditLog, AuditUnavailable, FixedMacKeys
from appliance.audit.sinks import Sinks, open_sinks
from appliance.settings import SinkSpec
from appliance.store.postgres import PostgresStore

from .conftest import StoreDatabase
from .support.shared_store import open_pg, two_instances


async def positions(store: PostgresStore) -> list[int]:
    return [int(r["seq"]) for r in await store.fetch_all("SELECT seq FROM audit_log ORDER BY seq")]


async def run_entry(audit: AuditLog, i: int) -> int:
    with audit.run_under_way():
        return await audit.record(action=RUN_ACTION, actor="token:t", target=f"query:q{i}",
                                  details={"rows": i})


async def test_an_append_after_another_instances_is_chained_onto_it(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """A's second append chains onto the head its first left, which B's append has moved: the
    INSERT's check refuses it, the head is read again and the entry goes after B's. Without the
    check it would take B's position (a duplicate key: the run would fail) or fork the chain."""
    keys = FixedMacKeys.generate()
    async with two_instances(store_database, tmp_path) as (a, b):
        audit_a, audit_b = AuditLog(a, keys=keys), AuditLog(b, keys=keys)
        assert await run_entry(audit_a, 1) == 1
        assert await run_entry(audit_a, 2) == 2  # chained onto A's own head
        assert await run_entry(audit_b, 3) == 3
        assert await audit_a.record(action="user.login", actor="alice") == 4  # durable
        assert await run_entry(audit_b, 5) == 5
        assert await positions(a) == [1, 2, 3, 4, 5]
        result = await audit_a.verify()
        assert (result.ok, result.entries) == (True, 5), result


async def test_two_instances_appending_at_once_keep_one_chain(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """Runs on both instances at once (each one's group commit batching its own), durable
    entries among them: every entry once, one intact chain."""
    keys = FixedMacKeys.generate()
    async with two_instances(store_database, tmp_path) as (a, b):
        logs = [AuditLog(a, keys=keys), AuditLog(b, keys=keys)]

        async def runner(audit: AuditLog, start: int) -> list[int]:
            got = []
            for i in range(start, start + 15):
                if i % 7 == 0:
                    got.append(await audit.record(action="datasource.update", target=f"ds{i}"))
                else:
                    got.append(await run_entry(audit, i))
            return got

        results = await asyncio.gather(*(runner(logs[n % 2], n * 100) for n in range(8)))
        recorded = sorted(p for got in results for p in got)
        assert recorded == list(range(1, 8 * 15 + 1))
        assert await positions(b) == recorded
        result = await logs[1].verify()
        assert (result.ok, result.entries) == (True, 8 * 15), result


class DroppingSinks(Sinks):
    """A file sink, and the writer's connection killed (from outside, as a failover or a
    restart would) when a batch is delivered: after the INSERT, before the COMMIT."""

    def __init__(self, sinks: Sinks, database: StoreDatabase) -> None:
        super().__init__(sinks.sinks)
        self.database = database
        self.armed = True

    def deliver(self, entries: Sequence[Mapping[str, Any]]) -> None:
        if self.armed:
            self.armed = False
            self.database.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name ="
                " 'appliance-store' AND state = 'idle in transaction'")
        super().deliver(entries)


@pytest.mark.parametrize("runs", [1, 5])
async def test_the_connection_dropping_before_the_commit_leaves_nothing_and_fails_the_runs(
        store_database: StoreDatabase, tmp_path: Path, runs: int) -> None:
    store = await open_pg(store_database, tmp_path)
    lines = tmp_path / "audit.jsonl"
    sinks = DroppingSinks(open_sinks([SinkSpec("file", str(lines))]), store_database)
    try:
        audit = AuditLog(store, keys=FixedMacKeys.generate(), sinks=sinks)
        sinks.armed = False
        assert await run_entry(audit, 0) == 1  # the head this process remembers
        sinks.armed = True
        # One run alone (committed at once), or five while others are under way (one batch of
        # the group commit): every one of them fails.
        with contextlib.ExitStack() as others:
            if runs > 1:
                others.enter_context(audit.run_under_way())
            outcomes = await asyncio.gather(*(run_entry(audit, i) for i in range(1, runs + 1)),
                                            return_exceptions=True)
        assert all(isinstance(o, AuditUnavailable) for o in outcomes), outcomes
        assert await positions(store) == [1]  # nothing of the batch was committed
        written = [json.loads(line) for line in lines.read_text().splitlines()]
        assert written[-1]["record"] == "withdrawn"  # the sink was told
        # The writer is made again at the next write, which reads the head (none remembered).
        assert await run_entry(audit, 99) == 2
        result = await audit.verify()
        assert (result.ok, result.entries) == (True, 2), result
    finally:
        await store.close()


async def test_execute_many_counts_what_an_insert_select_inserted(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """An INSERT … SELECT may insert nothing: its count is the server's, not one per row."""
    store = await open_pg(store_database, tmp_path)
    try:
        async with store.transaction() as tx:
            assert await tx.execute_many(
                "INSERT INTO meta (key, value) SELECT ?, ? WHERE 1 = 0", [("a", "1")]) == 0
            assert await tx.execute_many(
                "INSERT INTO meta (key, value) VALUES (?, ?)", [("b", "1"), ("c", "2")]) == 2
    finally:
        await store.close()
