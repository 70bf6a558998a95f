"""`appliance keys rotate` and `keys change-password` are audited like every other writing verb:
a `.start` entry committed before anything changes (so a required sink that cannot be written
stops the verb with nothing changed), then the entry naming the action and its outcome. Real
`appliance` processes on a real SQLite store with a real file sink; no secret (the new password,
the instance secrets, the data and audit keys) is anywhere in the store's files, the audit log or
the sink."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import state_dir
from appliance.core import open_core
from tests.support.app import TEST_TUNING, make_settings, prepare
from tests.support.keyring import install_unit, plaintexts
from tests.support.sink_verbs import Verbs

PASSWORD = "Correct-Horse-Battery-Staple-77"
SECRETS = plaintexts(30)  # 40 fields


class Keys(Verbs):
    """`Verbs` (a state directory on the test store whose settings name one required file
    sink, in a directory not made yet) with sealed fields, and no systemd unit to follow."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.unit_root = root / "no-unit"
        self.unit_root.mkdir()

    def entries(self) -> list[dict[str, Any]]:
        """Oldest first."""
        return sorted(super().entries(), key=lambda entry: entry["position"])

    def active_version(self) -> int:
        done = self("keys", "status", "--json")
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout)["keyring"]["active_version"])

    def key_material(self) -> list[bytes]:
        """Every data key and audit key of the keyring as it is now, and the instance secret."""
        async def read() -> list[bytes]:
            async with open_core(make_settings(self.state), tuning=TEST_TUNING) as core:
                ring = core.vault.keyring
                return [key.key for key in (*ring.keys.values(), *ring.audit.values())]

        return [*asyncio.run(read()),
                (self.state / state_dir.INSTANCE_SECRET_FILE).read_bytes()]


@pytest.fixture
async def keys(tmp_path: Path) -> Keys:
    made = Keys(tmp_path)
    await prepare(made.state)
    async with open_core(make_settings(made.state), tuning=TEST_TUNING) as core:
        async with core.store.transaction() as tx:
            for (kind, record_id, field), value in SECRETS.items():
                await core.vault.put(tx, kind, record_id, field, value)
    return made


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret),
            base64.urlsafe_b64encode(secret).rstrip(b"=")]


def test_rotate_and_change_password_are_audited_with_no_secret(keys: Keys,
                                                               tmp_path: Path) -> None:
    """The store's files (SQLite) are searched too; a PostgreSQL store's rows through the
    audit log, the sink and the verbs' output."""
    keys.logs.mkdir()
    material = keys.key_material()
    before = keys.entries()

    done = keys("keys", "rotate", "--batch-size", "7")
    assert done.returncode == 0, done.stderr
    material += keys.key_material()  # the new data and audit keys
    password = tmp_path / "new-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    done = keys("keys", "change-password", "--yes", "--root", str(keys.unit_root),
                "--new-password-file", str(password), "--new-salt", "salt-of-the-test")
    assert done.returncode == 0, done.stderr
    done = keys("keys", "change-password", "--yes", "--root", str(keys.unit_root))
    assert done.returncode == 0, done.stderr
    material += keys.key_material()  # the new instance secret

    added = keys.entries()[len(before):]
    assert [(e["action"], e["outcome"]) for e in added] == [
        ("keyring.rotate.start", "ok"), ("keyring.rotate", "ok"),
        ("keyring.secret_change.start", "ok"), ("keyring.secret_change", "ok"),
        ("keyring.secret_change.start", "ok"), ("keyring.secret_change", "ok"),
    ]
    assert all(e["actor"].startswith("cli:") and e["client"] == "local" for e in added)
    rotated = added[1]["details"]
    assert rotated == {"active_version": 2, "previous_version": 1, "resumed": False,
                       "resealed": 40, "retired_versions": [1], "kept_versions": [],
                       "unreadable": 0}
    assert added[3]["details"] == {"new_source": "password", "completed": False}
    assert added[5]["details"] == {"new_source": "file", "completed": True}
    # Every entry reached the sink too, as the store holds it.
    lines = [json.loads(line) for line in keys.sink.read_text().splitlines()]
    assert [(line["position"], line["hash"]) for line in lines] == \
        [(e["position"], e["hash"]) for e in added]

    done = keys("audit", "verify", "--full")
    assert done.returncode == 0, done.stdout + done.stderr

    files = [path for path in keys.state.iterdir() if path.name.startswith(state_dir.STORE_FILE)]
    haystacks = {path.name: path.read_bytes() for path in (*files, keys.sink)}
    haystacks["audit list"] = json.dumps(keys.entries()).encode()
    haystacks["stdout"] = done.stdout.encode()
    secrets = [PASSWORD.encode()] + [form for key in material for form in _forms(key)]
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, where


def test_rotate_fails_closed_when_its_entry_cannot_be_written(keys: Keys) -> None:
    """The sink's directory is missing: nothing is rotated, no secret changed, no entry."""
    before = keys.entries()
    secret = (keys.state / state_dir.INSTANCE_SECRET_FILE).read_bytes()
    for args in (("keys", "rotate"),
                 ("keys", "change-password", "--yes", "--root", str(keys.unit_root))):
        done = keys(*args)
        assert done.returncode == 2, (args, done.stdout + done.stderr)
        assert "audit.sinks" in done.stderr and "Traceback" not in done.stderr
    assert keys.active_version() == 1
    assert (keys.state / state_dir.INSTANCE_SECRET_FILE).read_bytes() == secret
    assert keys.entries() == before
    assert not keys.logs.exists()


def test_a_rotation_that_keeps_a_key_is_audited_as_failed(keys: Keys) -> None:
    """A field that does not open keeps its key: exit 1, and the entry says `failed`."""
    (kind, record_id, field), _ = next(iter(SECRETS.items()))

    async def damage() -> None:
        async with open_core(make_settings(keys.state), tuning=TEST_TUNING) as core:
            async with core.store.transaction() as tx:
                await tx.execute("UPDATE sealed_fields SET blob = ? WHERE kind = ? AND "
                                 "record_id = ? AND field = ?",
                                 (bytes(48), kind, record_id, field))

    asyncio.run(damage())
    keys.logs.mkdir()
    before = keys.entries()
    done = keys("keys", "rotate")
    assert done.returncode == 1, done.stdout + done.stderr
    added = keys.entries()[len(before):]
    assert [(e["action"], e["outcome"]) for e in added] == [
        ("keyring.rotate.start", "ok"), ("keyring.rotate", "failed")]
    assert added[1]["details"]["kept_versions"] == [1]
    assert added[1]["details"]["unreadable"] == 1
    assert len(keys.sink.read_text().splitlines()) == 2


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """`directory` made unwritable: mode 0500, and for root (whom modes do not stop) the
    immutable attribute too; skipped where neither stops a write."""
    directory.chmod(0o500)
    immutable = False
    try:
        if os.geteuid() == 0:
            immutable = subprocess.run(["chattr", "+i", str(directory)],
                                       capture_output=True).returncode == 0
        probe = directory / ".probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("this file system lets this user write into a 0500 directory")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o700)


def test_a_unit_credential_left_unwritten_is_in_the_entry(keys: Keys, tmp_path: Path) -> None:
    """The store's secret changes, the unit's credential file cannot be written (its directory
    is not writable: run as the service user, say): exit 1, and the entry says `failed`, naming
    the file and why, instead of `ok`. Once the operator copies the secret in place, the next
    change writes it and says `ok`."""
    keys.logs.mkdir()
    root = tmp_path / "root"
    credential = root / "etc/appliance/encryption-key"
    credential.parent.mkdir(parents=True)
    instance_key = keys.state / state_dir.INSTANCE_SECRET_FILE
    shutil.copyfile(instance_key, credential)
    credential.chmod(0o600)
    install_unit(root, credential)
    old = credential.read_bytes()
    before = keys.entries()

    with unwritable(credential.parent):
        done = keys("keys", "change-password", "--yes", "--root", str(root))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{credential} could not be written" in done.stderr
    assert f"install -m 600 {instance_key} {credential}" in done.stderr
    assert instance_key.read_bytes() != old and credential.read_bytes() == old
    added = keys.entries()[len(before):]
    assert [(e["action"], e["outcome"]) for e in added] == [
        ("keyring.secret_change.start", "ok"), ("keyring.secret_change", "failed")]
    unit = added[1]["details"].pop("unit_file")
    assert added[1]["details"] == {"new_source": "file", "completed": True}
    assert unit["path"] == str(credential) and unit["written"] is False
    assert unit["error"] in ("Permission denied", "Operation not permitted")

    shutil.copyfile(instance_key, credential)  # what the printed command does
    done = keys("keys", "change-password", "--yes", "--root", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert credential.read_bytes() == instance_key.read_bytes() != old
    last = keys.entries()[-1]
    assert (last["action"], last["outcome"]) == ("keyring.secret_change", "ok")
    assert last["details"]["unit_file"] == {"path": str(credential), "written": True}
    lines = [json.loads(line) for line in keys.sink.read_text().splitlines()]
    assert [line["position"] for line in lines] == [e["position"] for e in keys.entries()[
        len(before):]]
