"""Retention of the audit log: entries older than `[audit] keep_days` pruned behind a checkpoint,
so that the rest of the chain still verifies from where the pruned part ended.

Owns the prune: what may go (older than keep_days *and* verified: at or before the position the
newest good `audit.verified` marker vouches for), the checkpoint entry (`audit.checkpoint`,
written through `AuditLog.record` before anything is deleted), the deletes in bounded batches
inside migration 16's guard, one instance at a time (the lease `audit.prune`), and the
background task of `serve` (at start, then daily). Never deletes an unverified entry, the
newest marker or checkpoint, or anything past the bound it set in its own transaction; never
prunes a chain whose newest verification failed; never logs an entry's content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.audit.chain import CHECKPOINT_ACTION, check_marker
from appliance.store import SQLiteStore, Store, Transaction
from appliance.store.lease import Lease, instance_id

if TYPE_CHECKING:
    from appliance.audit.log import AuditLog
    from appliance.audit.verification import BackgroundVerifier

log = logging.getLogger("appliance.audit.retention")

LEASE_NAME = "audit.prune"
LEASE_SECONDS = 600.0  # renewed every third of it while a prune runs
EVERY = 86400.0  # a prune at start, then daily
BATCH = 5000  # entries deleted per transaction: the store keeps serving between two
DAY = 86400

_FIRST = "SELECT seq FROM audit_log ORDER BY seq LIMIT 1"
_HEAD = "SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1"
# The first entry young enough to keep, walking from the oldest: reads only what is pruned
# (times grow with positions; an entry older than one after it is kept with it).
_FIRST_KEPT = "SELECT seq FROM audit_log WHERE time >= ? ORDER BY seq LIMIT 1"
_NEWEST_MARKER = ("SELECT * FROM audit_log WHERE action = 'audit.verified'"
                  " ORDER BY seq DESC LIMIT 1")
_LINK = "SELECT hash FROM audit_log WHERE seq = ?"
_DELETE = "DELETE FROM audit_log WHERE seq >= ? AND seq <= ?"



async def _sqlite_guard(tx: Transaction, through: int) -> None:
    """Migration 16's guard on SQLite: the one row of `audit_prune_guard` (0: none)."""
    await tx.execute("UPDATE audit_prune_guard SET through = ? WHERE id = 1", (through,))


async def _postgres_guard(tx: Transaction, through: int) -> None:
    """Migration 16's guard on PostgreSQL: the transaction-local setting (SET LOCAL), which no
    other transaction sees."""
    await tx.fetch_one("SELECT set_config('appliance.audit_prune', ?, true)", (str(through),))


Guard = Callable[[Transaction, int], Awaitable[None]]


@dataclass(frozen=True)
class Pruned:
    """One prune: positions `first`..`through` deleted (`count` rows now; `total`, every
    position up to `through`, since positions start at 1 without gaps), behind the checkpoint
    at `checkpoint`."""

    first: int
    through: int
    count: int
    total: int
    checkpoint: int


def cutoff_time(now: float, keep_days: int) -> str:
    """The stored time (RFC 3339 UTC, microseconds, as `log._now` writes it) before which an
    entry is older than `keep_days`: stored times compare as text."""
    seconds = now - keep_days * DAY
    whole = int(seconds)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            + f".{int((seconds - whole) * 1_000_000):06d}+00:00")


class Pruner:
    """Prunes entries older than `keep_days` (0: never) after the verifier has checked them."""

    def __init__(self, audit: AuditLog, verifier: BackgroundVerifier | None, *, keep_days: int,
                 batch: int = BATCH, every: float = EVERY,
                 clock: Callable[[], float] = time.time) -> None:
        if batch < 1:
            raise ValueError("a prune deletes at least one entry per transaction")
        self.audit = audit
        self.verifier = verifier
        self.keep_days = keep_days
        self.batch = batch
        self.every = every
        self._clock = clock
        self._lease = Lease(audit.store, LEASE_NAME, instance_id(), LEASE_SECONDS)

    async def run_once(self) -> Pruned | None:
        """One prune, or None when there is nothing to prune (or keep_days is 0, or another
        instance holds the lease, or the chain's newest verification failed)."""
        if self.keep_days <= 0:
            return None
        holding = await self._lease.acquire()
        if holding.holder != self._lease.holder:
            return None
        async with self._lease.keep():
            return await self._prune()

    async def _prune(self) -> Pruned | None:
        store = self.audit.store
        first = await store.fetch_one(_FIRST)
        if first is None:
            return None
        oldest = int(first["seq"])
        kept = await store.fetch_one(_FIRST_KEPT, (cutoff_time(self._clock(), self.keep_days),))
        if kept is not None and int(kept["seq"]) <= oldest:
            return None  # nothing is old enough
        if self.verifier is not None:
            await self.verifier.run_once()  # verify first (a no-op when nothing is new)
        verified = await self._verified_through()
        if verified is None:
            return None
        head = await store.fetch_one(_HEAD)
        old_through = int(kept["seq"]) - 1 if kept is not None else int(head["seq"]) if head else 0
        through = min(old_through, verified.position)
        if through < oldest:
            return None
        link = await store.fetch_one(_LINK, (through,))
        if link is None:  # pruned meanwhile by hand, or the chain is not what was verified
            return None
        keyed_from = verified.keyed_from
        keyed = keyed_from is not None and keyed_from <= through
        checkpoint = await self.audit.record(action=CHECKPOINT_ACTION, details={
            "position": through, "mac": str(link["hash"]),
            "legacy": verified.legacy if keyed else through,
            "keyed_from": keyed_from if keyed else None,
            "pruned": through - oldest + 1, "pruned_total": through,
            "keep_days": self.keep_days})
        count = await self._delete(store, oldest, through)
        pruned = Pruned(oldest, through, count, through, checkpoint)
        log.info("audit entries pruned", extra={"first": oldest, "through": through,
                                                "count": count, "checkpoint": checkpoint})
        return pruned

    async def _verified_through(self) -> _Verified | None:
        """What the newest verification marker vouches for, if it is good and its MAC holds;
        None (and a log line) when the newest verification failed: a broken chain is kept."""
        store = self.audit.store
        newest = await store.fetch_one(_NEWEST_MARKER)
        if newest is None:
            return None
        if newest["outcome"] != "ok":
            log.warning("audit prune skipped: the newest verification found the chain broken",
                        extra={"marker": int(newest["seq"])})
            return None
        keys = await self.audit.mac_keys()
        start = check_marker(newest, keys.mac_key_of)
        if start is None:
            log.warning("audit prune skipped: the newest verification marker does not match "
                        "its MAC", extra={"marker": int(newest["seq"])})
            return None
        return _Verified(start.position, start.legacy, start.keyed_from)

    async def _delete(self, store: Store, first: int, through: int) -> int:
        """Delete `first`..`through`, `batch` positions per transaction, each opening the guard
        up to its own last position and closing it before it commits."""
        guard: Guard = _sqlite_guard if isinstance(store, SQLiteStore) else _postgres_guard
        count = 0
        for low in range(first, through + 1, self.batch):
            high = min(low + self.batch - 1, through)
            async with store.transaction() as tx:
                await guard(tx, high)
                count += await tx.execute(_DELETE, (low, high))
                await guard(tx, 0)
            await asyncio.sleep(0)  # others' writes go between two batches
        return count

    async def run_forever(self) -> None:
        """`run_once` at start and every `every` seconds until cancelled; a failed round is
        logged (no content) and retried at the next."""
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the store away, the keyring unreadable: next round
                log.warning("audit prune round failed",
                            extra={"exception": type(exc).__qualname__})
            await asyncio.sleep(self.every)


@dataclass(frozen=True)
class _Verified:
    position: int
    legacy: int
    keyed_from: int | None

