"""Changing the instance secret: the root key is re-wrapped under the new secret (one row, the
same cost for 10 or 100,000 secrets); at every moment the old secret, the new one, or both work.
One change (or rotation) at a time across every instance on the store (`keyring.maintenance`):
two changes at once would each drop the other's pending slot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from appliance import state_dir
from appliance.keyring import kdf
from appliance.keyring.errors import InstanceSecretMissing
from appliance.keyring.kdf import KdfTuning
from appliance.keyring.maintenance import exclusive
from appliance.keyring.sources import (
    SOURCE_FILE,
    SOURCE_PASSWORD,
    InstanceSecret,
    secret_file,
)
from appliance.keyring.unseal import PENDING, derive, insert_slot, promote
from appliance.keyring.vault import SecretVault
from appliance.secret import Secret
from appliance.settings import Settings

NEW_SECRET_BYTES = 32


@dataclass(frozen=True)
class ChangeReport:
    slot: int
    completed: bool       # False: the new secret works now, the old one until it is first used
    wrote_file: bool


async def change_instance_secret(settings: Settings, vault: SecretVault, *,
                                 new: InstanceSecret | None = None,
                                 tuning: KdfTuning | None = None) -> ChangeReport:
    """Add the new secret as a pending slot; when the secret lives in the state directory's
    file, replace the file atomically and make the new slot the only one.

    `new`: the new secret (required unless the current one comes from the file, in which case
    32 fresh random bytes are used).
    """
    async with exclusive(vault._store, "an instance secret change"):
        return await _change(settings, vault, new, tuning)


async def _change(settings: Settings, vault: SecretVault, new: InstanceSecret | None,
                  tuning: KdfTuning | None) -> ChangeReport:
    store = vault._store
    if new is None:
        if vault.secret_source != SOURCE_FILE:
            raise InstanceSecretMissing(
                f"the instance secret comes from {vault.secret_where}; give the new one with "
                "--new-secret-file FILE, or --new-password-file FILE --new-salt SALT")
        new = InstanceSecret(SOURCE_FILE, "a new random instance secret",
                             Secret(os.urandom(NEW_SECRET_BYTES)))
    params = (tuning or kdf.default_tuning()).new_params()
    derived = await derive(params, new)
    async with store.transaction() as tx:
        # Pending slots left by an interrupted change whose secret never reached the file.
        await tx.execute("DELETE FROM keyring_unseal WHERE state = ? AND slot != ?",
                         (PENDING, vault.slot))
        slot = await insert_slot(tx, state=PENDING, source=new.source, params=params,
                                 derived=derived, root_key=vault.root_key)
    if vault.secret_source != SOURCE_FILE or new.source == SOURCE_PASSWORD:
        return ChangeReport(slot, completed=False, wrote_file=False)
    # Before the rename the file holds the old secret (active slot); after it, the new one
    # (pending slot, promoted by whoever opens the store next, or just below).
    state_dir.write_private(secret_file(settings), new.material.reveal())
    async with store.transaction() as tx:
        await promote(tx, slot)
    vault.slot = slot
    return ChangeReport(slot, completed=True, wrote_file=True)
