"""Unseal slots: each instance secret that may open the root key, with its scrypt parameters,
its verifier and the root key wrapped under it. Owns opening, adding and promoting slots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from appliance.keyring.errors import KeyringCorrupted, WrongInstanceSecret
from appliance.keyring.kdf import DerivedKey, KdfParamsError, ScryptParams
from appliance.keyring.sealing import FormatError, check_value, same, unwrap, wrap
from appliance.keyring.sources import InstanceSecret
from appliance.store import Transaction

log = logging.getLogger("appliance.keyring")

ROOT_AAD = b"appliance/root-key/v1"
ACTIVE = "active"
PENDING = "pending"


@dataclass(frozen=True)
class Slot:
    slot: int
    state: str
    source: str
    kdf: str
    verifier: bytes
    wrapped_root: bytes

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Slot:
        return cls(int(row["slot"]), str(row["state"]), str(row["source"]), str(row["kdf"]),
                   bytes(row["verifier"]), bytes(row["wrapped_root"]))


async def read_slots(reader: Any) -> list[Slot]:
    """Active slots first, then pending ones; `reader` is a store or a transaction."""
    rows = await reader.fetch_all(
        "SELECT slot, state, source, kdf, verifier, wrapped_root FROM keyring_unseal "
        "ORDER BY state = 'active' DESC, slot")
    return [Slot.from_row(row) for row in rows]


async def derive(params: ScryptParams, secret: InstanceSecret) -> DerivedKey:
    """The slow step (0.1-0.5 s), off the event loop."""
    return await asyncio.to_thread(params.derive, secret.material.reveal())


def unseal_verifier(derived: DerivedKey) -> bytes:
    return check_value(derived.verify_key, b"unseal")


async def open_root(slots: list[Slot], secret: InstanceSecret) -> tuple[bytes, Slot]:
    """The root key from the first slot this secret opens; a clear error otherwise."""
    malformed = 0
    for slot in slots:
        try:
            params = ScryptParams.from_json(slot.kdf)
        except KdfParamsError:
            malformed += 1
            continue
        derived = await derive(params, secret)
        verified = same(unseal_verifier(derived), slot.verifier)
        try:
            root = unwrap(derived.wrap_key, slot.wrapped_root, ROOT_AAD)
        except FormatError:
            if verified:
                raise KeyringCorrupted(
                    f"the instance secret from {secret.where} matches unseal slot {slot.slot}'s "
                    "verifier, but the root key sealed in that slot does not open: the store is "
                    "damaged; restore a backup") from None
            continue
        if not verified:
            log.warning("unseal slot verifier is damaged; the root key opened regardless",
                        extra={"slot": slot.slot})
        return root, slot
    if slots and malformed == len(slots):
        raise KeyringCorrupted("every unseal slot has malformed KDF parameters: the store is "
                               "damaged; restore a backup")
    raise WrongInstanceSecret(
        f"the instance secret from {secret.where} does not open this store's keyring (it is not "
        "the secret the store was sealed with); put the original secret back, or restore a "
        "backup with --passphrase-file")


async def insert_slot(tx: Transaction, *, state: str, source: str, params: ScryptParams,
                      derived: DerivedKey, root_key: bytes) -> int:
    row = await tx.fetch_one(
        "INSERT INTO keyring_unseal (state, source, kdf, verifier, wrapped_root, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING slot",
        (state, source, params.to_json(), unseal_verifier(derived),
         wrap(derived.wrap_key, root_key, ROOT_AAD), time.time()),
    )
    assert row is not None  # an INSERT … RETURNING of one row returns it
    return int(row["slot"])


async def promote(tx: Transaction, slot: int) -> bool:
    """Make `slot` the only slot. False (and no change) if it no longer exists."""
    if await tx.fetch_one("SELECT 1 AS ok FROM keyring_unseal WHERE slot = ?", (slot,)) is None:
        return False
    await tx.execute("DELETE FROM keyring_unseal WHERE slot != ?", (slot,))
    await tx.execute("UPDATE keyring_unseal SET state = 'active' WHERE slot = ?", (slot,))
    return True
