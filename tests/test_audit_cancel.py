"""A cancellation that arrives while an audit commit is under way (its caller, or the group
commit's task, cancelled at COMMIT) ends the same on every path: one entry committed at once, or
a group commit's batch. The write is not cut short (a SQLite writer's thread would go on
without its caller); once it ends, the sinks' lines are withdrawn if, and only if, it failed:
never a committed entry's line marked withdrawn, never a rolled-back entry's line left standing.

A real SQLite store and a real file sink. Only the COMMIT's failure is injected: the writer's
step stops where SQLite's COMMIT comes (its rows inserted, the sinks written) until the test has
cancelled, then returns, or raises the `disk I/O error` a failed COMMIT raises (rolled back).
And a real PostgreSQL store behind a relay that holds COMMIT's answer back meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import AuditLog, FixedMacKeys
from appliance.audit.log import AuditUnavailable
from appliance.audit.sinks import open_sinks
from appliance.settings import SinkSpec
from appliance.store import SQLiteStore, Step, open_sqlite_store
from appliance.store.aiosqlite_private import run_on_thread
from tests.support.commit_relay import LostCommitAnswer, open_relayed

from .conftest import StoreDatabase

KEYS = FixedMacKeys.generate()


class AtCommit:
    """Holds the store's next write at its COMMIT until `release(fail)`."""

    def __init__(self, store: SQLiteStore) -> None:
        self.reached = threading.Event()
        self.released = threading.Event()
        self.fail = False
        real = store.write

        async def write(fn: Callable[[Step], Any], **options: Any) -> Any:
            def held(step: Step) -> Any:
                result = fn(step)  # the rows inserted, the sinks given their lines
                self.reached.set()
                self.released.wait(30)
                if self.fail:
                    raise sqlite3.OperationalError("disk I/O error")
                return result

            return await real(held, **options)

        store.write = write  # type: ignore[method-assign]  # this store's writes only

    async def wait(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, 30), "the write never reached COMMIT"

    def release(self, *, fail: bool) -> None:
        self.fail = fail
        self.released.set()


@pytest.mark.parametrize("fails", [False, True], ids=["committed", "failed"])
@pytest.mark.parametrize("path", ["one entry", "a batch"])
async def test_a_cancellation_at_commit_ends_alike_on_every_path(tmp_path: Path, path: str,
                                                                 fails: bool) -> None:
    sink = tmp_path / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(sink))])
    store = await open_sqlite_store(tmp_path / "audit.db")
    log = AuditLog(store, keys=KEYS, sinks=sinks)
    held = AtCommit(store)
    under_way = contextlib.ExitStack()
    try:
        if path == "a batch":  # three runs under way: their three entries make one batch
            for _ in range(3):
                under_way.enter_context(log.run_under_way())
            callers = [asyncio.create_task(log.record(action="query.run", target="query:q",
                                                      request_id=f"r{n}")) for n in range(3)]
            await held.wait()
            assert log._flusher is not None
            cancelled: asyncio.Future[Any] = log._flusher  # the batch's commit
        else:
            callers = [asyncio.create_task(log.record(action="user.create", target="user:x"))]
            await held.wait()
            cancelled = callers[0]
        cancelled.cancel()
        await asyncio.wait([cancelled])  # the cancellation is through before COMMIT ends
        held.release(fail=fails)
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
    finally:
        held.release(fail=fails)
        under_way.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*callers, return_exceptions=True)
        await log.close()  # waits for the write, and a failed one's withdrawal
        stored = await store.fetch_all("SELECT seq, hash FROM audit_log ORDER BY seq")
        chain = await log.verify()
        await store.close()
        sinks.close()

    if path == "a batch":  # the callers of a cancelled batch are told it failed
        assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes), outcomes
    else:
        assert isinstance(outcomes[0], asyncio.CancelledError), outcomes
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    entries = [(line["position"], line["hash"]) for line in lines if "record" not in line]
    withdrawn = [(line["from"], line["to"]) for line in lines if line.get("record") == "withdrawn"]
    assert len(entries) == len(callers)  # the sinks took them before COMMIT
    if fails:
        assert stored == []
        assert withdrawn == [(1, len(callers))]
    else:
        assert [(row["seq"], row["hash"]) for row in stored] == entries
        assert withdrawn == []
        assert chain.ok


async def test_a_cancellation_at_commit_on_a_postgresql_store_withdraws_nothing_committed(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """The same on a PostgreSQL store: the server has committed, its answer is held back while
    the caller is cancelled; the COMMIT is not cut short, so the entry is the store's and its
    line is not withdrawn (before, the cancelled COMMIT dropped the connection and withdrew the
    line of an entry the store held)."""
    sink = tmp_path / "audit.jsonl"
    async with LostCommitAnswer(store_database.server.port) as relay:
        store, sinks = await open_relayed(relay, store_database, tmp_path)
        log = AuditLog(store, keys=KEYS, sinks=sinks)
        try:
            first = await log.record(action="test.before")
            relay.arm(hold=True)
            caller = asyncio.create_task(log.record(action="user.create", target="user:x"))
            await asyncio.wait_for(relay.held.wait(), 30)
            caller.cancel()
            await asyncio.wait([caller])
            relay.released.set()
            await log.close()  # waits for the write
            stored = await store.fetch_all("SELECT seq, hash FROM audit_log ORDER BY seq")
            chain = await log.verify()
        finally:
            relay.released.set()
            await log.close()
            sinks.close()
            await store.close()
    assert caller.cancelled()
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [line.get("record", "entry") for line in lines] == ["entry", "entry"]
    assert [(row["seq"], row["hash"]) for row in stored] == \
        [(line["position"], line["hash"]) for line in lines]
    assert stored[0]["seq"] == first and chain.ok


# -- an entry in a caller's transaction (the store's commit hook) --------------------------------

# Two temporary tables whose foreign key is checked at COMMIT (both dialects): a child row with no
# parent makes the COMMIT itself fail, for real, after the block and the sinks' hand-over.
_DEFERRED_TABLES = (
    "CREATE TEMP TABLE held_parent (id INTEGER PRIMARY KEY)",
    "CREATE TEMP TABLE held_child (parent INTEGER REFERENCES held_parent (id)"
    " DEFERRABLE INITIALLY DEFERRED)",
)


class _HoldWriterThread:
    """A commit hook that, made after the audit log's, queues a wait on the SQLite writer's
    thread as the store goes to COMMIT: the COMMIT, queued behind it, runs when released."""

    def __init__(self, store: SQLiteStore, reached: threading.Event,
                 released: threading.Event) -> None:
        self.store, self.reached, self.released = store, reached, released
        self.waiting: asyncio.Future[Any] | None = None

    def _wait(self, conn: sqlite3.Connection) -> None:
        self.reached.set()
        self.released.wait(30)

    async def prepare(self) -> None:
        self.waiting = asyncio.ensure_future(
            run_on_thread(self.store._writer, self._wait))
        await asyncio.sleep(0)  # the wait is queued (the task's first step) before the COMMIT

    async def undo(self) -> None:
        pass


@pytest.mark.parametrize("fails", [False, True], ids=["committed", "failed"])
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_caller_cancelled_at_its_transactions_commit(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str, fails: bool) -> None:
    """An entry written in a caller's transaction, the caller cancelled while that transaction's
    COMMIT runs: the COMMIT is not cut short, and the entry's line is withdrawn if, and only if,
    the COMMIT failed (before, on SQLite a failed COMMIT left its line standing and its
    transaction open; on PostgreSQL a COMMIT that went through had its line withdrawn)."""
    sink = tmp_path / "audit.jsonl"
    reached, released = threading.Event(), threading.Event()
    relay: LostCommitAnswer | None = None
    async with contextlib.AsyncExitStack() as stack:
        if kind == "postgres":
            database: StoreDatabase = request.getfixturevalue("store_database")
            relay = await stack.enter_async_context(LostCommitAnswer(database.server.port))
            store, sinks = await open_relayed(relay, database, tmp_path)
        else:
            sinks = open_sinks([SinkSpec("file", str(sink))])
            store = await open_sqlite_store(tmp_path / "audit.db")
        stack.push_async_callback(store.close)
        stack.callback(sinks.close)
        log = AuditLog(store, keys=KEYS, sinks=sinks)
        stack.push_async_callback(log.close)
        stack.callback(released.set)
        if relay is not None:
            stack.callback(relay.released.set)
        first = await log.record(action="test.before")

        async def caller() -> None:
            async with store.transaction() as tx:
                await log.record(tx, action="user.create", target="user:x")
                for statement in _DEFERRED_TABLES:
                    await tx.execute(statement)
                if fails:  # no parent: the deferred check fails the COMMIT
                    await tx.execute("INSERT INTO held_child (parent) VALUES (1)")
                if isinstance(store, SQLiteStore):
                    tx.hook(_HoldWriterThread,
                            lambda: _HoldWriterThread(store, reached, released))
                elif relay is not None:
                    relay.arm(hold=True)

        task = asyncio.create_task(caller())
        if relay is not None:
            await asyncio.wait_for(relay.held.wait(), 30)  # the server has answered COMMIT
        else:
            assert await asyncio.to_thread(reached.wait, 30), "never reached COMMIT"
        task.cancel()
        await asyncio.wait([task], timeout=0.2)  # the cancellation is delivered meanwhile
        released.set()
        if relay is not None:
            relay.released.set()
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        after = await log.record(action="test.after")  # the writer is usable again
        stored = await store.fetch_all("SELECT seq, action, hash FROM audit_log ORDER BY seq")
        chain = await log.verify()

    assert isinstance(outcome, asyncio.CancelledError), outcome
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    records = [(line.get("record", "entry"), line.get("position", line.get("from")))
               for line in lines]
    if fails:
        assert [row["action"] for row in stored] == ["test.before", "test.after"]
        assert records == [("entry", first), ("entry", first + 1), ("withdrawn", first + 1),
                           ("entry", after)] and after == first + 1
    else:
        assert [row["action"] for row in stored] == ["test.before", "user.create", "test.after"]
        assert records == [("entry", first), ("entry", first + 1), ("entry", after)]
        assert [(row["seq"], row["hash"]) for row in stored] == \
            [(line["position"], line["hash"]) for line in lines]
    assert chain.ok
