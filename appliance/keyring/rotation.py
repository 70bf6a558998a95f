"""Key rotation and status: a new active data key at once, then every sealed field re-sealed in
small transactions (resumable after a SIGKILL), and a version retired only when nothing uses it.

One rotation at a time across every instance on the store (the `keyring.maintenance` lease,
`keyring.maintenance`). Meanwhile every instance opens fields sealed with the old key and the new
one: both stay in the keyring until no field uses the old one, and an instance reloads the
keyring when the store reports a change, or when a field names a key it does not hold yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.keyring.maintenance import LeaseLost, exclusive
from appliance.keyring.sealing import FormatError, open_field, seal_field
from appliance.keyring.vault import SecretVault
from appliance.store.lease import KeptLease

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class KeyStatus:
    version: int
    active: bool
    created_at: float
    fields: int


@dataclass
class RotationReport:
    active: int
    resumed: bool
    resealed: int = 0
    retired: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


async def status(vault: SecretVault) -> list[KeyStatus]:
    await vault.refresh()
    rows = await vault._store.fetch_all(
        "SELECT key_version, COUNT(*) AS n FROM sealed_fields GROUP BY key_version")
    counts = {int(r["key_version"]): int(r["n"]) for r in rows}
    ring = vault.keyring
    out = [KeyStatus(v, v == ring.active, k.created_at, counts.pop(v, 0))
           for v, k in sorted(ring.keys.items())]
    # Fields naming a version the keyring does not hold (damage): shown, never hidden.
    out += [KeyStatus(v, False, 0.0, n) for v, n in sorted(counts.items())]
    return out


async def begin(vault: SecretVault) -> tuple[int, bool]:
    """Make a new data key active, unless an unfinished rotation exists: then resume it.

    Returns (active version, resumed).
    """
    async with vault._store.transaction() as tx:
        ring = await vault.current(tx)
        if len(ring.keys) > 1:
            return ring.active, True
        new = ring.with_new_key()
        await vault.write_keyring(tx, new)
        return new.active, False


async def rotate(vault: SecretVault, *, batch_size: int = 200,
                 progress: Progress | None = None) -> RotationReport:
    """Begin (or resume) a rotation, re-seal every field under the active key, retire old keys.
    `KeyringBusy` (nothing done) if another process is rotating or changing the secret."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    async with exclusive(vault._store, "a key rotation") as kept:
        return await _rotate(vault, batch_size, progress, kept)


async def _rotate(vault: SecretVault, batch_size: int, progress: Progress | None,
                  kept: KeptLease) -> RotationReport:
    active, resumed = await begin(vault)
    report = RotationReport(active=active, resumed=resumed)
    store = vault._store
    row = await store.fetch_one(
        "SELECT COUNT(*) AS n FROM sealed_fields WHERE key_version != ?", (active,))
    total = int(row["n"]) if row else 0
    if progress:
        progress(0, total)
    cursor = ("", "", "")
    while True:
        if kept.lost:
            raise LeaseLost("the key rotation lost its lease (the store was unreachable too "
                            "long); what is re-sealed stays so: run `appliance keys rotate` "
                            "again to resume")
        async with store.transaction() as tx:
            ring = await vault.current(tx)
            rows = await tx.fetch_all(
                "SELECT kind, record_id, field, key_version, blob, binding FROM sealed_fields "
                "WHERE key_version != ? AND (kind, record_id, field) > (?, ?, ?) "
                "ORDER BY kind, record_id, field LIMIT ?", (ring.active, *cursor, batch_size))
            if not rows:
                break
            now = time.time()
            for r in rows:
                kind, record_id, name = str(r["kind"]), str(r["record_id"]), str(r["field"])
                cursor = (kind, record_id, name)
                old = ring.keys.get(int(r["key_version"]))
                binding = bytes(r["binding"] or b"")  # kept as it is: rotation changes keys only
                try:
                    if old is None:
                        raise FormatError(f"data key v{r['key_version']} is not in the keyring")
                    plain = open_field(old.key, kind, record_id, name, bytes(r["blob"]), binding)
                except FormatError as exc:
                    report.unreadable.append(f"{kind}/{record_id}/{name}: {exc.reason}")
                    continue
                blob = seal_field(ring.active_key.key, ring.active, kind, record_id, name, plain,
                                  binding)
                await tx.execute(
                    "UPDATE sealed_fields SET key_version = ?, blob = ?, updated_at = ? "
                    "WHERE kind = ? AND record_id = ? AND field = ?",
                    (ring.active, blob, now, kind, record_id, name))
                report.resealed += 1
        if progress:
            progress(report.resealed, total)
    report.retired, report.kept = await retire_unused(vault)
    return report


async def retire_unused(vault: SecretVault) -> tuple[list[int], list[int]]:
    """Drop every non-active version no field uses; (retired, kept) versions."""
    async with vault._store.transaction() as tx:
        ring = await vault.current(tx)
        rows = await tx.fetch_all(
            "SELECT DISTINCT key_version FROM sealed_fields WHERE key_version != ?",
            (ring.active,))
        used = {int(r["key_version"]) for r in rows}
        unused = {v for v in ring.keys if v != ring.active and v not in used}
        if unused:
            await vault.write_keyring(tx, ring.without(unused))
        return sorted(unused), sorted(v for v in ring.keys if v in used)
