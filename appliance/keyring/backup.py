"""Backups: one tar file with a consistent snapshot of the store (secrets still sealed, the sealed
keyring inside it), a manifest, and optionally the root key wrapped under a passphrase. Restore
into an empty state directory. Never writes an instance secret or a plaintext into a backup.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import __version__, state_dir
from appliance.keyring import kdf
from appliance.keyring.errors import BackupError, InstanceSecretMissing
from appliance.keyring.kdf import KdfParamsError, KdfTuning, ScryptParams
from appliance.keyring.sealing import FormatError, check_value, same, unwrap, wrap
from appliance.keyring.sources import SOURCE_FILE, InstanceSecret, resolve, secret_file
from appliance.keyring.unseal import ACTIVE, derive, insert_slot
from appliance.keyring.vault import SecretVault, load_keyring, open_vault_with
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.store import Store, open_sqlite_store
from appliance.store.migrations import LATEST
from appliance.store.opener import sqlite_path

FORMAT = "appliance-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE = "appliance.db"
RECOVERY = "recovery.json"
RECOVERY_AAD = b"appliance/backup-recovery/v1"
MAX_BACKUP_BYTES = 4 * 1024**3
# What may already be in a state directory restored into without --force.
ALLOWED_IN_EMPTY = frozenset({state_dir.INSTANCE_SECRET_FILE})


@dataclass(frozen=True)
class BackupReport:
    path: Path
    store_bytes: int
    sealed_fields: int
    recovery: bool


@dataclass(frozen=True)
class RestoreReport:
    state_dir: Path
    sealed_fields: int
    new_secret_file: Path | None
    source: str


def read_passphrase(path: Path) -> Secret[bytes]:
    """A passphrase file: its bytes without the trailing newline; at least 12 bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    data = data.rstrip(b"\r\n")
    if len(data) < 12:
        raise BackupError(f"passphrase file {path} holds fewer than 12 bytes")
    return Secret(data)


# --- backup -----------------------------------------------------------------------------------


async def _snapshot(store: Store, tmp: Path) -> bytes:
    """The store's consistent copy of itself (its `snapshot`), read back and deleted."""
    try:
        await store.snapshot(tmp)
        return tmp.read_bytes()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


async def write_backup(settings: Settings, vault: SecretVault, out: Path, *,
                       passphrase: Secret[bytes] | None = None,
                       tuning: KdfTuning | None = None) -> BackupReport:
    tmp = out.with_name(f".{out.name}.snapshot-{os.getpid()}")
    data = await _snapshot(vault._store, tmp)
    row = await vault._store.fetch_one("SELECT COUNT(*) AS n FROM sealed_fields")
    fields = int(row["n"]) if row else 0
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created_at": time.time(),
        "appliance_version": __version__, "schema_version": LATEST,
        "store_sha256": hashlib.sha256(data).hexdigest(), "store_bytes": len(data),
        "sealed_fields": fields, "keyring_generation": vault.generation,
        "active_key_version": vault.active_version, "recovery": passphrase is not None,
    }
    members = [(MANIFEST, json.dumps(manifest, indent=2).encode()), (STORE, data)]
    if passphrase is not None:
        params = await asyncio.to_thread((tuning or kdf.default_tuning()).new_params)
        derived = await asyncio.to_thread(params.derive, passphrase.reveal())
        recovery = {
            "kdf": json.loads(params.to_json()),
            "verifier": base64.b64encode(check_value(derived.verify_key, b"recovery")).decode(),
            "wrapped_root": base64.b64encode(
                wrap(derived.wrap_key, vault.root_key, RECOVERY_AAD)).decode(),
        }
        members.append((RECOVERY, json.dumps(recovery, indent=2).encode()))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(payload), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(payload))
    try:
        state_dir.write_private(out.absolute(), buffer.getvalue())
    except OSError as exc:
        raise BackupError(f"cannot write {out}: {exc.strerror}") from None
    return BackupReport(out, len(data), fields, passphrase is not None)


# --- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Archive:
    manifest: dict[str, Any]
    store: bytes
    recovery: dict[str, Any] | None


def _read_archive(path: Path) -> _Archive:
    try:
        if path.stat().st_size > MAX_BACKUP_BYTES:
            raise BackupError(f"{path} is larger than any backup this appliance writes")
        tar = tarfile.open(path, mode="r:")
    except FileNotFoundError:
        raise BackupError(f"backup file {path} does not exist") from None
    except OSError as exc:
        raise BackupError(f"cannot read backup file {path}: {exc.strerror}") from None
    except tarfile.TarError:
        raise BackupError(f"{path} is not an appliance backup (not a tar archive)") from None
    with tar:
        try:
            members = {m.name: m for m in tar.getmembers()}
            payloads = {}
            for name in (MANIFEST, STORE, RECOVERY):
                member = members.get(name)
                if member is None:
                    continue
                if not member.isfile():
                    raise BackupError(f"{path}: {name} is not a regular file")
                handle = tar.extractfile(member)
                payloads[name] = handle.read() if handle else b""
        except (tarfile.TarError, OSError, EOFError):
            raise BackupError(f"{path} is truncated or damaged") from None
    if MANIFEST not in payloads or STORE not in payloads:
        raise BackupError(f"{path} is not an appliance backup (no manifest or store)")
    try:
        manifest = json.loads(payloads[MANIFEST])
        recovery = json.loads(payloads[RECOVERY]) if RECOVERY in payloads else None
    except ValueError:
        raise BackupError(f"{path}: the manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is not an appliance backup")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"{path}: backup format version {manifest.get('format_version')!r} "
                          "is not one this appliance reads")
    if hashlib.sha256(payloads[STORE]).hexdigest() != manifest.get("store_sha256"):
        raise BackupError(f"{path}: the store inside does not match its checksum (damaged)")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int) or schema > LATEST:
        raise BackupError(f"{path} comes from a newer appliance (schema {schema}, this one "
                          f"knows {LATEST}); restore it with that version")
    return _Archive(manifest, payloads[STORE], recovery if isinstance(recovery, dict) else None)


def _unwrap_recovery(recovery: dict[str, Any], passphrase: Secret[bytes]) -> bytes:
    try:
        params = ScryptParams.from_json(json.dumps(recovery["kdf"]))
        verifier = base64.b64decode(recovery["verifier"], validate=True)
        wrapped = base64.b64decode(recovery["wrapped_root"], validate=True)
    except (KdfParamsError, KeyError, ValueError, TypeError):
        raise BackupError("the backup's recovery section is damaged") from None
    derived = params.derive(passphrase.reveal())
    if not same(check_value(derived.verify_key, b"recovery"), verifier):
        raise BackupError("the passphrase does not open this backup's recovery key")
    try:
        return unwrap(derived.wrap_key, wrapped, RECOVERY_AAD)
    except FormatError:
        raise BackupError(
            "the backup's recovery key is damaged (the passphrase is right)") from None


def check_target(target: Path, *, force: bool) -> None:
    if not target.exists():
        return
    others = sorted(p.name for p in target.iterdir() if p.name not in ALLOWED_IN_EMPTY)
    if others and not force:
        raise BackupError(f"state directory {target} is not empty ({', '.join(others[:3])}); "
                          "restore into an empty one, or add --force to replace its store")


async def restore_backup(settings: Settings, path: Path, *, force: bool = False,
                         passphrase: Secret[bytes] | None = None,
                         tuning: KdfTuning | None = None) -> RestoreReport:
    """Restore into the settings' state directory. Nothing is replaced until the restored store
    has been opened with the instance secret (or the passphrase) and every field checked.
    """
    target = settings.server.state_dir.absolute()
    live = sqlite_path(settings)
    if live is None:
        raise BackupError("restoring into a PostgreSQL store ([store] url) is not supported: "
                          "restore into a SQLite store, then copy it over with `store migrate`")
    check_target(target, force=force)
    archive = _read_archive(path)
    if passphrase is not None and archive.recovery is None:
        raise BackupError(f"{path} was written without --passphrase-file: it holds no recovery "
                          "key; restore it with the instance secret of its installation")
    root = (await asyncio.to_thread(_unwrap_recovery, archive.recovery, passphrase)
            if passphrase is not None and archive.recovery is not None else None)
    state = state_dir.ensure(target)
    new_secret: bytes | None = None
    try:
        secret = resolve(settings)
    except InstanceSecretMissing:
        if root is None:
            raise BackupError(
                f"no instance secret for {target}: copy the backed-up installation's "
                f"{state_dir.INSTANCE_SECRET_FILE} into it first, or restore with "
                "--passphrase-file") from None
        new_secret = os.urandom(32)
        secret = InstanceSecret(SOURCE_FILE, f"new instance secret file {secret_file(settings)}",
                                Secret(new_secret))
    tmp = state / f".{state_dir.STORE_FILE}.restore-{os.getpid()}"
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{tmp}{suffix}")
    state_dir.write_private(tmp, archive.store)
    try:
        store = await open_sqlite_store(tmp)
        try:
            if root is not None:
                await _reslot(store, root, secret, tuning)
            vault = await open_vault_with(secret, store, tuning=tuning)
            fields, bad = await vault.check_every_field()
            if bad:
                raise BackupError(f"{len(bad)} sealed field(s) in the backup do not open; "
                                  f"first: {bad[0]}")
        finally:
            await store.close()
        if new_secret is not None:
            state_dir.write_private(secret_file(settings), new_secret, exclusive=True)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{live}{suffix}")
        os.replace(tmp, live)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{tmp}{suffix}")
    return RestoreReport(target, fields, secret_file(settings) if new_secret else None,
                         secret.where)


async def _reslot(store: Any, root: bytes, secret: InstanceSecret,
                  tuning: KdfTuning | None) -> None:
    """Disaster recovery: the root key from the passphrase becomes openable by `secret` alone."""
    row = await store.fetch_one(
        "SELECT generation, root_verifier, sealed FROM keyring WHERE id = 1")
    load_keyring(root, row)  # proves the passphrase's root key belongs to this store
    params = await asyncio.to_thread((tuning or kdf.default_tuning()).new_params)
    derived = await derive(params, secret)
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM keyring_unseal")
        await insert_slot(tx, state=ACTIVE, source=secret.source, params=params,
                          derived=derived, root_key=root)
