"""The keyed audit chain (issue 24) on real SQLite files and a real PostgreSQL store: each link an
HMAC under the keyring's audit key; tampering found at its first position (an edit with every
later link recomputed by plain SHA-256 or under a wrong key, a deleted or swapped entry, an
unkeyed entry after the boundary); a legacy chain upgraded behind a boundary entry; rotation and
retirement; a chain that starts at a checkpoint; incremental verification from the newest
marker (what it reads, what it writes when idle); fail-closed without a key; the CLI and API."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import bootstrap, metrics, settings, state_dir
from appliance.audit import (
    CHECKPOINT_ACTION,
    KEYED_ACTION,
    VERIFIED_ACTION,
    AuditLog,
    AuditUnavailable,
    BackgroundVerifier,
    Context,
    FixedMacKeys,
    verify_store,
)
from appliance.core import open_core
from appliance.egress import Dialer, PolicyHolder
from appliance.keyring import open_vault
from appliance.keyring.ring import Keyring
from appliance.keyring.rotation import rotate
from appliance.secret import Secret
from appliance.store import Store, open_store
from tests.conftest import clean_env, run_cli
from tests.support.app import TEST_TUNING, running, store_env
from tests.support.audit import (
    edit_and_relink,
    record,
    sha256_relink,
    tamper,
    unkeyed_relink,
    write_legacy_entries,
    wrong_key_relink,
)
from tests.support.shared_store import SHARED_STORE_KINDS, keyed_store


@pytest.fixture(params=SHARED_STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def rows(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in await store.fetch_all("SELECT * FROM audit_log ORDER BY seq")]


# -- the chain's links ---------------------------------------------------------------------------

async def test_every_entry_is_keyed_from_position_1_on_a_new_store(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 6)
        written = await rows(store)
        assert [r["mac_version"] for r in written] == [1] * 6
        assert all(len(r["hash"]) == 64 for r in written)
        result = await verify_store(store, vault)
        assert result.ok and result.entries == 6 and result.through == 6
        assert (result.legacy, result.keyed_from) == (0, 1)
        assert result.describe_chain() == "keyed from position 1"
        # The MAC covers the key version: the same entry claiming another version fails.
        await tamper(store, "UPDATE audit_log SET mac_version = 2 WHERE seq = 3")
        broken = await verify_store(store, FixedMacKeys({1: vault.mac_key_of(1) or b"",
                                                          2: vault.mac_key_of(1) or b""}))
        assert (broken.ok, broken.position) == (False, 3)


@pytest.mark.parametrize("relink", ["sha256", "sha256-unkeyed", "wrong-key"])
async def test_an_edit_with_every_later_link_recomputed_is_found_at_its_position(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, relink: str) -> None:
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 10)
        how = {"sha256": sha256_relink, "sha256-unkeyed": unkeyed_relink,
               "wrong-key": wrong_key_relink(os.urandom(32))}[relink]
        await edit_and_relink(store, 4, how)
        result = await verify_store(store, vault)
        assert not result.ok
        assert result.position == 4 and result.entries == 3, result
        reason = {"sha256": "does not match its MAC", "wrong-key": "does not match its MAC",
                  "sha256-unkeyed": "unkeyed entry after the chain became keyed"}[relink]
        assert reason in result.reason


@pytest.mark.parametrize(("statements", "position", "reason"), [
    (["DELETE FROM audit_log WHERE seq = 5"], 5, "entry 5 is missing"),
    (["UPDATE audit_log SET seq = 100 WHERE seq = 4",
      "UPDATE audit_log SET seq = 4 WHERE seq = 5",
      "UPDATE audit_log SET seq = 5 WHERE seq = 100"], 4, "previous-entry link"),
    (["UPDATE audit_log SET mac_version = 9 WHERE seq = 6"], 6, "audit key v9"),
])
async def test_deleted_swapped_and_unknown_key_entries_are_found(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, statements: list[str],
        position: int, reason: str) -> None:
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        await record(AuditLog(store, keys=vault), store, 8)
        await tamper(store, *statements)
        result = await verify_store(store, vault)
        assert (result.ok, result.position) == (False, position), result
        assert reason in result.reason


# -- the upgrade: a legacy chain, then the boundary ---------------------------------------------

async def test_a_legacy_store_upgraded_verifies_behind_its_boundary(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with keyed_store(kind, tmp_path, request) as (s, store, vault):
        # A keyring written before audit keys existed, and a chain written by the old code.
        async with store.transaction() as tx:
            ring = await vault.current(tx)
            await vault.write_keyring(tx, Keyring(ring.generation + 1, ring.active, ring.keys))
        await write_legacy_entries(store, 12)
        assert (await verify_store(store, FixedMacKeys.generate())).describe_chain() == (
            "12 legacy entries, not keyed")
        async with open_core(s, tuning=TEST_TUNING) as core:  # unsealing adds the audit key
            assert core.vault.keyring.audit and core.vault.mac_key() is not None
            async with core.store.transaction() as tx:
                await core.audit.record(tx, action="user.create", target="user:new")
            await core.audit.record(action="query.run", target="query:q")
            written = await rows(core.store)
            assert len(written) == 15
            boundary = written[12]
            assert (boundary["seq"], boundary["action"], boundary["mac_version"]) == (
                13, KEYED_ACTION, 1)
            assert json.loads(boundary["details"]) == {
                "legacy_head": {"position": 12, "hash": written[11]["hash"]}}
            assert [r["mac_version"] for r in written] == [None] * 12 + [1] * 3
            assert [r["target"] for r in written[13:]] == ["user:new", "query:q"]
            result = await core.audit.verify()
            assert result.ok and result.entries == 15, result
            assert result.describe_chain() == "12 legacy entries, then keyed from position 13"
            # A legacy entry edited, every later link recomputed: the boundary's MAC breaks.
            await edit_and_relink(core.store, 7, sha256_relink)
            broken = await core.audit.verify()
            assert (broken.ok, broken.position) == (False, 13), broken
            assert "does not match its MAC" in broken.reason


async def test_a_legacy_entry_after_the_boundary_is_tampering(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """An unkeyed entry after the chain became keyed (forged, or an old version still
    writing) is reported at its position."""
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        await record(AuditLog(store, keys=vault), store, 3)
        await write_legacy_entries(store, 1)
        result = await verify_store(store, vault)
        assert (result.ok, result.position) == (False, 4)
        assert "unkeyed entry after the chain became keyed at position 1" in result.reason


async def test_a_keyed_entry_without_the_boundary_is_refused(tmp_path: Path,
                                                             request: pytest.FixtureRequest
                                                             ) -> None:
    async with keyed_store("sqlite", tmp_path, request) as (_, store, vault):
        await write_legacy_entries(store, 3)
        log = AuditLog(store, keys=vault)
        await record(log, store, 2)
        # Take the boundary out and renumber: the first keyed entry no longer names the head.
        await tamper(store, "DELETE FROM audit_log WHERE seq = 4",
                     "UPDATE audit_log SET seq = seq - 1 WHERE seq > 4")
        result = await verify_store(store, vault)
        assert (result.ok, result.position) == (False, 4)


async def test_two_instances_add_one_audit_key_between_them(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with keyed_store(kind, tmp_path, request) as (s, store, vault):
        async with store.transaction() as tx:
            ring = await vault.current(tx)
            await vault.write_keyring(tx, Keyring(ring.generation + 1, ring.active, ring.keys))
        other = await open_store(s, Dialer(PolicyHolder(s.egress)))
        try:
            first = await open_vault(s, store, tuning=TEST_TUNING)
            second = await open_vault(s, other, tuning=TEST_TUNING)
            assert first.mac_key() is None and second.mac_key() is None
            added = await asyncio.gather(first.ensure_audit_key(), second.ensure_audit_key())
            assert sorted(added) == [False, True]
            await first.refresh()
            await second.refresh()
            assert first.mac_key() == second.mac_key() and first.mac_key() is not None
            assert list(first.keyring.audit) == [1]
        finally:
            await other.close()


# -- rotation ------------------------------------------------------------------------------------

async def test_entries_verify_across_a_rotation_and_the_data_key_s_retirement(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with keyed_store(kind, tmp_path, request) as (s, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 4)
        report = await rotate(vault)
        assert report.retired == [1]  # no field used data key 1: retired at once
        assert sorted(vault.keyring.keys) == [2] and sorted(vault.keyring.audit) == [1, 2]
        await record(log, store, 4, start=4)
        assert [r["mac_version"] for r in await rows(store)] == [1] * 4 + [2] * 4
        await rotate(vault)
        await record(log, store, 1, start=8)
        fresh = await open_vault(s, store, tuning=TEST_TUNING)  # another process's view
        assert sorted(fresh.keyring.audit) == [1, 2, 3] and sorted(fresh.keyring.keys) == [3]
        result = await verify_store(store, fresh)
        assert result.ok and result.entries == 9, result
        for version in (1, 2, 3):
            key = fresh.mac_key_of(version)
            assert key is not None
            for shown in (repr(fresh), repr(fresh.keyring), str(fresh.keyring.audit[version])):
                assert key.hex() not in shown and repr(key) not in shown


# -- a chain that starts at a checkpoint (what retention will leave) -----------------------------

async def test_a_chain_may_start_at_a_checkpoint(tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    async with keyed_store("sqlite", tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 10)
        head = await store.fetch_one("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        assert head is not None
        await log.record(action=CHECKPOINT_ACTION, details={
            "position": head["seq"], "mac": head["hash"], "pruned": 10, "legacy": 0,
            "keyed_from": 1})
        await record(log, store, 3, start=10)
        await tamper(store, "DELETE FROM audit_log WHERE seq <= 10")  # pruned by hand
        result = await verify_store(store, vault)
        assert result.ok and result.entries == 4 and result.through == 14, result
        # Without a checkpoint, the same cut is a gap at position 1.
        await tamper(store, "DELETE FROM audit_log WHERE seq = 11")
        cut = await verify_store(store, vault)
        assert (cut.ok, cut.position) == (False, 1)


async def test_a_forged_checkpoint_does_not_start_a_chain(tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    async with keyed_store("sqlite", tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 6)
        # An entry turned into a checkpoint without the key: its MAC no longer holds.
        row = await store.fetch_one("SELECT hash FROM audit_log WHERE seq = 3")
        assert row is not None
        details = json.dumps({"position": 3, "mac": row["hash"]})
        await tamper(store, f"UPDATE audit_log SET action = '{CHECKPOINT_ACTION}', "
                            f"details = '{details}' WHERE seq = 4",
                     "DELETE FROM audit_log WHERE seq <= 3")
        result = await verify_store(store, vault)
        assert (result.ok, result.position) == (False, 1)


# -- incremental verification --------------------------------------------------------------------

class CountingStore:
    """The store, counting the audit rows every read fetches and the lowest position read."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fetched = 0
        self.lowest: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _saw(self, found: list[Any]) -> None:
        for row in found:
            if "seq" in row.keys():
                self.fetched += 1
                seq = int(row["seq"])
                self.lowest = seq if self.lowest is None else min(self.lowest, seq)

    async def fetch_tuples(self, sql: str, params: Any = ()) -> list[Any]:
        found = await self._store.fetch_tuples(sql, params)
        if "audit_log" in sql and sql.startswith("SELECT seq,"):  # the walk's: seq first
            self._saw([{"seq": row[0]} for row in found])
        return found

    async def fetch_all(self, sql: str, params: Any = ()) -> list[Any]:
        found = await self._store.fetch_all(sql, params)
        if "audit_log" in sql:
            self._saw(found)
        return found

    async def fetch_one(self, sql: str, params: Any = ()) -> Any:
        found = await self._store.fetch_one(sql, params)
        if "audit_log" in sql and found is not None:
            self._saw([found])
        return found


async def test_incremental_verify_starts_at_the_newest_marker_and_finds_a_later_break(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with keyed_store(kind, tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 300)
        verifier = BackgroundVerifier(log, interval=60)
        first = await verifier.run_once()
        assert first is not None and first.ok and first.through == 300
        marker = (await rows(store))[-1]
        assert (marker["seq"], marker["action"], marker["outcome"]) == (301, VERIFIED_ACTION, "ok")
        details = json.loads(marker["details"])
        assert details["through"] == 300 and details["entries"] == 300 and details["ok"] is True
        assert details["mac"] == (await rows(store))[299]["hash"]
        await record(log, store, 6, start=300)  # 302..307
        counting = CountingStore(store)
        ok = await verify_store(counting, vault, full=False)  # type: ignore[arg-type]  # a proxy
        assert ok.ok and ok.mode == "incremental" and ok.start.marker == 301
        assert ok.entries == 7 and ok.through == 307
        assert counting.lowest == 301 and counting.fetched == 8  # the marker, then 301..307
        # A break after the marker is found by the next round, naming its position.
        await tamper(store, "UPDATE audit_log SET target = 'user:x' WHERE seq = 304")
        before_failures = metrics._audit_verified[1]
        counting = CountingStore(store)
        await verifier.release()  # the lease, for the verifier over the counting store
        broken = await BackgroundVerifier(AuditLog(counting, keys=vault),  # type: ignore[arg-type]  # a counting store wraps the real one
                                          interval=60).run_once()
        assert broken is not None and (broken.ok, broken.position) == (False, 304)
        assert counting.lowest is not None and counting.lowest >= 301
        assert metrics._audit_verified[1] == before_failures + 1
        newest = (await rows(store))[-1]
        assert (newest["action"], newest["outcome"]) == (VERIFIED_ACTION, "failed")
        assert json.loads(newest["details"])["broken_at"] == 304
        # A break before the marker is outside the incremental walk; --full finds it.
        await tamper(store, "UPDATE audit_log SET target = 'user:y' WHERE seq = 20")
        assert (await verify_store(store, vault, full=False)).position == 304
        assert (await verify_store(store, vault, full=True)).position == 20


async def test_an_idle_appliance_writes_no_marker(tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    async with keyed_store("sqlite", tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        verifier = BackgroundVerifier(log, interval=60)
        assert await verifier.run_once() is None  # an empty log
        await record(log, store, 5)
        assert (await verifier.run_once()) is not None
        count = len(await rows(store))
        for _ in range(3):
            assert await verifier.run_once() is None
        assert len(await rows(store)) == count == 6
        await record(log, store, 1, start=5)
        again = await verifier.run_once()
        assert again is not None and again.ok and again.start.marker == 6
        assert len(await rows(store)) == 8


async def test_a_forged_marker_is_reported(tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    async with keyed_store("sqlite", tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 5)
        await BackgroundVerifier(log, interval=60).run_once()
        details = json.dumps({"through": 6, "mac": "0" * 64, "ok": True})
        await tamper(store, f"UPDATE audit_log SET details = '{details}' WHERE seq = 6")
        result = await verify_store(store, vault, full=False)
        assert (result.ok, result.position) == (False, 6)
        assert "marker does not match its MAC" in result.reason


async def test_one_verifier_at_a_time_across_instances(tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    async with keyed_store("sqlite", tmp_path, request) as (_, store, vault):
        log = AuditLog(store, keys=vault)
        await record(log, store, 3)
        one, two = BackgroundVerifier(log, interval=60), BackgroundVerifier(log, interval=60)
        assert await one.run_once() is not None
        await record(log, store, 1, start=3)
        assert await two.run_once() is None  # the lease is the first one's
        assert await one.run_once() is not None


# -- writing needs the key ------------------------------------------------------------------------

async def test_no_key_no_entry(tmp_path: Path) -> None:
    """A sealed audit log with no way to unseal refuses every entry, and the action with it."""
    from appliance.store import open_sqlite_store

    store = await open_sqlite_store(tmp_path / "a.db")
    log = AuditLog(store)
    try:
        with pytest.raises(AuditUnavailable, match="keyring is sealed"):
            await log.record(action="query.run")
        with pytest.raises(AuditUnavailable):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
                await log.record(tx, action="user.create")
        assert await store.fetch_one("SELECT key FROM meta WHERE key = 'x'") is None
        assert await store.fetch_all("SELECT seq FROM audit_log") == []
    finally:
        await log.close()
        await store.close()


async def test_a_store_whose_keyring_cannot_be_opened_refuses_to_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    s = settings.load(env={}, flags={"state_dir": str(state)})
    await bootstrap.init_state(s, admin_user="admin", admin_password=Secret("admin-pass-0123"),
                               tuning=TEST_TUNING)
    secret = state / state_dir.INSTANCE_SECRET_FILE
    secret.unlink()  # another secret in its place: the keyring stays shut
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    async with open_core(s, unseal=False, tuning=TEST_TUNING) as core:
        before = len(await rows(core.store))
        with pytest.raises(AuditUnavailable, match="no audit key") as caught:
            await core.auth.users.create(username="later", role="viewer",
                                         password=Secret("viewer-pass-0123"),
                                         must_change_password=True, context=Context(actor="test"))
        assert "instance secret" in caught.value.message
        with pytest.raises(AuditUnavailable):
            await core.audit.record(action="query.run")
        assert await core.auth.users.get("later") is None
        assert len(await rows(core.store)) == before
    verify = run_cli("audit", "verify", "--state-dir", str(state), env=clean_env())
    assert verify.returncode != 0
    assert "the audit chain cannot be verified (no audit key: the instance secret" in (
        verify.stdout + verify.stderr)


# -- the CLI and the API ------------------------------------------------------------------------

def _cli(state: Path, *args: str) -> Any:
    return run_cli(*args, "--state-dir", str(state), env=clean_env(**store_env(state)))


async def test_cli_verbs_write_keyed_entries_from_a_sealed_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running(state, require_2fa=""):
        pass
    for name in ("cli-user", "cli-user-2"):
        added = _cli(state, "users", "add", name, "--role", "viewer")
        assert added.returncode == 0, added.stderr
    verified = _cli(state, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("incremental: no verified marker yet"), verified.stdout
    full = _cli(state, "audit", "verify", "--full")
    assert full.returncode == 0 and full.stdout.startswith("full: ok"), full.stdout
    assert "keyed from position 1" in full.stdout
    listed = _cli(state, "audit", "list", "--limit", "2")
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert ["cli-user-2" in e["target"] for e in entries] == [True, False]
    assert [e["mac_version"] for e in entries] == [1, 1]


async def test_status_and_background_verification_in_serve(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running(state, require_2fa="", tokens=True,
                       audit={"verify_interval": 0.2}) as appliance:
        admin = appliance.client(token=appliance.tokens["admin"])
        viewer = appliance.client(token=appliance.tokens["viewer"])
        assert (await viewer.request("GET", "/api/v1/audit/status")).status == 403
        deadline = time.monotonic() + 20
        while True:
            status = await admin.request("GET", "/api/v1/audit/status")
            assert status.status == 200
            if status.body["verified"] is not None:
                break
            assert time.monotonic() < deadline, status.body
            await asyncio.sleep(0.1)
        body = status.body
        assert body["verified"]["ok"] is True and body["audit_key_version"] == 1
        assert body["chain"] == {"legacy": 0, "keyed_from": 1,
                                 "summary": "keyed from position 1"}
        assert body["head"]["position"] >= body["verified"]["position"] >= 1
        incremental = await admin.request("GET", "/api/v1/audit/verify")
        assert incremental.body["ok"] is True and incremental.body["mode"] == "incremental"
        full = await admin.request("GET", "/api/v1/audit/verify?full=1")
        assert full.body["ok"] is True and full.body["mode"] == "full"
        assert full.body["entries"] >= incremental.body["entries"]
        bad = await admin.request("GET", "/api/v1/audit/verify?full=yes")
        assert bad.status == 400 and bad.code == "bad_query"
        # Idle: no new marker while nothing but the last marker is new.
        await asyncio.sleep(0.3)
        head = (await admin.request("GET", "/api/v1/audit/status")).body["head"]["position"]
        await asyncio.sleep(1.0)
        assert (await admin.request("GET", "/api/v1/audit/status")).body["head"][
            "position"] == head
        # An entry appended behind the appliance's back, without the key: a copy of the newest
        # marker (so the head looks like a marker: the idle check must not trust it). The next
        # round finds it at its position, in the status and the metrics.
        appliance.execute(
            "INSERT INTO audit_log (seq, time, actor, action, target, outcome, client,"
            " request_id, details, prev_hash, hash) SELECT seq + 1, time, 'intruder', action,"
            " target, outcome, client, request_id, details, hash, hash FROM audit_log"
            f" WHERE seq = {head}")
        deadline = time.monotonic() + 20
        while True:
            body = (await admin.request("GET", "/api/v1/audit/status")).body
            if body["verified"]["ok"] is False:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        assert body["verified"]["broken_at"] == head + 1
        assert metrics._audit_verified[1] >= 1
