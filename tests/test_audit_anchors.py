"""Anchors of the audit chain's head on a real SQLite store: a cut tail (the last 50 rows deleted,
as an attacker with write access would, triggers dropped) and a rolled-back store (an earlier
copy of the file, then more entries) are found and named; an intact store passes; pruned
anchors are skipped and counted; the Anchorer writes the log line and the sinks' records; the
anchors are read from a file sink, the JSON log and a real journald's `journalctl -o json`; and
`appliance audit verify --anchors` exits 0, 1 or 2 with a clear line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance import logs
from appliance.audit import AuditLog, Context, FixedMacKeys
from appliance.audit.anchors import (
    ANCHOR_MESSAGE,
    Anchorer,
    AnchorSourceError,
    check_store_anchors,
    parse_anchors,
    read_anchor_file,
    read_journal_anchors,
)
from appliance.audit.sinks import Sinks, open_sinks
from appliance.core import open_core
from appliance.settings import SinkSpec
from appliance.store import Store, open_sqlite_store
from tests.conftest import clean_env, run_cli
from tests.support.app import make_settings, prepare, store_env
from tests.support.audit import tamper_file
from tests.support.cli import run_verb
from tests.support.journald import journald
from tests.support.outside_store import OutsideStore

HEAD_SQL = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"


async def head_of(store: Store) -> tuple[int, str] | None:
    row = await store.fetch_one(HEAD_SQL)
    return (int(row["seq"]), str(row["hash"])) if row else None


class Appliance:
    """A store, its audit log and sinks, entries delivered the way the write path will."""

    def __init__(self, store: Store, sinks: Sinks, audit: AuditLog | None = None) -> None:
        self.store = store
        self.audit = audit or AuditLog(store, keys=FixedMacKeys.generate())
        self.sinks = sinks
        self.anchorer = Anchorer(lambda: head_of(store), sinks, interval=3600, instance="i-1")

    async def record(self, count: int, *, every: int = 0) -> None:
        """`count` entries, each delivered to the sinks; an anchor every `every` entries."""
        for n in range(count):
            async with self.store.transaction() as tx:
                position = await self.audit.record(tx, action="query.run", target=f"query:{n}",
                                                   details={"n": n},
                                                   context=Context(actor="alice"))
            row = await self.store.fetch_one("SELECT * FROM audit_log WHERE seq = ?",
                                             (position,))
            assert row is not None
            await asyncio.to_thread(self.sinks.deliver, [dict(row)])
            if every and position % every == 0:
                await self.anchorer.anchor()

    async def close(self) -> None:
        await self.audit.close()
        await self.store.close()


@asynccontextmanager
async def appliance(db: Path, sink: Path) -> AsyncIterator[Appliance]:
    app = Appliance(await open_sqlite_store(db), open_sinks([SinkSpec("file", str(sink))]))
    try:
        yield app
    finally:
        await app.close()


async def check(db: Path, sink: Path) -> Any:
    store = await open_sqlite_store(db)
    try:
        return await check_store_anchors(store, read_anchor_file(str(sink)))
    finally:
        await store.close()


async def test_an_intact_store_agrees_with_its_anchors(tmp_path: Path) -> None:
    db, sink = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    async with appliance(db, sink) as app:
        await app.record(200, every=25)
    found = read_anchor_file(str(sink))
    assert len(found.anchors) == 200 + 8 and found.malformed == 0
    result = await check(db, sink)
    assert result.ok and result.checked == 208 and result.pruned == 0


async def test_a_cut_tail_is_found(tmp_path: Path) -> None:
    db, sink = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    async with appliance(db, sink) as app:
        await app.record(200, every=25)
    tamper_file(db, "DELETE FROM audit_log WHERE seq > 150")
    result = await check(db, sink)
    assert not result.ok and result.position == 151
    assert result.reason.startswith("the log was cut: anchor at 200 (")
    assert result.reason.endswith("but the log ends at 150")
    # only the anchor records (no entry lines): found all the same
    anchors_only = tmp_path / "anchors.jsonl"
    anchors_only.write_text("".join(line + "\n" for line in sink.read_text().splitlines()
                                    if '"record":"anchor"' in line))
    result = await check(db, anchors_only)
    assert not result.ok and "anchor at 200" in result.reason


async def test_a_rolled_back_store_is_found(tmp_path: Path) -> None:
    db, sink = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    async with appliance(db, sink) as app:
        await app.record(100, every=25)
    earlier = tmp_path / "earlier.db"
    shutil.copy(db, earlier)  # closed: the WAL is checkpointed into the file
    async with appliance(db, sink) as app:
        await app.record(100, every=25)
    # The attacker puts the earlier copy back; the appliance goes on writing after it.
    shutil.copy(earlier, db)
    async with appliance(db, sink) as app:
        await app.record(120, every=25)
        head = await head_of(app.store)
    assert head is not None and head[0] == 220
    result = await check(db, sink)
    assert not result.ok and result.position == 101
    assert result.reason.startswith("entry 101 differs from its anchor (")
    assert result.reason.endswith("the store was rolled back or rewritten")


async def test_an_edited_entry_is_found_and_pruned_anchors_are_skipped(tmp_path: Path) -> None:
    db, sink = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    async with appliance(db, sink) as app:
        await app.record(60, every=20)
    tamper_file(db, "DELETE FROM audit_log WHERE seq <= 20")  # as retention prunes
    result = await check(db, sink)
    assert result.ok and result.pruned == 21 and result.checked == 40 + 2
    tamper_file(db, "UPDATE audit_log SET hash = '" + "e" * 64 + "' WHERE seq = 33")
    result = await check(db, sink)
    assert not result.ok and result.position == 33 and "differs" in result.reason
    tamper_file(db, "DELETE FROM audit_log WHERE seq = 31")
    result = await check(db, sink)
    assert result.position == 31 and "missing from the store" in result.reason


async def test_withdrawn_lines_are_not_the_store_s(tmp_path: Path) -> None:
    """A batch a required sink refused was rolled back: its positions are written again with
    other MACs; the first lines, withdrawn, raise no alarm."""
    db, sink = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    async with appliance(db, sink) as app:
        await app.record(5)
        phantom = [{"seq": n, "time": "t", "hash": f"{n:064x}", "prev_hash": "0" * 64,
                    "details": "{}"} for n in (6, 7)]
        app.sinks.deliver(phantom)
        app.sinks.withdraw(phantom)  # the commit failed after the sinks took the batch
        await app.record(5)
    assert (await check(db, sink)).ok
    # without the withdrawn line, the same file is an alarm
    lines = [line for line in sink.read_text().splitlines() if '"withdrawn"' not in line]
    bare = tmp_path / "bare.jsonl"
    bare.write_text("\n".join(lines) + "\n")
    result = await check(db, bare)
    assert not result.ok and result.position == 6


async def anchored(anchorer: Anchorer, position: int, timeout: float = 20) -> None:
    """Until the anchorer's schedule has anchored `position` (a loaded machine may be slow)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while anchorer.last is None or anchorer.last[0] != position:
        assert loop.time() < deadline, f"no anchor at {position}: {anchorer.last}"
        await asyncio.sleep(0.02)


async def test_the_anchorer_logs_and_writes_to_every_sink_when_the_head_moved(
        tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JSONFormatter())
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # `log.level = "warning"`: anchors are written all the same
    db, sink = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    try:
        async with appliance(db, sink) as app:
            app.anchorer.interval = 0.05
            app.anchorer.start()
            await app.record(3)
            await anchored(app.anchorer, 3)
            await asyncio.sleep(0.3)  # several intervals more: the head did not move
            await app.record(2)
            await anchored(app.anchorer, 5)
            await app.record(1)
            await app.anchorer.stop()  # the last head, once more at shutdown
            await app.anchorer.stop()  # nothing moved: nothing written
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    anchors = [line for line in lines if line["message"] == ANCHOR_MESSAGE]
    positions = [a["position"] for a in anchors]
    # each time the head moved (a loaded machine may anchor between two entries of a batch),
    # never twice the same head, and the last one at stop
    assert positions == sorted(set(positions)) and {3, 5} <= set(positions)
    assert positions[-1] == 6
    assert all(a["logger"] == "appliance.audit.anchor" and a["instance"] == "i-1"
               and len(a["hash"]) == 64 for a in anchors)
    records = [json.loads(line) for line in sink.read_text().splitlines()
               if '"record":"anchor"' in line]
    assert [(r["position"], r["hash"]) for r in records] == [(a["position"], a["hash"])
                                                              for a in anchors]
    assert set(records[0]) == {"record", "position", "hash", "time", "instance"}
    # the appliance's own JSON log is an anchor file too
    log_file = tmp_path / "appliance.log"
    log_file.write_text(stream.getvalue())
    assert (await check(db, log_file)).ok
    tamper_file(db, "DELETE FROM audit_log WHERE seq > 4")
    result = await check(db, log_file)
    assert not result.ok and result.position == 5 and "anchor at 6" in result.reason


def test_malformed_lines_are_counted_never_raised() -> None:
    good = json.dumps({"record": "anchor", "position": 3, "hash": "a" * 64, "time": "t"})
    found = parse_anchors([
        good, "not json", "[1, 2]", '{"record": "anchor", "position": "3", "hash": "x"}',
        '{"record": "anchor", "position": 4, "hash": "' + "A" * 64 + '"}',
        '{"record": "withdrawn", "from": null}', '{"message": "listening"}', "", b"\xff\xfe",
        '{"__CURSOR": "c", "MESSAGE": "plain text of another program"}',
        '{"__CURSOR": "c", "APPLIANCE_AUDIT_JSON": null}',
    ])
    assert [a.position for a in found.anchors] == [3]
    assert found.malformed == 7 and found.lines == 11


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AnchorSourceError, match=r"cannot read anchors from .*missing"):
        read_anchor_file(str(tmp_path / "missing"))
    with pytest.raises(AnchorSourceError, match="Is a directory"):
        read_anchor_file(str(tmp_path))


async def test_anchors_from_a_real_journal(tmp_path: Path) -> None:
    with journald() as journal:
        db = tmp_path / "audit.db"
        sinks = open_sinks([SinkSpec("journal")], socket_paths={"journal": journal.socket})
        app = Appliance(await open_sqlite_store(db), sinks)
        try:
            await app.record(30, every=10)
        finally:
            await app.close()
        journal.wait_for(33, "SYSLOG_IDENTIFIER=appliance-audit")
        found = await asyncio.to_thread(read_journal_anchors, namespace=journal.namespace)
        assert len(found.anchors) == 33 and found.malformed == 0
        tamper_file(db, "DELETE FROM audit_log WHERE seq > 25")
        store = await open_sqlite_store(db)
        try:
            result = await check_store_anchors(store, found)
        finally:
            await store.close()
        assert not result.ok and "anchor at 30" in result.reason


def test_no_journalctl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(AnchorSourceError, match="journalctl is not installed"):
        read_journal_anchors()


# -- the CLI ---------------------------------------------------------------------------------------


async def _record_with_anchors(state: Path, sink: Path, count: int) -> None:
    settings = make_settings(state)
    async with open_core(settings) as core:  # unsealed: the store's own audit key
        app = Appliance(core.store, open_sinks([SinkSpec("file", str(sink))]), core.audit)
        for row in await core.store.fetch_all("SELECT * FROM audit_log ORDER BY seq"):
            app.sinks.deliver([dict(row)])  # the entries `prepare` wrote
        await app.record(count, every=10)
        await app.audit.close()


def test_cli_verify_with_anchors(tmp_path: Path) -> None:
    state, sink = tmp_path / "state", tmp_path / "audit.jsonl"
    asyncio.run(prepare(state))
    asyncio.run(_record_with_anchors(state, sink, 60))
    env = clean_env(**store_env(state))
    done = run_cli("audit", "verify", "--state-dir", str(state), "--anchors", str(sink), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("ok: ") and "anchors agree" in done.stdout

    outside = OutsideStore(make_settings(state))
    try:
        on = " ON audit_log" if outside.dialect == "postgresql" else ""
        outside.execute(f"DROP TRIGGER IF EXISTS audit_log_no_delete{on}")
        end = outside.query("SELECT MAX(seq) AS m FROM audit_log")[0]["m"]
        outside.execute("DELETE FROM audit_log WHERE seq > ?", (end - 50,))
    finally:
        outside.close()
    done = run_verb("audit", "verify", "--state-dir", str(state), "--anchors", str(sink),
                    env=env)
    assert done.returncode == 1
    last = done.stdout.splitlines()[-1]
    assert last.startswith(f"ANCHOR MISMATCH at position {end - 49}: the log was cut: anchor "
                           f"at {end} (")
    assert last.endswith(f"but the log ends at {end - 50}")
    # the chain itself still verifies: without anchors, the cut is not seen
    assert run_verb("audit", "verify", "--state-dir", str(state), env=env).returncode == 0


def test_cli_anchors_that_cannot_be_read_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    asyncio.run(prepare(state))
    env = clean_env(**store_env(state))
    done = run_verb("audit", "verify", "--state-dir", str(state), "--anchors",
                    str(tmp_path / "missing.jsonl"), env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: cannot read anchors from ")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\x01 not json\n{\"record\": \"anchor\"}\n" * 10)
    done = run_verb("audit", "verify", "--state-dir", str(state), "--anchors", str(garbage),
                    env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"error: no anchor in {garbage} (20 lines, 20 malformed): "
                                   "nothing to compare")
