"""The audit log's hash chain on a real SQLite store: append-only, edits, deletions and
reorderings found with their position (API, CLI and library), secrets redacted in every entry
(a query run's too), one write path, the runs under way and the group commit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audit import (
    RUN_ACTION,
    AuditLog,
    AuditUnavailable,
    Context,
    FixedMacKeys,
    redact,
    verify_store,
)
from appliance.audit.chain import MacState, encode_details, hash_values, mac_values
from appliance.audit.log import _ACTION as ACTION_COLUMN  # where an entry tuple holds its action
from appliance.errors import ApplianceError, StoreError, Unprocessable
from appliance.queries import CompiledQuery, Runner
from appliance.secret import Secret
from appliance.store import SQLiteStore, open_sqlite_store
from tests.conftest import clean_env, run_cli
from tests.support.app import prepare, running, store_env
from tests.support.audit import tamper_file

KEYS = FixedMacKeys.generate()  # the audit keys of these tests' stores (no keyring here)
# A query run's entry, as the tests record it (as the runner does: no transaction).
RUN = {"action": RUN_ACTION, "actor": "v", "target": "query:q",
       "details": {"datasource": "ds", "mode": "json", "duration_ms": 1, "row_count": 0,
                   "truncated": False}}


@contextlib.asynccontextmanager
async def audit_log(tmp_path: Path,
                    entries: int = 6) -> AsyncIterator[tuple[SQLiteStore, AuditLog]]:
    store = await open_sqlite_store(tmp_path / "audit.db")
    log = AuditLog(store, keys=KEYS)
    try:
        for i in range(entries):
            async with store.transaction() as tx:
                await log.record(tx, action="test.step", target=f"thing:{i}",
                                 details={"i": i}, context=Context(actor="tester"))
        yield store, log
    finally:
        await log.close()
        await store.close()


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
            with pytest.raises(StoreError, match="append-only"):
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
    tamper_file(tmp_path / "audit.db", *statements)
    store = await open_sqlite_store(tmp_path / "audit.db")
    try:
        result = await verify_store(store, KEYS)
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
        # Someone with the store's credentials drops the append-only triggers and edits a row.
        on = " ON audit_log" if appliance.outside.dialect == "postgresql" else ""
        for trigger in ("audit_log_no_update", "audit_log_no_delete"):
            appliance.execute(f"DROP TRIGGER IF EXISTS {trigger}{on}")
        appliance.execute("UPDATE audit_log SET details = '{}' WHERE seq = 5")
        broken = await admin.request("GET", "/api/v1/audit/verify")
        assert broken.body["ok"] is False
        assert broken.body["first_broken"]["position"] == 5
        assert total >= 7
    cli = run_cli("audit", "verify", "--state-dir", str(state), env=clean_env(**store_env(state)))
    assert cli.returncode == 1
    assert "position 5" in cli.stdout


async def test_cli_verify_ok(tmp_path: Path) -> None:
    state = tmp_path / "state"
    await prepare(state)
    cli = run_cli("audit", "verify", "--full", "--state-dir", str(state),
                  env=clean_env(**store_env(state)))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("full: ok, 3 entries checked")


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


async def test_runs_under_way_are_group_committed_and_stay_ordered(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        commits = 0
        original = store.write

        async def counting(fn, **kwargs: bool):
            nonlocal commits
            commits += 1
            return await original(fn, **kwargs)

        store.write = counting  # type: ignore[method-assign]  # counting wraps the store's write
        count = 200

        async def run(i: int) -> int:
            with log.run_under_way():  # as the runner holds it, until its entry is written
                await asyncio.sleep(0)  # its rows are read meanwhile
                return await log.record(
                    action=RUN_ACTION, target=f"query:q{i}",
                    details={"datasource": "ds", "duration_ms": 1.5, "mode": "json",
                             "row_count": i, "truncated": False},
                    context=Context(actor="viewer", client="127.0.0.1", request_id=f"r{i}"))

        positions = await asyncio.gather(*[run(i) for i in range(count)])
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

    async def recording(fn, *, durable: bool = True, **kwargs: bool):
        seen.append([entry[6] for entry in fn.keywords["entries"]])  # the request id
        return await original(fn, durable=durable, **kwargs)

    store.write = recording  # type: ignore[method-assign]  # recording wraps the store's write
    return seen


async def _run_after(log: AuditLog, turns: int, name: str) -> int:
    """A query run that ends `turns` loop turns from now, then records its entry."""
    for _ in range(turns):
        await asyncio.sleep(0)
    return await log.record(**RUN, request_id=name)


@contextlib.contextmanager
def runs_under_way(log: AuditLog, count: int) -> Iterator[None]:
    """`count` runs under way, as the runner declares each of its own."""
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(log.run_under_way())
        yield


async def test_a_batch_waits_a_few_turns_for_the_runs_under_way(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        seen = batches_of(store)
        with runs_under_way(log, 3):  # each will record one entry
            await asyncio.gather(_run_after(log, 0, "a"), _run_after(log, 3, "b"),
                                 _run_after(log, 6, "c"))
        assert seen == [["a", "b", "c"]]  # one commit for the three
        assert log.run_under_way().count == 0

        # Without runs under way to wait for, an entry commits at once: the late run's
        # entry makes its own commit.
        await asyncio.gather(_run_after(log, 0, "d"), _run_after(log, 3, "e"))
        assert seen[1:] == [["d"], ["e"]]
        assert (await log.verify()).ok


async def test_a_batch_waits_for_runs_under_way_no_more_than_its_turns(
        tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        seen = batches_of(store)
        under_way = runs_under_way(log, 5)  # four of them never end
        under_way.__enter__()
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
            under_way.__exit__(None, None, None)
        assert seen == [["a"]]
        assert log.gather_turns <= turns <= log.gather_turns + 4, turns


async def test_a_batch_cancelled_while_it_gathers_fails_its_callers(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        with runs_under_way(log, 5):
            run = asyncio.create_task(_run_after(log, 0, "a"))
            for _ in range(3):
                await asyncio.sleep(0)
            assert log._flusher is not None and not log._flusher.done()
            log._flusher.cancel()
            with pytest.raises(AuditUnavailable):
                await run
            assert await store.fetch_all("SELECT seq FROM audit_log") == []
            assert await _run_after(log, 0, "b") == 1  # the next batch starts afresh


async def test_only_query_run_batches_skip_the_fsync(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        seen: list[tuple[set[str], bool]] = []
        original = store.write

        async def recording(fn, *, durable: bool = True, **kwargs: bool):
            seen.append(({e[ACTION_COLUMN] for e in fn.keywords["entries"]}, durable))
            return await original(fn, durable=durable, **kwargs)

        store.write = recording  # type: ignore[method-assign]  # recording wraps the store's write
        await log.record(**RUN)
        await log.record(action="tls.certificate.issue", actor="system")
        with runs_under_way(log, 2):
            await asyncio.gather(log.record(**RUN), log.record(action="user.create",
                                                               actor="admin"))
        assert seen[0] == ({"query.run"}, False)
        assert seen[1] == ({"tls.certificate.issue"}, True)
        assert all(durable for actions, durable in seen[2:] if actions != {"query.run"})
        assert (await log.verify()).ok


async def test_a_transaction_that_cannot_start_fails_the_callers(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):

        async def broken(fn, **kwargs: bool):
            raise RuntimeError("the store is gone")

        store.write = broken  # type: ignore[method-assign]  # a write that fails, on purpose
        with runs_under_way(log, 5):
            results = await asyncio.wait_for(asyncio.gather(
                *[log.record(**RUN) for _ in range(5)], return_exceptions=True), timeout=5)
        assert all(isinstance(r, AuditUnavailable) for r in results), results


async def test_a_run_entry_fails_closed(tmp_path: Path) -> None:
    async with audit_log(tmp_path, entries=0) as (store, log):
        async with store.transaction() as tx:
            await tx.execute("CREATE TRIGGER audit_full BEFORE INSERT ON audit_log "
                             "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with runs_under_way(log, 5):
            results = await asyncio.gather(*[log.record(**RUN) for _ in range(5)],
                                           return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) for r in results)
        with log.run_under_way(), pytest.raises(AuditUnavailable):
            await log.record(**RUN)  # the only run under way: no batch, same rule
        async with store.transaction() as tx:
            await tx.execute("DROP TRIGGER audit_full")
        flusher = log._flusher
        with log.run_under_way():
            assert await log.record(**RUN) == 1
        assert await log.record(**RUN) == 2
        assert log._flusher is flusher  # committed in the caller's task: no batch
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


def test_every_entry_is_redacted_a_run_s_too(tmp_path: Path) -> None:
    """One write path: whatever the action and whether in a transaction or not, details pass
    through `redact`. A secret-looking key among a run's details is no exception."""

    async def check() -> None:
        async with audit_log(tmp_path, entries=0) as (store, log):
            run_details = {**RUN["details"], "password": "hunter2", "params": {"id": 7},
                           "token": Secret("s3cr3t")}
            with log.run_under_way():
                await log.record(**{**RUN, "details": run_details})
            await log.record(action="query.run.start", details={"datasource": "ds",
                                                               "api_key": "k3y"})
            async with store.transaction() as tx:
                await log.record(tx, action="user.create", details={"password": "hunter2"})
            await log.record(action="tls.certificate.issue", details={"secret": "hunter2"})
            rows = await store.fetch_all("SELECT action, details FROM audit_log ORDER BY seq")
            text = json.dumps([dict(row) for row in rows])
            for value in ("hunter2", "s3cr3t", "k3y", '"id"'):
                assert value not in text
            first = json.loads(rows[0]["details"])
            assert first == {"datasource": "ds", "duration_ms": 1, "mode": "json",
                             "row_count": 0, "truncated": False, "password": "<redacted>",
                             "params": "<redacted>", "token": "<redacted>"}
            assert (await log.verify()).ok

    asyncio.run(check())


@settings(max_examples=int(os.environ.get("APPLIANCE_FUZZ_EXAMPLES", "200")), deadline=None)
@given(st.dictionaries(st.text(), st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                       | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                       max_size=8))
def test_details_are_compact_json_with_sorted_keys(details: dict[str, object]) -> None:
    """The one encoder of entries: compact JSON, keys sorted, Unicode as it is."""
    text = encode_details(details)
    assert json.loads(text) == details
    assert list(json.loads(text)) == sorted(details)
    assert text == json.dumps(details, ensure_ascii=False, separators=(",", ":"),
                              sort_keys=True) or any(type(v) is float for v in details.values())


@settings(max_examples=int(os.environ.get("APPLIANCE_FUZZ_EXAMPLES", "200")), deadline=None)
@given(st.integers(1, 2**62), st.lists(st.text(), min_size=9, max_size=9))
def test_the_canonical_form_is_the_standard_library_s_compact_json(
        seq: int, texts: list[str]) -> None:
    """Entries already stored were hashed over `json.dumps(values, ensure_ascii=False,
    separators=(",", ":"))`: the chain's encoder writes the same bytes, so they keep verifying."""
    values = [seq, *texts]
    expected = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    assert hash_values(values) == hashlib.sha256(expected.encode()).hexdigest()


def test_a_hash_written_by_the_earlier_encoder_still_verifies() -> None:
    """This entry's hash was computed by the audit log before it used orjson (json's C encoder):
    quotes, control characters, non-ASCII and a float's exponent in the details text."""
    values = (7, "2026-01-31T12:00:00.123456+00:00", 'viewer "q"\n', "query.run",
              "query:q\u00e9\U0001f600", "ok", "::1", "req-\x01\t",
              '{"datasource":"pg","duration_ms":1e-07,"mode":"json","row_count":3,'
              '"truncated":false}', "0" * 64)
    assert hash_values(values) == (
        "7f67f671e81fc7f40ebb113e47dc20c45e8a2b359f7468249b62eea1817c315a")


class _Template:
    def bind(self, params: dict[str, object]) -> dict[str, object]:
        if "bad" in params:
            raise Unprocessable("parameter 'bad' is not one of this query's",
                                code="invalid_parameter")
        return params


class _Engine:
    """Just what the runner asks of an engine; notes how many runs are under way as it reads."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        limits = types.SimpleNamespace(max_rows=1000, statement_timeout_ms=5000,
                                       max_response_bytes=10**6)
        self.target = types.SimpleNamespace(name="ds", limits=limits)
        self.seen: list[int] = []

    async def collect(self, bound: object, *, timeout: float, fetch: int,
                      take: Callable[[list[object]], bool]) -> list[str]:
        self.seen.append(self.log.run_under_way().count)
        if bound == {"fail": True}:
            raise ApplianceError("the datasource is unavailable", code="datasource_unavailable")
        take([[1], [2]])
        return ["n"]

    @contextlib.asynccontextmanager
    async def open(self, bound: object, *, timeout: float, fetch: int,
                   stream: bool = False) -> AsyncIterator[types.SimpleNamespace]:
        async def batches() -> AsyncIterator[list[object]]:
            self.seen.append(self.log.run_under_way().count)
            yield [[1], [2]]

        yield types.SimpleNamespace(columns=["n"], batches=batches())


def _runner(log: AuditLog) -> tuple[Runner, _Engine]:
    engine = _Engine(log)
    template: Any = _Template()  # a stand-in for the binding compiler's template
    compiled = CompiledQuery(id="q", name="q", datasource_id="ds", kind="sqlite",
                             template=template, timeout_ms=None, max_rows=None, version=1)
    async def compiled_query(query_id: str) -> CompiledQuery:
        return compiled

    async def engine_of(datasource_id: str) -> _Engine:
        return engine

    queries = types.SimpleNamespace(
        audit=log, compiled=compiled_query,
        datasources=types.SimpleNamespace(engine=engine_of))
    return Runner(queries), engine  # type: ignore[arg-type]  # a stand-in query service


async def test_a_run_is_under_way_until_its_entry_is_written(tmp_path: Path) -> None:
    """The contract between the runner and the audit log: a run holds `run_under_way` from its
    binding until its entry is recorded, whichever way it delivers its rows and however it ends;
    its details are redacted on the way like any entry's."""
    async with audit_log(tmp_path, entries=0) as (store, log):
        runner, engine = _runner(log)
        context = Context(actor="viewer")
        run = await runner.run_buffered("q", {}, context=context)
        assert run.rows == [b"[1]", b"[2]"] and run.row_count == 2
        with pytest.raises(ApplianceError):
            await runner.run_buffered("q", {"fail": True}, context=context)
        with pytest.raises(Unprocessable):
            await runner.run_buffered("q", {"bad": 1}, context=context)
        async with runner.run_streamed("q", {}, context=context) as streamed:
            assert [batch async for batch in streamed.encoded_batches()] == [[b"[1]", b"[2]"]]
        assert engine.seen == [1, 1, 1]
        assert log.run_under_way().count == 0
        rows = await store.fetch_all("SELECT action, outcome, details FROM audit_log "
                                     "ORDER BY seq")
        assert [(r["action"], r["outcome"]) for r in rows] == [
            ("query.run", "ok"), ("query.run", "failed"), ("query.run", "failed"),
            ("query.run.start", "ok"), ("query.run", "ok")]
        assert json.loads(rows[1]["details"])["error"] == "datasource_unavailable"
        assert json.loads(rows[2]["details"])["error"] == "invalid_parameter"
        assert json.loads(rows[4]["details"])["mode"] == "ndjson"
        assert (await log.verify()).ok


def test_the_precomputed_mac_state_gives_hmac_digest_exactly() -> None:
    """The verifier's hot loop (`MacState`, RFC 2104 over precomputed pads) against the standard
    library's HMAC, for keys of every length an audit key may have and varied entries."""
    for length in (1, 16, 31, 32, 33, 63, 64):
        key = os.urandom(length)
        state = MacState(key)
        for seq in (1, 2, 10**12):
            values = [seq, "2026-12-03T12:00:00.000001+00:00", "ädmin", "query.run", "q:\n",
                      "ok", "", "r", '{"a":"\\u0000"}', "0" * 64]
            expected = hmac.digest(key, orjson.dumps([*values, 3]), "sha256").hex()
            assert state.mac((*values, 3)) == expected == mac_values(values, 3, key)
        assert state.mac((*values, 4)) != expected  # the version is covered
        assert key.hex() not in repr(state)
    with pytest.raises(ValueError):
        MacState(b"k" * 65)
