"""The vault: every sealed field of the product, in one table, sealed with the active data key.

Owns `sealed_fields` and the cached keyring of a running process (re-read when a newer
generation appears), and hands the audit log its MAC keys (`mac_key`, `mac_key_of`). Never logs,
returns or raises with a plaintext; values leave as `Secret`, keys only to the audit log.

A field may be sealed with a *binding* (a datasource's destination): it then opens only for a
caller that presents the same binding. The binding is kept beside the blob in clear, so that key
rotation can re-seal without knowing what it means; it is authenticated, not trusted: the
cipher's associated data decides.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from appliance.keyring import kdf
from appliance.keyring.errors import (
    BoundElsewhere,
    KeyringCorrupted,
    KeyringError,
    SealedFieldError,
)
from appliance.keyring.kdf import KdfTuning
from appliance.keyring.ring import Keyring
from appliance.keyring.sealing import (
    KEY_BYTES,
    FormatError,
    check_value,
    field_key_version,
    open_field,
    same,
    seal_field,
)
from appliance.keyring.sources import InstanceSecret, resolve
from appliance.keyring.unseal import ACTIVE, derive, insert_slot, open_root, promote, read_slots
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.store import Store, Transaction

log = logging.getLogger("appliance.keyring")


def root_verifier(root_key: bytes) -> bytes:
    return check_value(root_key, b"root")


class SecretVault:
    """Seal, open, delete and list sealed fields. One instance per process, shared."""

    def __init__(self, store: Store, root_key: bytes, keyring: Keyring,
                 secret: InstanceSecret, slot: int) -> None:
        self._store = store
        self._root = root_key
        self._ring = keyring
        self.secret_source = secret.source
        self.secret_where = secret.where
        self.slot = slot

    def __repr__(self) -> str:
        return f"<SecretVault generation={self._ring.generation} active=v{self._ring.active}>"

    # --- the interface other modules use -----------------------------------------------------

    async def put(self, tx: Transaction, kind: str, record_id: str, field: str,
                  value: bytes, *, binding: bytes = b"") -> None:
        """Seal `value` with the active data key inside the caller's transaction; it will open
        only for a caller presenting the same `binding`."""
        if not isinstance(value, bytes | bytearray):
            raise TypeError("SecretVault.put takes bytes")
        ring = await self._current(tx)
        blob = seal_field(ring.active_key.key, ring.active, kind, record_id, field, bytes(value),
                          binding)
        await tx.execute(
            "INSERT INTO sealed_fields (kind, record_id, field, key_version, blob, updated_at, "
            "binding) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, record_id, field) DO "
            "UPDATE SET key_version = excluded.key_version, blob = excluded.blob, "
            "updated_at = excluded.updated_at, binding = excluded.binding",
            (kind, record_id, field, ring.active, blob, time.time(), binding),
        )

    async def get(self, kind: str, record_id: str, field: str, *, binding: bytes = b"",
                  tx: Transaction | None = None) -> Secret[bytes] | None:
        """The opened field, or None if it is not set. `SealedFieldError` names the record;
        `BoundElsewhere` if the field was sealed for another binding."""
        reader: Any = tx if tx is not None else self._store
        for last in (False, True):
            row = await reader.fetch_one(
                "SELECT key_version, blob, binding FROM sealed_fields "
                "WHERE kind = ? AND record_id = ? AND field = ?", (kind, record_id, field))
            if row is None:
                return None
            stored = row["binding"]
            if (bytes(stored) if stored is not None else b"") != binding:
                # The clear copy tells early and plainly; the cipher would refuse anyway.
                raise BoundElsewhere(kind, record_id, field)
            version = int(row["key_version"])
            try:
                return Secret(await self._open(kind, record_id, field, version,
                                               bytes(row["blob"]), tx, binding))
            except SealedFieldError:
                # A rotation on another instance may have re-sealed this field and retired its
                # old key between our read and the keyring's reload: read it once more.
                if last or tx is not None or version in self._ring.keys:
                    raise
        raise AssertionError("unreachable")

    async def check(self, kind: str, record_id: str, field: str) -> None:
        """Open a field with the binding stored beside it (backup checks): `SealedFieldError`
        if it does not open. The plaintext is dropped at once."""
        row = await self._store.fetch_one(
            "SELECT key_version, blob, binding FROM sealed_fields "
            "WHERE kind = ? AND record_id = ? AND field = ?", (kind, record_id, field))
        if row is not None:
            await self._open(kind, record_id, field, int(row["key_version"]),
                             bytes(row["blob"]), None, bytes(row["binding"] or b""))

    async def check_every_field(self) -> tuple[int, list[str]]:
        """Open every sealed field with the binding stored beside it (a backup's or a store copy's
        check): how many there are, and the message of each that does not open. Plaintexts are
        dropped at once."""
        rows = await self._store.fetch_all("SELECT kind, record_id, field FROM sealed_fields")
        bad: list[str] = []
        for row in rows:
            try:
                await self.check(str(row["kind"]), str(row["record_id"]), str(row["field"]))
            except SealedFieldError as exc:
                bad.append(exc.message)
        return len(rows), bad

    async def rebind(self, tx: Transaction, kind: str, record_id: str, field: str,
                     binding: bytes) -> None:
        """Re-seal a field that was sealed without a binding (`binding IS NULL`) with `binding`,
        inside the caller's transaction. `SealedFieldError` if it does not open."""
        row = await tx.fetch_one(
            "SELECT key_version, blob FROM sealed_fields WHERE kind = ? AND record_id = ? "
            "AND field = ? AND binding IS NULL", (kind, record_id, field))
        if row is None:
            return
        plain = await self._open(kind, record_id, field, int(row["key_version"]),
                                 bytes(row["blob"]), tx, b"")
        await self.put(tx, kind, record_id, field, plain, binding=binding)

    async def delete(self, tx: Transaction, kind: str, record_id: str,
                     field: str | None = None) -> None:
        """Delete one field, or every field of the record when `field` is None."""
        if field is None:
            await tx.execute("DELETE FROM sealed_fields WHERE kind = ? AND record_id = ?",
                             (kind, record_id))
        else:
            await tx.execute(
                "DELETE FROM sealed_fields WHERE kind = ? AND record_id = ? AND field = ?",
                (kind, record_id, field))

    async def fields(self, kind: str, record_id: str) -> set[str]:
        rows = await self._store.fetch_all(
            "SELECT field FROM sealed_fields WHERE kind = ? AND record_id = ?", (kind, record_id))
        return {str(row["field"]) for row in rows}

    # --- the audit log's MAC keys (appliance.audit.keys.MacKeys) ----------------------------------

    def mac_key(self) -> tuple[int, bytes] | None:
        """The audit key new entries use, as (version, key); None before the keyring has one.
        A plain attribute read on the audit log's hot path: the keyring is already in memory."""
        key = self._ring.audit_key
        return None if key is None else (key.version, key.key)

    def mac_key_of(self, version: int) -> bytes | None:
        """Audit key `version` (any age: audit keys are never retired), or None."""
        key = self._ring.audit.get(version)
        return None if key is None else key.key

    async def ensure_audit_key(self) -> bool:
        """Give a keyring written before audit keys existed its first one; True if this call
        added it. Read, checked and written in one store transaction: the store's write lock
        orders it with every other instance's (and with a rotation's own keyring writes), so
        exactly one instance adds it and the others read it (a refresh). Never logs the key."""
        if self._ring.audit:
            return False
        async with self._store.transaction() as tx:
            ring = await self._current(tx, force=True)
            if ring.audit:
                return False
            new = ring.with_audit_key()
            await tx.execute("UPDATE keyring SET generation = ?, sealed = ?, updated_at = ? "
                             "WHERE id = 1", (new.generation, new.seal(self._root), time.time()))
        self._ring = new  # once committed
        log.info("audit key added to the keyring", extra={"generation": new.generation})
        return True

    # --- keyring state -------------------------------------------------------------------------

    @property
    def keyring(self) -> Keyring:
        return self._ring

    @property
    def active_version(self) -> int:
        return self._ring.active

    @property
    def generation(self) -> int:
        return self._ring.generation

    async def refresh(self, tx: Transaction | None = None) -> bool:
        """Re-read the sealed keyring if a newer generation was written (by another instance or
        `keys rotate`: called when the store reports a change); True if it changed."""
        reader: Any = tx if tx is not None else self._store
        row = await reader.fetch_one("SELECT generation FROM keyring WHERE id = 1")
        if row is None or int(row["generation"]) == self._ring.generation:
            return False
        await self._current(tx, force=True)
        return True

    async def _current(self, tx: Transaction | None, *, force: bool = False) -> Keyring:
        """The keyring as committed (inside `tx` when given, so a put never uses a stale key)."""
        reader: Any = tx if tx is not None else self._store
        if not force:
            row = await reader.fetch_one("SELECT generation FROM keyring WHERE id = 1")
            if row is not None and int(row["generation"]) == self._ring.generation:
                return self._ring
        row = await reader.fetch_one(
            "SELECT generation, root_verifier, sealed FROM keyring WHERE id = 1")
        ring = load_keyring(self._root, row)
        if ring.generation != self._ring.generation:
            log.info("keyring reloaded", extra={"generation": ring.generation,
                                                "active_version": ring.active})
        self._ring = ring
        return ring

    async def _open(self, kind: str, record_id: str, field: str, column_version: int,
                    blob: bytes, tx: Transaction | None, binding: bytes) -> bytes:
        try:
            version = field_key_version(blob)
        except FormatError as exc:
            raise SealedFieldError(kind, record_id, field, exc.reason) from None
        if version != column_version:
            raise SealedFieldError(kind, record_id, field,
                                   "its key version does not match its record (tampered)")
        if version not in self._ring.keys:
            await self._current(tx, force=True)  # rotated by another process since we loaded
        key = self._ring.keys.get(version)
        if key is None:
            raise SealedFieldError(kind, record_id, field,
                                   f"data key v{version} is not in the keyring")
        try:
            return open_field(key.key, kind, record_id, field, blob, binding)
        except FormatError as exc:
            raise SealedFieldError(kind, record_id, field, exc.reason) from None

    # --- for rotation, change-password and backup (same package) -------------------------------

    @property
    def root_key(self) -> bytes:
        return self._root

    async def write_keyring(self, tx: Transaction, ring: Keyring) -> None:
        await tx.execute("UPDATE keyring SET generation = ?, sealed = ?, updated_at = ? "
                         "WHERE id = 1", (ring.generation, ring.seal(self._root), time.time()))
        self._ring = ring

    async def current(self, tx: Transaction) -> Keyring:
        return await self._current(tx)


def load_keyring(root_key: bytes, row: dict[str, Any] | None) -> Keyring:
    if row is None:
        raise KeyringCorrupted("the keyring record is missing from the store: restore a backup")
    if not same(root_verifier(root_key), bytes(row["root_verifier"])):
        raise KeyringCorrupted("the root key does not match the keyring record (the store's "
                               "keyring is damaged or from another installation): restore a backup")
    try:
        return Keyring.open(root_key, int(row["generation"]), bytes(row["sealed"]))
    except FormatError as exc:
        raise KeyringCorrupted(
            f"the sealed keyring does not open ({exc.reason}) although the root key is right: "
            "the store is damaged; restore a backup") from None


async def open_vault(settings: Settings, store: Store, *,
                     tuning: KdfTuning | None = None, reading_only: bool = False
                     ) -> SecretVault:
    """Unseal the root key with the instance secret and load the keyring (creating both on a
    fresh store). Raises `InstanceSecretMissing`, `WrongInstanceSecret` or `KeyringCorrupted`.
    `reading_only`: write nothing (for a caller inside a store transaction, which holds the
    writer): `KeyringError` where a fresh store's keyring would be created; a pending instance
    secret change is completed by the next unseal instead.
    """
    secret = resolve(settings)
    return await open_vault_with(secret, store, tuning=tuning, reading_only=reading_only)


async def open_vault_with(secret: InstanceSecret, store: Store, *,
                          tuning: KdfTuning | None = None,
                          reading_only: bool = False) -> SecretVault:
    slots = await read_slots(store)
    if not slots:
        if reading_only:
            raise KeyringError("the store has no keyring yet: run `appliance init` (or start "
                               "`appliance serve`) to create it")
        created = await _initialise(secret, store, tuning)
        if created is not None:
            return created
        slots = await read_slots(store)  # another process initialised it meanwhile
    root, slot = await open_root(slots, secret)
    if slot.state != ACTIVE and not reading_only:
        async with store.transaction() as tx:
            if await promote(tx, slot.slot):
                log.info("instance secret change completed: the new secret is now the only one",
                         extra={"slot": slot.slot})
    row = await store.fetch_one(
        "SELECT generation, root_verifier, sealed FROM keyring WHERE id = 1")
    ring = load_keyring(root, row)
    return SecretVault(store, root, ring, secret, slot.slot)


async def _initialise(secret: InstanceSecret, store: Store,
                      tuning: KdfTuning | None) -> SecretVault | None:
    params = await asyncio.to_thread((tuning or kdf.default_tuning()).new_params)
    derived = await derive(params, secret)
    root = os.urandom(KEY_BYTES)
    ring = Keyring.first()
    async with store.transaction() as tx:
        if await tx.fetch_one("SELECT 1 AS ok FROM keyring_unseal LIMIT 1") is not None:
            return None
        if await tx.fetch_one("SELECT 1 AS ok FROM keyring WHERE id = 1") is not None:
            raise KeyringCorrupted("the store has a keyring but no unseal slot: it is damaged; "
                                   "restore a backup")
        if await tx.fetch_one("SELECT 1 AS ok FROM sealed_fields LIMIT 1") is not None:
            raise KeyringCorrupted("the store has sealed fields but no keyring: it is damaged; "
                                   "restore a backup")
        slot = await insert_slot(tx, state=ACTIVE, source=secret.source, params=params,
                                 derived=derived, root_key=root)
        await tx.execute(
            "INSERT INTO keyring (id, generation, root_verifier, sealed, updated_at) "
            "VALUES (1, ?, ?, ?, ?)",
            (ring.generation, root_verifier(root), ring.seal(root), time.time()))
    log.info("keyring created", extra={"kdf": params.describe(), "source": secret.source})
    return SecretVault(store, root, ring, secret, slot)
