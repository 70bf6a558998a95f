"""Retention of the audit log (issue 24) on real SQLite files and a real PostgreSQL store:
entries older than keep_days pruned behind a checkpoint, in bounded batches, only once verified;
the chain still verifies (incremental and full) from the checkpoint; a forged checkpoint is found;
an ordinary DELETE is still refused (migration 16's guard lets only the prune's own through);
and the prune of a real `serve` at its start, over entries written through the real write path
with an old clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import (
    CHECKPOINT_ACTION,
    AuditLog,
    BackgroundVerifier,
    chain_status,
    verify_store,
)
from appliance.audit import log as audit_log_module
from appliance.audit.retention import Pruner, cutoff_time
from appliance.core import open_core
from appliance.errors import StoreError
from appliance.store import Store
from tests.conftest import clean_env, run_cli, start_server
from tests.support.app import TEST_TUNING, make_settings, prepare, store_env
from tests.support.audit import is_sqlite, record, tamper
from tests.support.shared_store import SHARED_STORE_KINDS, keyed_store

# The append-only trigger's refusal as each store reports it (PostgreSQL: RAISE EXCEPTION).
REFUSED = "append-only|RaiseError"


@pytest.fixture(params=SHARED_STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def audit_clock(monkeypatch: pytest.MonkeyPatch, days_ago: int) -> Iterator[None]:
    """Entries written meanwhile, through the real write path, carry a time `days_ago` days
    back (the audit log's clock, `log._now`, shifted)."""
    with monkeypatch.context() as patch:
        patch.setattr(audit_log_module, "_now", lambda: cutoff_time(time.time(), days_ago))
        yield


async def positions(store: Store) -> list[int]:
    return [int(r["seq"]) for r in await store.fetch_all("SELECT seq FROM audit_log ORDER BY seq")]


async def entry(store: Store, seq: int) -> dict[str, Any]:
    row = await store.fetch_one("SELECT * FROM audit_log WHERE seq = ?", (seq,))
    assert row is not None
    return dict(row)


async def test_prune_writes_a_checkpoint_and_the_chain_still_verifies(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        with audit_clock(monkeypatch, 40):
            await record(log, store, 23)  # 1..23: old
        await record(log, store, 4, start=23)  # 24..27: young
        verifier = BackgroundVerifier(log, interval=60)
        pruner = Pruner(log, verifier, keep_days=30, batch=5)  # five transactions of deletes
        pruned = await pruner.run_once()
        # The verifier ran first (marker 28, through 27); the checkpoint is 29.
        assert pruned is not None, await positions(store)
        assert (pruned.first, pruned.through, pruned.count, pruned.checkpoint) == (1, 23, 23, 29)
        assert await positions(store) == list(range(24, 30))
        checkpoint = await entry(store, 29)
        assert checkpoint["action"] == CHECKPOINT_ACTION
        details = json.loads(checkpoint["details"])
        assert details["position"] == 23 and details["pruned"] == 23
        assert details["pruned_total"] == 23 and details["keyed_from"] == 1
        assert details["mac"] == (await entry(store, 24))["prev_hash"]
        for full in (True, False):
            result = await verify_store(store, vault, full=full)
            assert result.ok and result.through == 29, result
        full = await verify_store(store, vault)
        assert full.start.position == 23 and full.start.marker == 29 and full.entries == 6
        status = await chain_status(store, vault)  # the chain's kind, as the checkpoint says
        assert status["chain"]["keyed_from"] == 1 and status["head"]["position"] == 29
        # The guard is closed again: an ordinary DELETE is refused, also of a pruned range.
        with pytest.raises(StoreError, match=REFUSED):
            async with store.transaction() as tx:
                await tx.execute("DELETE FROM audit_log WHERE seq = 24")
        if is_sqlite(store):
            guard = await store.fetch_one("SELECT through FROM audit_prune_guard")
            assert guard == {"through": 0}
        # Nothing more is old enough: a second prune does nothing, writes nothing.
        assert await pruner.run_once() is None
        assert (await positions(store))[-1] == 29
        # Later entries age past keep_days: the next prune goes behind a new checkpoint.
        with audit_clock(monkeypatch, 35):
            await record(log, store, 3, start=27)  # 30..32, old (written "late": clock skew)
        second = await Pruner(log, verifier, keep_days=30, batch=2).run_once()
        # Entry 24 is young: the prune stops at the first young entry, whatever follows.
        assert second is None
        for full in (True, False):
            assert (await verify_store(store, vault, full=full)).ok


async def test_an_ordinary_delete_is_refused_and_the_guard_is_per_transaction(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 4)
        for statement in ("DELETE FROM audit_log WHERE seq = 1", "DELETE FROM audit_log",
                          "UPDATE audit_log SET actor = 'x' WHERE seq = 2"):
            with pytest.raises(StoreError, match=REFUSED):
                async with store.transaction() as tx:
                    await tx.execute(statement)
        # The guard bounds even the prune's own DELETE to the positions it set.
        with pytest.raises(StoreError, match=REFUSED):
            async with store.transaction() as tx:
                if is_sqlite(store):
                    await tx.execute("UPDATE audit_prune_guard SET through = 2 WHERE id = 1")
                else:
                    await tx.fetch_one("SELECT set_config('appliance.audit_prune', '2', true)")
                await tx.execute("DELETE FROM audit_log WHERE seq <= 3")
        if not is_sqlite(store):  # a committed SET LOCAL is gone with its transaction
            async with store.transaction() as tx:
                await tx.fetch_one("SELECT set_config('appliance.audit_prune', '9', true)")
            with pytest.raises(StoreError, match=REFUSED):
                async with store.transaction() as tx:
                    await tx.execute("DELETE FROM audit_log WHERE seq = 1")
        assert await positions(store) == [1, 2, 3, 4]


async def test_unverified_entries_are_never_pruned(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    async with keyed_store("sqlite", tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        with audit_clock(monkeypatch, 40):
            await record(log, store, 10)  # 1..10
        # No verification marker yet (and no verifier to run): nothing is pruned.
        assert await Pruner(log, None, keep_days=30).run_once() is None
        verifier = BackgroundVerifier(log, interval=60)
        await verifier.run_once()  # marker 11, through 10
        with audit_clock(monkeypatch, 40):
            await record(log, store, 5, start=10)  # 12..16: old, not verified
        pruned = await Pruner(log, None, keep_days=30).run_once()
        assert pruned is not None and pruned.through == 10  # the marker's through, no further
        assert await positions(store) == [11, 12, 13, 14, 15, 16, 17]
        assert (await verify_store(store, vault, full=True)).ok
        # A broken chain is kept whole: the verifier records the break, the prune stops.
        await tamper(store, "UPDATE audit_log SET target = 'user:x' WHERE seq = 13")
        broken = await verifier.run_once()
        assert broken is not None and not broken.ok and broken.position == 13
        assert await Pruner(log, verifier, keep_days=30).run_once() is None
        assert (await positions(store))[0] == 11


async def test_a_forged_checkpoint_is_found(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        with audit_clock(monkeypatch, 40):
            await record(log, store, 8)
        await record(log, store, 2, start=8)
        pruned = await Pruner(log, BackgroundVerifier(log, interval=60), keep_days=30).run_once()
        assert pruned is not None and pruned.through == 8
        checkpoint = pruned.checkpoint
        original = (await entry(store, checkpoint))["details"]
        # Wrong MAC: the checkpoint's details edited (a later position) without the key.
        forged = json.loads(original) | {"position": 9}
        await tamper(store, f"UPDATE audit_log SET details = '{json.dumps(forged)}' "
                            f"WHERE seq = {checkpoint}")
        result = await verify_store(store, vault, full=True)
        assert (result.ok, result.position) == (False, 1), result
        # Wrong position, under the key (a bug, or the key's holder): the link does not match.
        await tamper(store, f"UPDATE audit_log SET details = '{original}' WHERE seq = {checkpoint}")
        assert (await verify_store(store, vault, full=True)).ok
        await log.record(action=CHECKPOINT_ACTION, details=json.loads(original) | {"position": 7})
        result = await verify_store(store, vault, full=True)
        assert (result.ok, result.position) == (False, 8), result
        assert "missing" in result.reason


async def test_serve_prunes_at_start_and_the_chain_verifies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    with audit_clock(monkeypatch, 40):  # init, users and runs written 40 days ago
        await prepare(state, users=("viewer",), fresh=True)
        async with open_core(make_settings(state), tuning=TEST_TUNING) as core:
            await record(core.audit, core.store, 20)
    async with open_core(make_settings(state), unseal=False) as core:
        old_head = (await positions(core.store))[-1]
    server = start_server(["serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
                          cwd=tmp_path, env=clean_env(APPLIANCE_AUDIT_KEEP_DAYS="30",
                                                      **store_env(state)))
    try:
        deadline = time.monotonic() + 30
        while True:
            async with open_core(make_settings(state), unseal=False) as core:
                checkpoint = await core.store.fetch_one(
                    "SELECT seq, details FROM audit_log WHERE action = ?", (CHECKPOINT_ACTION,))
                first = (await positions(core.store))[0]
            if checkpoint is not None and first > 1:
                break
            assert time.monotonic() < deadline, "serve pruned nothing"
            await asyncio.sleep(0.3)
    finally:
        assert server.stop() == 0
    details = json.loads(checkpoint["details"])
    assert details["position"] == old_head and first == old_head + 1, (details, first)
    assert details["keep_days"] == 30 and details["pruned"] == old_head
    for args in ((), ("--full",)):
        done = run_cli("audit", "verify", *args, "--state-dir", str(state),
                       env=clean_env(**store_env(state)))
        assert done.returncode == 0 and "ok" in done.stdout, done
