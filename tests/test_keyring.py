"""The keyring in-process: sealing, tampering, secret sources, wrong keys, rotation and
change-password, against real SQLite files in a real state directory."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import state_dir
from appliance.keyring import (
    DEFAULT_TUNING,
    InstanceSecretMissing,
    KeyringCorrupted,
    SealedFieldError,
    WrongInstanceSecret,
    maintenance,
)
from appliance.keyring.kdf import ScryptParams
from appliance.keyring.maintenance import KeyringBusy, exclusive
from appliance.keyring.password import change_instance_secret
from appliance.keyring.rotation import rotate, status
from appliance.keyring.sealing import FormatError, open_field, seal_field
from appliance.keyring.sources import SOURCE_CREDENTIAL, InstanceSecret
from appliance.propagation import ChangeFollower
from appliance.secret import Secret
from appliance.store.lease import Lease
from tests.support.keyring import (
    TEST_TUNING,
    check_all,
    init_state,
    make_settings,
    open_all,
    plaintexts,
    populate,
    raw_sql,
)

# --- the sealed format --------------------------------------------------------------------------

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=4096), kind=st.text(max_size=20),
       record_id=st.text(max_size=40), field=st.text(max_size=20),
       version=st.integers(min_value=1, max_value=2**32 - 1))
def test_round_trip_arbitrary_bytes(value, kind, record_id, field, version):
    blob = seal_field(KEY, version, kind, record_id, field, value)
    assert open_field(KEY, kind, record_id, field, blob) == value
    if value:
        assert value not in blob or len(value) < 4
    with pytest.raises(FormatError):
        open_field(OTHER_KEY, kind, record_id, field, blob)
    with pytest.raises(FormatError):
        open_field(KEY, kind, record_id, field + "x", blob)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=500))
def test_round_trip_unicode(text):
    blob = seal_field(KEY, 1, "datasource", "ü-1", "pässword", text.encode())
    assert open_field(KEY, "datasource", "ü-1", "pässword", blob).decode() == text


def test_nonce_is_random_and_version_byte_leads():
    a = seal_field(KEY, 7, "k", "r", "f", b"same")
    b = seal_field(KEY, 7, "k", "r", "f", b"same")
    assert a != b
    assert a[0] == 2 and int.from_bytes(a[1:5], "big") == 7
    assert len(a) == 5 + 12 + 4 + 16


# --- the vault ----------------------------------------------------------------------------------


@pytest.fixture
async def opened(state: Path):
    s = await init_state(state)
    store, vault = await open_all(s)
    try:
        yield s, store, vault
    finally:
        await store.close()


async def test_put_get_fields_delete(opened):
    _, store, vault = opened
    async with store.transaction() as tx:
        await vault.put(tx, "datasource", "a", "password", b"hunter2")
        await vault.put(tx, "datasource", "a", "token", b"t0k")
        await vault.put(tx, "datasource", "b", "password", b"other")
    got = await vault.get("datasource", "a", "password")
    assert isinstance(got, Secret) and got.reveal() == b"hunter2"
    assert repr(got) == str(got) == "<secret>"
    assert await vault.fields("datasource", "a") == {"password", "token"}
    assert await vault.get("datasource", "a", "nope") is None
    async with store.transaction() as tx:
        await vault.put(tx, "datasource", "a", "password", b"changed")
        await vault.delete(tx, "datasource", "a", "token")
    assert (await vault.get("datasource", "a", "password")).reveal() == b"changed"
    assert await vault.fields("datasource", "a") == {"password"}
    async with store.transaction() as tx:
        await vault.delete(tx, "datasource", "b")
    assert await vault.fields("datasource", "b") == set()
    assert "hunter2" not in repr(vault)


async def test_put_commits_with_the_callers_transaction(opened):
    _, store, vault = opened

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await vault.put(tx, "datasource", "x", "password", b"never")
            raise Boom
    assert await vault.get("datasource", "x", "password") is None


def _flip(blob: bytes, index: int) -> bytes:
    out = bytearray(blob)
    out[index] ^= 0x01
    return bytes(out)


TAMPERS = {
    "nonce bit": lambda b, other: _flip(b, 5),
    "ciphertext bit": lambda b, other: _flip(b, 5 + 12),
    "tag bit": lambda b, other: _flip(b, len(b) - 1),
    "truncated": lambda b, other: b[:-1],
    "truncated to header": lambda b, other: b[:8],
    "empty": lambda b, other: b"",
    "version byte downgraded to 1": lambda b, other: b"\x01" + b[1:],
    "unknown version byte": lambda b, other: b"\x03" + b[1:],
    "key version in blob": lambda b, other: b[:1] + (99).to_bytes(4, "big") + b[5:],
    "swapped from another record": lambda b, other: other["record"],
    "swapped from another field": lambda b, other: other["field"],
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
async def test_tampering_fails_with_a_clear_error(opened, how):
    s, store, vault = opened
    async with store.transaction() as tx:
        await vault.put(tx, "datasource", "victim", "password", b"PLAINTEXT-victim")
        await vault.put(tx, "datasource", "victim", "token", b"PLAINTEXT-token")
        await vault.put(tx, "datasource", "other", "password", b"PLAINTEXT-other")
    blobs = {(r, f): b for r, f, b in raw_sql(
        s.server.state_dir, "SELECT record_id, field, blob FROM sealed_fields")}
    tampered = TAMPERS[how](blobs[("victim", "password")], {
        "record": blobs[("other", "password")], "field": blobs[("victim", "token")]})
    raw_sql(s.server.state_dir, "UPDATE sealed_fields SET blob = ? "
            "WHERE record_id = 'victim' AND field = 'password'", (tampered,))
    with pytest.raises(SealedFieldError) as info:
        await vault.get("datasource", "victim", "password")
    assert "datasource/victim/password" in info.value.message
    assert "PLAINTEXT" not in info.value.message
    # The neighbours are untouched and still open.
    assert (await vault.get("datasource", "other", "password")).reveal() == b"PLAINTEXT-other"


async def test_key_version_column_mismatch_is_tampering(opened):
    s, store, vault = opened
    async with store.transaction() as tx:
        await vault.put(tx, "datasource", "v", "password", b"x")
    raw_sql(s.server.state_dir, "UPDATE sealed_fields SET key_version = 5")
    with pytest.raises(SealedFieldError, match="datasource/v/password"):
        await vault.get("datasource", "v", "password")


# --- secret sources, wrong and missing secrets --------------------------------------------------


async def test_wrong_instance_secret_is_refused_and_nothing_is_touched(state):
    s = await init_state(state)
    await populate(s, plaintexts(3))
    before = raw_sql(state, "SELECT * FROM keyring_unseal") + raw_sql(
        state, "SELECT * FROM keyring")
    state_dir.write_private(state / state_dir.INSTANCE_SECRET_FILE, os.urandom(32))
    with pytest.raises(WrongInstanceSecret, match=r"instance secret file .*instance\.key"):
        await open_all(s)
    after = raw_sql(state, "SELECT * FROM keyring_unseal") + raw_sql(
        state, "SELECT * FROM keyring")
    assert before == after


async def test_missing_instance_secret_names_every_source(state):
    s = await init_state(state)
    await populate(s, plaintexts(1))
    (state / state_dir.INSTANCE_SECRET_FILE).unlink()
    with pytest.raises(InstanceSecretMissing) as info:
        await open_all(s)
    message = info.value.message
    assert "CREDENTIALS_DIRECTORY" in message and "APPLIANCE_ENCRYPTION_PASSWORD" in message
    assert "instance.key" in message and "\n" not in message


async def test_secret_file_readable_by_others_is_refused(state):
    s = await init_state(state)
    os.chmod(state / state_dir.INSTANCE_SECRET_FILE, 0o644)
    with pytest.raises(InstanceSecretMissing, match="chmod 600"):
        await open_all(s)


async def test_systemd_credential_comes_first(state, tmp_path):
    s = await init_state(state)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "encryption-key").write_bytes(os.urandom(32))
    with_cred = make_settings(state, {"CREDENTIALS_DIRECTORY": str(creds)})
    secrets = plaintexts(4)
    await populate(with_cred, secrets)
    vault = await check_all(with_cred, secrets)
    assert vault.secret_source == "credential"
    with pytest.raises(WrongInstanceSecret, match="instance secret file"):
        await check_all(s, secrets)  # the file is not the secret this store was sealed with
    # A credentials directory without our credential falls through to the next source.
    (creds / "encryption-key").unlink()
    with pytest.raises(WrongInstanceSecret, match="instance secret file"):
        await check_all(with_cred, secrets)


async def test_password_and_salt_source(state):
    await init_state(state)
    env = {"APPLIANCE_ENCRYPTION_PASSWORD": "correct horse", "APPLIANCE_ENCRYPTION_SALT": "s1"}
    with_pw = make_settings(state, env)
    secrets = plaintexts(4)
    await populate(with_pw, secrets)
    assert (await check_all(with_pw, secrets)).secret_source == "password"
    for bad in ({**env, "APPLIANCE_ENCRYPTION_SALT": "s2"},
                {**env, "APPLIANCE_ENCRYPTION_PASSWORD": "correct horsE"}):
        with pytest.raises(WrongInstanceSecret, match="APPLIANCE_ENCRYPTION_PASSWORD"):
            await check_all(make_settings(state, bad), secrets)


async def test_damaged_keyring_is_told_from_a_wrong_key(state):
    s = await init_state(state)
    await populate(s, plaintexts(2))
    (blob,) = raw_sql(state, "SELECT sealed FROM keyring")[0]
    raw_sql(state, "UPDATE keyring SET sealed = ?", (_flip(blob, 20),))
    with pytest.raises(KeyringCorrupted, match="damaged"):
        await open_all(s)


async def test_damaged_wrapped_root_is_told_from_a_wrong_key(state):
    s = await init_state(state)
    await populate(s, plaintexts(2))
    (blob,) = raw_sql(state, "SELECT wrapped_root FROM keyring_unseal")[0]
    raw_sql(state, "UPDATE keyring_unseal SET wrapped_root = ?", (_flip(blob, 20),))
    with pytest.raises(KeyringCorrupted, match="verifier"):
        await open_all(s)


async def test_damaged_verifier_alone_still_opens(state):
    s = await init_state(state)
    secrets = plaintexts(2)
    await populate(s, secrets)
    raw_sql(state, "UPDATE keyring_unseal SET verifier = zeroblob(32)")
    await check_all(s, secrets)


def test_default_tuning_is_not_weakened():
    assert DEFAULT_TUNING.log2_n >= 15 and DEFAULT_TUNING.r >= 8
    assert DEFAULT_TUNING.fixed_p is None and DEFAULT_TUNING.min_seconds >= 0.1
    params = DEFAULT_TUNING.new_params()
    started = time.perf_counter()
    params.derive(b"x" * 32)
    elapsed = time.perf_counter() - started
    assert 0.05 <= elapsed <= 2.0, elapsed  # tuned for 0.1-0.5 s; slack for a loaded machine
    assert ScryptParams.from_json(params.to_json()) == params


async def test_stored_kdf_parameters_are_used(state):
    s = await init_state(state)
    await populate(s, plaintexts(1))
    (kdf,) = raw_sql(state, "SELECT kdf FROM keyring_unseal")[0]
    assert ScryptParams.from_json(kdf).n == 2**10


# --- rotation and change-password ---------------------------------------------------------------


async def test_rotation_reseals_everything_and_retires_the_old_key(state):
    s = await init_state(state)
    secrets = plaintexts(30)
    await populate(s, secrets)
    store, vault = await open_all(s)
    try:
        seen = []
        report = await rotate(vault, batch_size=7, progress=lambda d, t: seen.append((d, t)))
        assert report.active == 2 and report.retired == [1] and not report.resumed
        assert seen[0] == (0, len(secrets)) and seen[-1] == (len(secrets), len(secrets))
        keys = await status(vault)
        assert [(k.version, k.active, k.fields) for k in keys] == [(2, True, len(secrets))]
    finally:
        await store.close()
    await check_all(s, secrets)
    assert raw_sql(state, "SELECT DISTINCT key_version FROM sealed_fields") == [(2,)]


async def test_rotation_keeps_a_key_that_an_unreadable_field_uses(state):
    s = await init_state(state)
    await populate(s, plaintexts(3))
    raw_sql(state, "UPDATE sealed_fields SET blob = substr(blob, 1, 40) "
            "WHERE record_id = 'ds-0001'")
    store, vault = await open_all(s)
    try:
        report = await rotate(vault)
        assert report.kept == [1] and report.retired == []
        assert any("ds-0001" in u for u in report.unreadable)
        assert sorted(vault.keyring.keys) == [1, 2]
    finally:
        await store.close()


async def test_change_password_file_source(state):
    s = await init_state(state)
    secrets = plaintexts(5)
    await populate(s, secrets)
    old = (state / state_dir.INSTANCE_SECRET_FILE).read_bytes()
    store, vault = await open_all(s)
    try:
        report = await change_instance_secret(s, vault, tuning=TEST_TUNING)
        assert report.completed and report.wrote_file
    finally:
        await store.close()
    new = (state / state_dir.INSTANCE_SECRET_FILE).read_bytes()
    assert new != old and len(new) == 32
    await check_all(s, secrets)
    assert raw_sql(state, "SELECT state FROM keyring_unseal") == [("active",)]
    state_dir.write_private(state / state_dir.INSTANCE_SECRET_FILE, old)
    with pytest.raises(WrongInstanceSecret):
        await open_all(s)


async def test_change_password_external_source_is_two_phase(state, tmp_path):
    await init_state(state)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "encryption-key").write_bytes(b"O" * 32)
    s = make_settings(state, {"CREDENTIALS_DIRECTORY": str(creds)})
    secrets = plaintexts(5)
    await populate(s, secrets)
    store, vault = await open_all(s)
    try:
        with pytest.raises(InstanceSecretMissing, match="--new-secret-file"):
            await change_instance_secret(s, vault, tuning=TEST_TUNING)
        new = InstanceSecret(SOURCE_CREDENTIAL, "test", Secret(b"N" * 32))
        report = await change_instance_secret(s, vault, new=new, tuning=TEST_TUNING)
        assert not report.completed
    finally:
        await store.close()
    await check_all(s, secrets)  # the old secret still works...
    (creds / "encryption-key").write_bytes(b"N" * 32)
    await check_all(s, secrets)  # ...so does the new one, and using it completes the change
    assert raw_sql(state, "SELECT state FROM keyring_unseal") == [("active",)]
    (creds / "encryption-key").write_bytes(b"O" * 32)
    with pytest.raises(WrongInstanceSecret):
        await check_all(s, secrets)


# --- a running server picks up a keyring rotated by another process ------------------------------


async def test_a_running_process_picks_up_rotation_by_another_process(state):
    s = await init_state(state)
    secrets = plaintexts(6)
    await populate(s, secrets)
    store, vault = await open_all(s)
    follower = ChangeFollower(store, [("keyring", vault.refresh)])  # as `serve` follows it
    follower.start()
    try:
        assert vault.active_version == 1
        # Another process rotates (its own store connection, its own vault).
        other_store, other_vault = await open_all(s)
        try:
            await rotate(other_vault, batch_size=2)
        finally:
            await other_store.close()
        for _ in range(400):  # the watcher may see the middle generation first: wait for the last
            if vault.generation == other_vault.generation:
                break
            await asyncio.sleep(0.05)
        assert vault.active_version == 2 and sorted(vault.keyring.keys) == [2]
        for (kind, record_id, field), value in secrets.items():
            assert (await vault.get(kind, record_id, field)).reveal() == value
        async with store.transaction() as tx:
            await vault.put(tx, "datasource", "new", "password", b"fresh")
        assert raw_sql(state, "SELECT key_version FROM sealed_fields "
                       "WHERE record_id = 'new'") == [(2,)]
    finally:
        await follower.close()
        await store.close()


async def test_put_never_uses_a_stale_key(state):
    """Without waiting for the poll, a put seals with the key that is active at commit time."""
    s = await init_state(state)
    await populate(s, plaintexts(2))
    store_a, vault_a = await open_all(s)
    store_b, vault_b = await open_all(s)
    try:
        await rotate(vault_b)
        assert vault_a.active_version == 1  # stale cache
        async with store_a.transaction() as tx:
            await vault_a.put(tx, "datasource", "late", "password", b"late")
        assert raw_sql(state, "SELECT key_version FROM sealed_fields "
                       "WHERE record_id = 'late'") == [(2,)]
        assert (await vault_b.get("datasource", "late", "password")).reveal() == b"late"
    finally:
        await store_a.close()
        await store_b.close()


# --- one keyring maintenance at a time across instances ----------------------------------------


async def test_a_rotation_or_secret_change_is_refused_while_another_holds_the_lease(state):
    s = await init_state(state)
    await populate(s, plaintexts(3))
    store, vault = await open_all(s)
    try:
        async with exclusive(store, "a test"):  # another instance's rotation, in effect
            with pytest.raises(KeyringBusy, match="another keyring maintenance") as busy:
                await rotate(vault)
            assert busy.value.status == 409
            with pytest.raises(KeyringBusy):
                await change_instance_secret(s, vault, tuning=TEST_TUNING)
            assert vault.active_version == 1 and sorted(vault.keyring.keys) == [1]
            assert raw_sql(state, "SELECT count(*) FROM keyring_unseal") == [(1,)]
        report = await rotate(vault)  # released at the end of the block
        assert report.active == 2 and report.retired == [1]
        assert raw_sql(state, "SELECT count(*) FROM leases") == [(0,)]
    finally:
        await store.close()


async def test_a_lease_left_by_a_dead_process_on_this_machine_is_taken_at_once(state):
    s = await init_state(state)
    store, vault = await open_all(s)
    try:
        holder = f"{socket.gethostname()}:{_a_dead_pid()}:0000"
        far = Lease(store, maintenance.LEASE_NAME, holder, 3600)
        assert (await far.acquire()).holder == holder
        assert (await rotate(vault)).active == 2
        elsewhere = Lease(store, maintenance.LEASE_NAME, f"other-host:{os.getpid()}:1", 3600)
        assert (await elsewhere.acquire()).holder.startswith("other-host")
        with pytest.raises(KeyringBusy, match="other-host"):
            await rotate(vault)
    finally:
        await store.close()


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
