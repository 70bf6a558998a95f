"""One keyring maintenance at a time across every instance on the store: a data key rotation
(`keys rotate`, many transactions) or an instance secret change (`keys change-password`) runs
only while it holds the lease `keyring.maintenance` (`store.lease`).

Owns that lease's name, its duration and what a busy lease means: `KeyringBusy`, naming the
holder. A holder that died frees it when the lease runs out, or at once when it ran on this
machine and its process is gone. Never touches a key: it only says who may.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator

from appliance.keyring.errors import KeyringError
from appliance.store import Store
from appliance.store.lease import KeptLease, Lease, instance_id

LEASE_NAME = "keyring.maintenance"
LEASE_SECONDS = 30.0  # renewed every 10 s while the maintenance runs


class KeyringBusy(KeyringError):
    """Another process holds the maintenance lease: nothing was changed."""

    status = 409
    code = "keyring_busy"


class LeaseLost(KeyringError):
    """The lease was lost during the maintenance (the store was unreachable longer than it
    lasts); the work done so far is committed and the verb resumes where it stopped."""

    code = "keyring_lease_lost"


@contextlib.asynccontextmanager
async def exclusive(store: Store, what: str, *,
                    duration: float = LEASE_SECONDS) -> AsyncIterator[KeptLease]:
    """Hold the maintenance lease for the block (renewed in the background; check `lost`
    between transactions), or raise `KeyringBusy` at once if another process holds it."""
    lease = Lease(store, LEASE_NAME, instance_id(), duration)
    holding = await lease.acquire()
    if holding.holder != lease.holder and _dead_here(holding.holder):
        await Lease(store, LEASE_NAME, holding.holder, duration).release()
        holding = await lease.acquire()
    if holding.holder != lease.holder:
        raise KeyringBusy(f"cannot start {what}: another keyring maintenance (a key rotation or "
                          f"an instance secret change) is running in {holding.holder}; run it "
                          "again when that one has finished")
    async with lease.keep() as kept:
        yield kept


def _dead_here(holder: str) -> bool:
    """Whether `holder` (`instance_id()`: host:pid:random) was a process of this machine that
    no longer runs. A reused pid counts as alive: then the lease runs out by itself."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
