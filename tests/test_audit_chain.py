"""The audit log's hash chain on a real SQLite store: append-only, edits, deletions and
reorderings found with their position (API, CLI and library), secrets redacted, group commit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.audit import AuditLog, AuditUnavailable, Context, redact, verify_store
from appliance.audit.log import _ACTION as ACTION_COLUMN  # where an entry tuple holds its action
from appliance.secret import Secret
from appliance.store import SQLiteStore, open_sqlite_store
from tests.conftest import clean_env, run_cli
from tests.test_auth_support import prepare, running

# A query run's entry, as the tests record it.
RUN = {"actor": "v", "query_id": "q", "datasource": "ds", "mode": "json", "duration_ms": 1,
       "row_count": 0}


@contextlib.asynccontextmanager
async def audit_log(tmp_path: Path,
                    entries: int = 6) -> AsyncIterator[tuple[SQLiteStore, AuditLog]]:
    store = await open_sqlite_store(tmp_path / "audit.db")
    log = AuditLog(store)
    try:
        for i in range(entries):
            async with store.transaction() as tx:
                await log.record(tx, action="test.step", target=f"thing:{i}",
                                 details={"i": i}, context=Context(actor="tester"))
        yield store, log
    finally:
        await log.close()
        await store.close()


def tamper(path: Path, *statements: str) -> None:
    """What someone with the file could do: drop the append-only triggers, then change rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


async def test_an_intact_chain_verifies(tmp_path: Path) -> None:
    async with audit_log(tmp_path) as (store, log):
        result = await log.verify()
        assert result.ok and result.entries == 6 and result.position is None
        rows = await store.fetch_all("SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq")
        assert rows[0]["prev_hash"] == "0" * 64
        for before, after in itertools.pairwise(rows):
            assert after["prev_hash"] == before["hash"]


async def test_the_store_refuses_updates_and_deletes(tmp_path: Path) -> None:
    async with audit_log(tmp_path) as (store, _):
        for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                async with store.transaction() as tx:
                    await tx.execute(sql)


@pytest.mark.parametrize(("statements", "position"), [
    # An edited field (hash left alone).
    (["UPDATE audit_log SET target = 'thing:evil' WHERE seq = 3"], 3),
    # An edited field with the entry's own hash recomputed is caught by the next link.
    (["UPDATE audit_log SET outcome = 'failed', hash = 'f' || substr(hash, 2) WHERE seq = 4"], 4),
    # A deleted entry in the middle.
    (["DELETE FROM audit_log WHERE seq = 2"], 2),
    # A deleted entry, later ones renumbered to hide the gap.
    (["DELETE FROM audit_log WHERE seq = 2",
      "UPDATE audit_log SET seq = seq - 1 WHERE seq > 2"], 2),
    # Two entries swapped (their positions exchanged).
    (["UPDATE audit_log SET seq = 100 WHERE seq = 4",
      "UPDATE audit_log SET seq = 4 WHERE seq = 5",
      "UPDATE audit_log SET seq = 5 WHERE seq = 100"], 4),
    # The first entry deleted.
    (["DELETE FROM audit_log WHERE seq = 1"], 1),
])
async def test_tampering_is_found_with_its_position(tmp_path: Path, statements: list[str],
                                                    position: int) -> None:
    async with audit_log(tmp_path) as (store, _):
        pass
    tamper(tmp_path / "audit.db", *statements)
    store = await open_sqlite_store(tmp_path / "audit.db")
    try:
        result = await verify_store(store)
    finally:
        await store.close()
    assert not result.ok
    assert result.position == position, result
    assert result.entries == position - 1


async def test_server_and_cli_report_the_broken_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running(state, require_2fa="", tokens=True) as appliance:
        admin = appliance.client(token=appliance.tokens["admin"])
        for name in ("u1-name", "u2-name", "u3-name"):
            resp = await admin.request("POST", "/api/v1/users", {
                "username": name, "role": "viewer", "password": "some-password-0123"})
            assert resp.status == 201
        ok = await admin.request("GET", "/api/v1/audit/verify")
        assert ok.status == 200 and ok.body["ok"] is True and ok.body["first_broken"] is None
        total = ok.body["entries"]
        tamper(appliance.store_path, "UPDATE audit_log SET details = '{}' WHERE seq = 5")
        broken = await admin.request("GET", "/api/v1/audit/verify")
        assert broken.body["ok"] is False
        assert broken.body["first_broken"]["position"] == 5
        assert total >= 7
    cli = run_cli("audit", "verify", "--state-dir", str(state), env=clean_env())
    assert cli.returncode == 1
    assert "position 5" in cli.stdout


async def test_cli_verify_ok(tmp_path: Path) -> None:
    state = tmp_path / "state"
    await prepare(state)
    cli = run_cli("audit", "verify", "--state-dir", str(state), env=clean_env())
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("ok: 3 entries")


async def test_paginated_listing(tmp_path: Path) -> None:
    async with running(tmp_path / "state", require_2fa="", tokens=True) as appliance:
        admin = appliance.client(token=appliance.tokens["admin"])
        newest = await admin.request("GET", "/api/v1/audit?limit=2")
        assert newest.status == 200 and len(newest.body["entries"]) == 2
        positions = [e["position"] for e in newest.body["entries"]]
        assert positions == sorted(positions, reverse=True)
        older = await admin.request("GET", f"/api/v1/audit?limit=2&before={positions[-1]}")
        assert [e["position"] for e in older.body["entries"]] == [positions[-1] - 1,
                                                                 positions[-1] - 2]
        assert newest.body["next"] == {"before": positions[-1]}
        forward = await admin.request("GET", "/api/v1/audit?after=0&limit=3")
        assert [e["position"] for e in forward.body["entries"]] == [1, 2, 3]
        assert forward.body["next"] == {"after": 3}
        entry = forward.body["entries"][0]
        for key in ("time", "actor", "action", "target", "outcome", "client", "request_id",
                    "details", "prev_hash", "hash"):
            assert key in entry
        for bad in ("limit=0", "limit=abc", "after=-1", "limit=100000"):
            assert (await admin.request("GET", f"/api/v1/audit?{bad}")).status == 400, bad


def test_redaction() -> None:
    details = {"password": "hunter2-hunter2", "config": {"host": "db", "api_key": "k"},
               "new_secret": Secret("s"), "fields": ["password"], "token_id": "abc",
               "nested": [{"Authorization": "Bearer x"}], "blob": b"\x00\x01"}
    out = redact(details)
    text = json.dumps(out)
    for value in ("hunter2", '"k"', "Bearer x", '"s"'):
        assert value not in text
    assert out["config"]["host"] == "db"
    assert out["fields"] == ["password"]  # names of fields are not secrets
    assert out["blob"] == "<2 bytes>"
    plain = {"n": 1, "b": True, "none": None, "f": 1.5, "SESSION_ID": 7, "Row_Count": 3}
    assert redact(plain) == {"n": 1, "b": True, "none": None, "f": 1.5,
                             "SESSION_ID": "<redacted>", "Row_Count": 3}
    deep: dict = {}
    cursor = deep
    for _ in range(12):
        cursor["d"] = {}
        cursor = cursor["d"]
    cursor["password"] = "hunter2"
    assert "hunter2" not in json.dumps(redact(deep)) and "<too deep>" in json.dumps(redact(deep))


async def test_record_run_group_commits_and_stays_ordered(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        commits = 0
        original = store.write

        async def counting(fn, **kwargs: bool):
            nonlocal commits
            commits += 1
            return await original(fn, **kwargs)

        store.write = counting  # type: ignore[method-assign]
        count = 200
        positions = await asyncio.gather(*[
            log.record_run(actor="viewer", query_id=f"q{i}", datasource="ds", mode="json",
                           duration_ms=1.5, row_count=i,
                           client="127.0.0.1", request_id=f"r{i}")
            for i in range(count)])
        assert sorted(positions) == list(range(1, count + 1))
        assert commits < count / 4, commits  # grouped, not one transaction per entry
        result = await log.verify()
        assert result.ok and result.entries == count
        row = await store.fetch_one("SELECT * FROM audit_log WHERE request_id = 'r7'")
        assert row is not None and row["action"] == "query.run" and row["target"] == "query:q7"
        assert json.loads(row["details"]) == {
            "datasource": "ds", "duration_ms": 1.5, "mode": "json", "row_count": 7,
            "truncated": False}


def batches_of(store: SQLiteStore) -> list[list[str]]:
    """Record the request ids of each batch the store commits."""
    seen: list[list[str]] = []
    original = store.write

    async def recording(fn, *, durable: bool = True):
        seen.append([entry[6] for entry in fn.keywords["entries"]])  # the request id
        return await original(fn, durable=durable)

    store.write = recording  # type: ignore[method-assign]
    return seen


async def _run_after(log: AuditLog, turns: int, name: str) -> int:
    """A query run that ends `turns` loop turns from now, then records its entry."""
    for _ in range(turns):
        await asyncio.sleep(0)
    return await log.record_run(**RUN, request_id=name)


async def test_a_batch_waits_a_few_turns_for_the_runs_in_flight(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        seen = batches_of(store)
        log.runs_in_flight = 3  # as the runner counts them: each will submit one entry
        await asyncio.gather(_run_after(log, 0, "a"), _run_after(log, 3, "b"),
                             _run_after(log, 6, "c"))
        assert seen == [["a", "b", "c"]]  # one commit for the three

        # Without runs in flight to wait for, a batch commits at once: the late run's
        # entry makes its own batch.
        log.runs_in_flight = 0
        await asyncio.gather(_run_after(log, 0, "d"), _run_after(log, 3, "e"))
        assert seen[1:] == [["d"], ["e"]]
        assert (await log.verify()).ok


async def test_a_batch_waits_for_runs_in_flight_no_more_than_its_turns(
        tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        seen = batches_of(store)
        log.runs_in_flight = 5  # four of them never end
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        counter = asyncio.create_task(count_turns())
        try:
            assert await _run_after(log, 0, "a") == 1
        finally:
            counter.cancel()
        assert seen == [["a"]]
        assert log.gather_turns <= turns <= log.gather_turns + 4, turns


async def test_a_batch_cancelled_while_it_gathers_fails_its_callers(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        log.runs_in_flight = 5
        run = asyncio.create_task(_run_after(log, 0, "a"))
        for _ in range(3):
            await asyncio.sleep(0)
        assert log._flusher is not None and not log._flusher.done()
        log._flusher.cancel()
        with pytest.raises(AuditUnavailable):
            await run
        assert await store.fetch_all("SELECT seq FROM audit_log") == []
        log.runs_in_flight = 0
        assert await _run_after(log, 0, "b") == 1  # the next batch starts afresh


async def test_only_query_run_batches_skip_the_fsync(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        seen: list[tuple[set[str], bool]] = []
        original = store.write

        async def recording(fn, *, durable: bool = True):
            seen.append(({e[ACTION_COLUMN] for e in fn.keywords["entries"]}, durable))
            return await original(fn, durable=durable)

        store.write = recording  # type: ignore[method-assign]
        await log.record_run(**RUN)
        await log.submit(action="tls.certificate.issue", actor="system")
        await asyncio.gather(log.record_run(**RUN),
                             log.submit(action="user.create", actor="admin"))
        assert seen[0] == ({"query.run"}, False)
        assert seen[1] == ({"tls.certificate.issue"}, True)
        assert all(durable for actions, durable in seen[2:] if actions != {"query.run"})
        assert (await log.verify()).ok


async def test_a_transaction_that_cannot_start_fails_the_callers(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):

        async def broken(fn, **kwargs: bool):
            raise RuntimeError("the store is gone")

        store.write = broken  # type: ignore[method-assign]
        results = await asyncio.wait_for(asyncio.gather(
            *[log.record_run(**RUN)
              for _ in range(5)], return_exceptions=True), timeout=5)
        assert all(isinstance(r, AuditUnavailable) for r in results), results


async def test_record_run_fails_closed(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        async with store.transaction() as tx:
            await tx.execute("CREATE TRIGGER audit_full BEFORE INSERT ON audit_log "
                             "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        results = await asyncio.gather(*[
            log.record_run(**RUN)
            for _ in range(5)], return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) for r in results)
        with pytest.raises(AuditUnavailable):  # the only run in flight: no batch, same rule
            await log.record_run(**RUN, alone=True)
        async with store.transaction() as tx:
            await tx.execute("DROP TRIGGER audit_full")
        assert await log.record_run(**RUN) == 1
        flusher = log._flusher
        assert await log.record_run(**RUN, alone=True) == 2
        assert log._flusher is flusher  # committed in the caller's task: no new batch
        assert (await log.verify()).ok


async def test_record_inside_a_failing_transaction_rolls_back(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        async with store.transaction() as tx:
            await tx.execute("CREATE TABLE things (name TEXT) STRICT")
            await tx.execute("CREATE TRIGGER audit_full BEFORE INSERT ON audit_log "
                             "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with pytest.raises(AuditUnavailable):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO things VALUES ('x')")
                await log.record(tx, action="thing.create", target="thing:x")
        assert await store.fetch_all("SELECT * FROM things") == []
        with pytest.raises(ValueError):
            async with store.transaction() as tx:
                await log.record(tx, action="x", outcome="maybe")


@settings(max_examples=int(os.environ.get("APPLIANCE_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datasource=st.text(), mode=st.text(max_size=10), error=st.none() | st.text(max_size=20),
       duration=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**9),
       row_count=st.integers(0, 2**63), truncated=st.booleans())
async def test_run_details_are_the_json_of_their_fields(
        tmp_path: Path, datasource: str, mode: str, error: str | None, duration: float,
        row_count: int, truncated: bool) -> None:
    """`record_run` writes its details text itself: it must be what the JSON encoder writes
    for the same details (quotes, control characters and any Unicode in the names included)."""
    log = AuditLog(None)  # type: ignore[arg-type]  # nothing is written: the entry is caught
    caught: list[tuple[str, ...]] = []

    async def submit(fields: tuple[str, ...], *, alone: bool = False) -> int:
        caught.append(fields)
        return 1

    log._submit = submit  # type: ignore[method-assign]
    await log.record_run(actor="v", query_id="q", datasource=datasource, mode=mode,
                         duration_ms=duration, row_count=row_count, truncated=truncated,
                         error=error)
    expected = {"datasource": datasource, "duration_ms": round(float(duration), 3),
                "mode": mode, "row_count": row_count, "truncated": truncated}
    if error is not None:
        expected["error"] = error
    assert caught[0][-1] == json.dumps(expected, sort_keys=True, ensure_ascii=False,
                                       separators=(",", ":"))
