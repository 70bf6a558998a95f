"""Leases: a named right to act alone, shared by every instance on one store, freed by time.

Owns the `leases` table. A lease is one row (name, holder, expires_at in epoch seconds) taken,
renewed and released in short transactions (the store serialises writers across instances), so a
holder that dies frees it when it expires. Never holds a transaction open while the holder works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from appliance.errors import ApplianceError
from appliance.store.base import Store

log = logging.getLogger("appliance.store.lease")


def instance_id() -> str:
    """This process's name as a holder: host, pid and a random suffix (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Holding:
    """Who holds a lease and until when (epoch seconds)."""

    holder: str
    expires_at: float


class Lease:
    """One named lease as seen by `holder`; `duration` seconds per taking or renewal."""

    def __init__(self, store: Store, name: str, holder: str, duration: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        if duration <= 0:
            raise ValueError("a lease lasts a positive number of seconds")
        self.store = store
        self.name = name
        self.holder = holder
        self.duration = duration
        self._clock = clock

    def __repr__(self) -> str:
        return f"<Lease {self.name} for {self.holder}>"

    async def acquire(self) -> Holding:
        """Take the lease if it is free, expired or already ours (then it is extended); return
        who holds it afterwards: `holding.holder == self.holder` when we do."""
        now = self._clock()
        async with self.store.transaction() as tx:
            row = await tx.fetch_one("SELECT holder, expires_at FROM leases WHERE name = ?",
                                     (self.name,))
            if row is not None and row["holder"] != self.holder and row["expires_at"] > now:
                return Holding(str(row["holder"]), float(row["expires_at"]))
            expires = now + self.duration
            await tx.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at", (self.name, self.holder, expires))
        return Holding(self.holder, expires)

    async def renew(self) -> bool:
        """Extend our lease; False if it is no longer ours (it expired and another took it)."""
        now = self._clock()
        async with self.store.transaction() as tx:
            row = await tx.fetch_one("SELECT holder FROM leases WHERE name = ?", (self.name,))
            if row is None or row["holder"] != self.holder:
                return False
            await tx.execute("UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                             (now + self.duration, self.name, self.holder))
        return True

    async def release(self) -> None:
        """Give the lease up if it is ours (another's is left alone)."""
        async with self.store.transaction() as tx:
            await tx.execute("DELETE FROM leases WHERE name = ? AND holder = ?",
                             (self.name, self.holder))

    async def current(self) -> Holding | None:
        """Who holds the lease now (None: free or expired)."""
        row = await self.store.fetch_one("SELECT holder, expires_at FROM leases WHERE name = ?",
                                         (self.name,))
        if row is None or float(row["expires_at"]) <= self._clock():
            return None
        return Holding(str(row["holder"]), float(row["expires_at"]))

    @contextlib.asynccontextmanager
    async def keep(self) -> AsyncIterator[KeptLease]:
        """While the block runs, renew the (already acquired) lease every third of its
        duration; release it when the block ends, however it ends."""
        kept = KeptLease(self)
        task = asyncio.ensure_future(kept.renew_until_cancelled())
        task.set_name(f"lease-{self.name}")
        try:
            yield kept
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await self.release()
            except Exception as exc:  # any store failure: the lease expires by itself
                log.warning("lease release failed", extra={"lease": self.name,
                                                           "error": _message(exc)})


class KeptLease:
    """A lease being renewed in the background; `lost` turns True if a renewal found it taken."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost = False

    async def renew_until_cancelled(self) -> None:
        every = self.lease.duration / 3
        while True:
            await asyncio.sleep(every)
            try:
                if not await self.lease.renew():
                    self.lost = True
                    log.warning("lease lost to another instance",
                                extra={"lease": self.lease.name})
                    return
            except Exception as exc:  # any store failure: try again, the store may come back
                log.warning("lease renewal failed", extra={"lease": self.lease.name,
                                                           "error": _message(exc)})


def _message(exc: Exception) -> str:
    """What a store failure says (a driver's error carries no query value here: the statements
    above bind only the lease's name, holder and times)."""
    return exc.message if isinstance(exc, ApplianceError) else type(exc).__name__
