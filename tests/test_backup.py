"""`appliance backup` and `restore` as real subprocesses: every secret opens after a restore, and
no plaintext is in the backup, the store files or the logs captured during all of it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tarfile
from pathlib import Path

import pytest

from appliance import state_dir
from appliance.keyring import WrongInstanceSecret
from appliance.keyring.backup import restore_backup, write_backup
from tests.conftest import run_cli
from tests.support.cli import run_verb
from tests.support.keyring import (
    TEST_TUNING,
    check_all,
    init_state,
    make_settings,
    open_all,
    plaintexts,
    populate,
)


@pytest.fixture
def populated(state: Path):
    secrets = plaintexts(60)

    async def setup():
        s = await init_state(state)
        await populate(s, secrets)
        return s

    return asyncio.run(setup()), secrets


def _assert_no_plaintext(data: bytes, secrets: dict, where: str) -> None:
    for value in secrets.values():
        assert value not in data, f"a plaintext is in {where}"
    assert b"PLAINTEXT" not in data, where


def test_backup_and_restore_with_the_instance_secret(populated, state, tmp_path):
    _s, secrets = populated
    out = tmp_path / "backup.tar"
    logs = []
    result = run_cli("backup", "--state-dir", str(state), "--out", str(out))
    logs += [result.stdout, result.stderr]
    assert result.returncode == 0, result.stderr
    assert "60 sealed fields" in result.stdout or "80 sealed fields" in result.stdout
    assert (os.stat(out).st_mode & 0o777) == 0o600
    target = tmp_path / "restored"
    target.mkdir(mode=0o700)
    (target / state_dir.INSTANCE_SECRET_FILE).write_bytes(
        (state / state_dir.INSTANCE_SECRET_FILE).read_bytes())
    os.chmod(target / state_dir.INSTANCE_SECRET_FILE, 0o600)
    result = run_cli("restore", "--state-dir", str(target), str(out))
    logs += [result.stdout, result.stderr]
    assert result.returncode == 0, result.stderr
    asyncio.run(check_all(make_settings(target), secrets))
    for path in [out, *state.glob("appliance.db*"), *target.glob("appliance.db*")]:
        _assert_no_plaintext(path.read_bytes(), secrets, str(path))
    _assert_no_plaintext("".join(logs).encode(), secrets, "the CLI output")
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert names == ["manifest.json", "appliance.db"] and manifest["recovery"] is False
    assert state_dir.INSTANCE_SECRET_FILE not in names


def test_restore_without_the_secret_explains(populated, state, tmp_path):
    out = tmp_path / "b.tar"
    assert run_verb("backup", "--state-dir", str(state), "--out", str(out)).returncode == 0
    target = tmp_path / "empty"
    result = run_verb("restore", "--state-dir", str(target), str(out))
    assert result.returncode != 0 and "--passphrase-file" in result.stderr
    assert not (target / state_dir.STORE_FILE).exists()
    # With some other installation's secret: refused, nothing left behind.
    state_dir.write_private(target / state_dir.INSTANCE_SECRET_FILE, os.urandom(32))
    result = run_verb("restore", "--state-dir", str(target), str(out))
    assert result.returncode != 0 and "does not open" in result.stderr
    assert sorted(p.name for p in target.iterdir()) == [state_dir.INSTANCE_SECRET_FILE]


def test_passphrase_recovery_into_a_fresh_state_dir(populated, state, tmp_path):
    _s, secrets = populated
    passphrase = tmp_path / "pass"
    passphrase.write_text("a long recovery passphrase\n")
    out = tmp_path / "b.tar"
    result = run_verb("backup", "--state-dir", str(state), "--out", str(out),
                     "--passphrase-file", str(passphrase))
    assert result.returncode == 0, result.stderr
    _assert_no_plaintext(out.read_bytes(), secrets, "the backup")
    assert (state / state_dir.INSTANCE_SECRET_FILE).read_bytes() not in out.read_bytes()
    wrong = tmp_path / "wrong"
    wrong.write_text("not the recovery passphrase")
    target = tmp_path / "fresh"
    result = run_verb("restore", "--state-dir", str(target), str(out),
                     "--passphrase-file", str(wrong))
    assert result.returncode != 0 and "passphrase does not open" in result.stderr
    result = run_verb("restore", "--state-dir", str(target), str(out),
                     "--passphrase-file", str(passphrase))
    assert result.returncode == 0, result.stderr
    assert "new instance secret" in result.stdout
    new_secret = (target / state_dir.INSTANCE_SECRET_FILE).read_bytes()
    assert new_secret != (state / state_dir.INSTANCE_SECRET_FILE).read_bytes()
    asyncio.run(check_all(make_settings(target), secrets))
    for path in target.glob("appliance.db*"):
        _assert_no_plaintext(path.read_bytes(), secrets, str(path))


def test_restore_refuses_a_non_empty_state_dir_without_force(populated, state, tmp_path):
    s, secrets = populated
    out = tmp_path / "b.tar"
    assert run_verb("backup", "--state-dir", str(state), "--out", str(out)).returncode == 0
    result = run_verb("restore", "--state-dir", str(state), str(out))
    assert result.returncode != 0 and "not empty" in result.stderr and "--force" in result.stderr
    # Change the live store, then restore over it with --force: the backup's content returns.
    extra = {("datasource", "after-backup", "password"): b"PLAINTEXT-after"}
    asyncio.run(populate(s, extra))
    result = run_verb("restore", "--state-dir", str(state), str(out), "--force")
    assert result.returncode == 0, result.stderr
    vault = asyncio.run(check_all(s, secrets))
    assert vault is not None

    async def gone():
        store, v = await open_all(s)
        try:
            return await v.get("datasource", "after-backup", "password")
        finally:
            await store.close()

    assert asyncio.run(gone()) is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "checksum", "no recovery",
                                    "newer schema"])
def test_bad_backup_files_are_refused(populated, state, tmp_path, damage):
    out = tmp_path / "b.tar"
    assert run_verb("backup", "--state-dir", str(state), "--out", str(out)).returncode == 0
    data = out.read_bytes()
    args = []
    if damage == "garbage":
        out.write_bytes(os.urandom(5000))
    elif damage == "truncated":
        out.write_bytes(data[: len(data) // 2])
    elif damage in ("checksum", "newer schema"):
        with tarfile.open(out) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
            db = tar.extractfile("appliance.db").read()
        if damage == "checksum":
            db = db[:-1] + bytes([db[-1] ^ 1])
        else:
            manifest["schema_version"] = 10_000
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, payload in (("manifest.json", json.dumps(manifest).encode()),
                                  ("appliance.db", db)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        out.write_bytes(buffer.getvalue())
    else:
        passphrase = tmp_path / "pass"
        passphrase.write_text("a long recovery passphrase")
        args = ["--passphrase-file", str(passphrase)]
    target = tmp_path / "t"
    state_dir.ensure(target)
    (target / state_dir.INSTANCE_SECRET_FILE).write_bytes(
        (state / state_dir.INSTANCE_SECRET_FILE).read_bytes())
    result = run_verb("restore", "--state-dir", str(target), str(out), *args)
    assert result.returncode != 0, damage
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not (target / state_dir.STORE_FILE).exists()


async def test_logs_during_backup_and_restore_hold_no_plaintext(state, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = plaintexts(20)
    s = await init_state(state)
    await populate(s, secrets)
    store, vault = await open_all(s)
    try:
        passphrase_file = tmp_path / "p"
        passphrase_file.write_text("a long recovery passphrase")
        from appliance.keyring.backup import read_passphrase

        passphrase = read_passphrase(passphrase_file)
        report = await write_backup(s, vault, tmp_path / "b.tar", passphrase=passphrase,
                                    tuning=TEST_TUNING)
        assert report.recovery
    finally:
        await store.close()
    target = make_settings(tmp_path / "r")
    await restore_backup(target, tmp_path / "b.tar", passphrase=passphrase, tuning=TEST_TUNING)
    await check_all(target, secrets)
    state_dir.write_private(state / state_dir.INSTANCE_SECRET_FILE, os.urandom(32))
    with pytest.raises(WrongInstanceSecret):
        await open_all(s)
    text = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for value in secrets.values():
        assert value.decode() not in text
    assert "a long recovery passphrase" not in text and "PLAINTEXT" not in text
